"""Trained models on disk: atomic writes, checked loads.

A model folder holds ``classifier.keras``, ``dae.keras`` and ``dae_stats.json``
(μ, σ of r(x) on the clean validation split, spec §2). The shipped defaults
live in ``saved_models/<dataset>`` at the repository root.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile

from apudae_tf import io, profiles
from apudae_tf.errors import ApudaeError, first_line

# model folders are written through io's atomic writers (store.write_json is the name the package has used)
atomic_write, write_bytes, write_json = io.atomic_write, io.write_bytes, io.write_json

CLASSIFIER = "classifier.keras"
DAE = "dae.keras"
DAE_STATS = "dae_stats.json"
ADV_CLASSIFIER = "adv_classifier.keras"  # the adversarial-training baseline (issue 4)
ADV_CLASSIFIER_INFO = "adv_classifier.json"
CLASSIFIER_INFO = "classifier.json"  # the ResNets' training recipe and history
PURIFY_SETTINGS = "purify_settings.json"  # per-variant settings chosen on the validation split
GENERATOR = "generator.keras"  # Defense-GAN's generator
GENERATOR_INFO = "generator.json"  # its training record and the latent search chosen on validation
SMOOTHING_DIR = "smoothing"  # the denoisers of randomized smoothing, one file per σ and stage (docs/certify.md)
SMOOTHING_INFO = "denoisers.json"  # inside it: each denoiser's recipe and history
# what each part of `train` writes into its model folder
PART_FILES = {"classifier": (CLASSIFIER,), "dae": (DAE, DAE_STATS), "adv-classifier": (ADV_CLASSIFIER, ADV_CLASSIFIER_INFO),
              "gan": (GENERATOR, GENERATOR_INFO), "adapted-classifier": (CLASSIFIER, CLASSIFIER_INFO, DAE, DAE_STATS)}
MODEL_FILES = (CLASSIFIER, CLASSIFIER_INFO, DAE, DAE_STATS, ADV_CLASSIFIER, ADV_CLASSIFIER_INFO, GENERATOR, GENERATOR_INFO)
RUNS = "apudae-runs"  # where commands write when no output is named: ./apudae-runs/<dataset>/<what>

def _saved_models() -> str:
    """saved_models/ inside an installed package, else the repository's own (checkout, editable install)."""
    here = os.path.dirname(os.path.abspath(__file__))
    installed = os.path.join(here, "saved_models")
    return installed if os.path.isdir(installed) else os.path.join(os.path.dirname(here), "saved_models")


SAVED_MODELS = _saved_models()


def default_model_dir(dataset: str) -> str:
    return os.path.join(SAVED_MODELS, dataset)


def run_dir(dataset: str, what: str) -> str:
    """The default output of a command that writes: ./apudae-runs/<dataset>/<what>, never the shipped models
    or the committed results. ``npz:PATH`` datasets are named by their file."""
    return os.path.join(RUNS, profiles.dataset_name(dataset), what)


def resolve_model_folder(dataset: str | None, model_dir: str | None, echo=None) -> str:
    """The model folder a command uses: --models DIR (``model_dir``) if given, else the shipped
    saved_models/<dataset>, else what `train` and `tune` made here by default (./apudae-runs/<dataset>/tuned,
    then .../models). The profile the folder was trained with
    (profile.json) joins the registry, so a user's dataset is known from here on. ``echo`` is told which folder
    when it is not the shipped one."""
    from apudae_tf import data

    data.check_name(dataset, model_dir)
    if model_dir is None:
        name = profiles.dataset_name(dataset)
        found = [d for d in (default_model_dir(name), run_dir(name, "tuned"), run_dir(name, "models"))
                 if os.path.isdir(d)]
        if not found:
            raise ApudaeError(f"no models for dataset {name!r}: none shipped and none trained in ./{RUNS}; "
                              f"train with `apudae-tf train {dataset}` or pass --models DIR")
        model_dir = found[0]
        if not is_shipped(model_dir) and echo:
            echo(f"using the models in {model_dir}")
    elif not os.path.isdir(model_dir):
        raise ApudaeError(f"--models {model_dir}: no such model folder; train one with `apudae-tf train` or pass "
                          "another folder")
    profiles.from_folder(model_dir)
    return model_dir


@dataclasses.dataclass(frozen=True)
class DaeStats:
    """Clean reconstruction-error statistics and how the DAE was trained."""

    mu: float
    sigma: float
    sigma_max: float
    image_shape: tuple[int, int, int]
    dataset: str
    training: dict

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["image_shape"] = list(self.image_shape)
        return d

    @classmethod
    def from_json(cls, d: dict, where: str) -> DaeStats:
        try:
            return cls(
                mu=float(d["mu"]),
                sigma=float(d["sigma"]),
                sigma_max=float(d["sigma_max"]),
                image_shape=tuple(int(v) for v in d["image_shape"]),
                dataset=str(d["dataset"]),
                training=dict(d.get("training", {})),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ApudaeError(f"{where} is not a valid DAE statistics file (bad or missing {e})") from None


def shown_path(path: str) -> str:
    """A path as a reader can re-use it: relative to the working directory when inside it; a shipped model folder
    as ``saved_models/NAME`` wherever the package is installed (a report made with an installed copy names the
    same models as one made in the repository)."""
    if is_shipped(path):
        return os.path.join("saved_models", os.path.relpath(os.path.realpath(path), os.path.realpath(SAVED_MODELS)))
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def file_digest(path: str) -> str:
    """The first 16 hex digits of a file's SHA-256: what keys cached results to the model that made them."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def is_shipped(path: str) -> bool:
    """Whether ``path`` lies inside the shipped model folders, which no command writes to unless told to."""
    shipped = os.path.realpath(SAVED_MODELS)
    return os.path.commonpath([os.path.realpath(path), shipped]) == shipped


def probe_folder(folder: str, option: str, value: str) -> None:
    """Prove a file can be created in ``folder`` (``os.access`` says yes to root even where the file system
    refuses), leaving nothing behind: folders made for the probe are removed again."""
    made, p = [], os.path.abspath(folder)
    while not os.path.exists(p):
        made.append(p)
        p = os.path.dirname(p)
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".apudae-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ApudaeError(f"{option} {value}: cannot write there ({e.strerror or first_line(e)})") from None
    finally:
        for d in made:  # deepest first
            try:
                os.rmdir(d)
            except OSError:
                pass


def check_output_file(path: str, option: str, force: bool = False) -> None:
    """Before any work: ``path`` (the value of ``option``) can be written, is not a folder, does not exist yet
    and is not inside a shipped model folder, unless ``force``."""
    if os.path.isdir(path):
        raise ApudaeError(f"{option} {path}: is a folder; name a file")
    if os.path.exists(path) and not force:
        raise ApudaeError(f"{option} {path}: the file exists; choose another name, or pass --force to replace it")
    if is_shipped(path) and not force:
        raise ApudaeError(f"{option} {path}: inside the shipped models ({shown_path(SAVED_MODELS)}); choose another "
                          "place, or pass --force to change the shipped files")
    probe_folder(os.path.dirname(os.path.abspath(path)), option, path)


def check_output_folder(path: str, option: str, holds: tuple[str, ...], force: bool = False) -> None:
    """Before any work: the folder ``path`` (the value of ``option``) can be written and does not already hold
    any of the files ``holds`` (what the command would replace) unless ``force``; a shipped model folder is
    written only with ``force``."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ApudaeError(f"{option} {path}: is a file; name a folder")
    existing = [f for f in holds if os.path.exists(os.path.join(path, f))]
    if existing and not force:
        raise ApudaeError(f"{option} {path}: already holds {', '.join(existing)}; choose another folder, or pass "
                          "--force to replace them")
    if is_shipped(path) and not force:
        raise ApudaeError(f"{option} {path}: a shipped model folder; choose another, or pass --force to change the "
                          "shipped files")
    probe_folder(path, option, path)


def same_file(a: str, b: str) -> bool:
    """Both files exist and hold the same bytes."""
    import filecmp

    return os.path.isfile(a) and os.path.isfile(b) and filecmp.cmp(a, b, shallow=False)


def copy_file(src: str, dst: str) -> None:
    """Copy a file atomically."""
    import shutil

    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def copy_model_files(src: str, dst: str, names=MODEL_FILES + (PURIFY_SETTINGS, "profile.json")) -> list[str]:
    """Copy the model folder ``src``'s files ``names`` (those it has) into ``dst``; the names copied."""
    copied = [name for name in names if os.path.isfile(os.path.join(src, name))]
    for name in copied:
        copy_file(os.path.join(src, name), os.path.join(dst, name))
    return copied


def save_model(model, path: str) -> None:
    atomic_write(path, model.save)


def load_model(path: str):
    import keras

    if not os.path.isfile(path):
        raise ApudaeError(f"no model at {path}; train one with `apudae-tf train` or pass --models DIR")
    from apudae_tf import fitting

    try:
        with fitting.strategy().scope():  # mirrored variables when several devices purify and attack
            return keras.models.load_model(path, compile=False)
    except Exception as e:  # keras raises many types for a corrupt archive
        raise ApudaeError(f"cannot load the model {path} ({first_line(e)})") from None


def load_stats(model_dir: str) -> DaeStats:
    path = os.path.join(model_dir, DAE_STATS)
    try:
        with open(path) as f:
            d = json.load(f)
    except FileNotFoundError:
        raise ApudaeError(f"no {DAE_STATS} in {model_dir}; train the DAE with `apudae-tf train`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApudaeError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ApudaeError(f"{path} is not a valid DAE statistics file")
    return DaeStats.from_json(d, path)


def load_adv_classifier(model_dir: str):
    """(the adversarially trained classifier, its adv_classifier.json) from a model folder."""
    info_path = os.path.join(model_dir, ADV_CLASSIFIER_INFO)
    model = load_model(os.path.join(model_dir, ADV_CLASSIFIER))
    try:
        with open(info_path) as f:
            info = json.load(f)
    except (OSError, ValueError) as e:
        raise ApudaeError(f"cannot read {info_path} ({first_line(e)})") from None
    return model, info


@dataclasses.dataclass
class Models:
    """The classifier, the DAE and its statistics, checked to fit one image shape."""

    classifier: object
    dae: object
    stats: DaeStats | None
    folder: str
    classifier_file: str | None = None  # where the classifier came from (a user's own, or the folder's)

    def digests(self) -> dict:
        """The digests of the classifier's and the DAE's files: what keys the reports' caches to these models."""
        return {"classifier": file_digest(self.classifier_file or os.path.join(self.folder, CLASSIFIER)),
                "dae": file_digest(os.path.join(self.folder, DAE))}

    def classifier_fn(self):
        """The classifier as a compiled ``x -> logits`` callable, in inference mode."""
        from apudae_tf import models

        return models.inference_fn(self.classifier)


def check_image_model(model, where: str, image_shape=None, num_classes: int | None = None, logits: bool = False):
    """A Keras model fits the data: one NHWC image input (``None`` sizes match anything) of ``image_shape``
    and, for a classifier (``logits``), one vector per image with at least ``num_classes`` entries."""
    shape = model.input_shape
    if isinstance(shape, list) or len(shape) != 4:
        raise ApudaeError(f"{where}: takes inputs of shape {shape}; it must take one batch of NHWC images")
    if image_shape is not None and any(g is not None and int(g) != int(w) for g, w in zip(shape[1:], image_shape)):
        raise ApudaeError(f"{where}: takes images of shape {tuple(shape[1:])}, the data has {tuple(image_shape)}")
    if logits:
        out = model.output_shape
        if isinstance(out, list) or len(out) != 2:
            raise ApudaeError(f"{where}: outputs shape {out}; a classifier must output one logit vector per image")
        if num_classes is not None and out[-1] is not None and out[-1] < num_classes:
            raise ApudaeError(f"{where}: outputs {out[-1]} classes, the data has {num_classes}")


def load_models(model_dir: str, image_shape: tuple[int, int, int] | None = None, need=("classifier", "dae"),
                classifier: str | None = None, num_classes: int | None = None) -> Models:
    """Load a model folder; ``image_shape``, if given, must match every model's input.

    ``classifier`` is the path of a user's own classifier (any Keras model file from float32 NHWC images in
    [0, 1] to logits) to use instead of the folder's; it is checked against the data's shape and
    ``num_classes``. The DAE statistics are required only when the DAE is (``classify`` needs the
    classifier alone).
    """
    if not os.path.isdir(model_dir):
        raise ApudaeError(f"no model folder {model_dir}; train with `apudae-tf train` or pass --models DIR")
    has_stats = "dae" in need or os.path.isfile(os.path.join(model_dir, DAE_STATS))
    stats = load_stats(model_dir) if has_stats else None
    clf_path = classifier or os.path.join(model_dir, CLASSIFIER)
    clf = load_model(clf_path) if "classifier" in need else None
    dae = load_model(os.path.join(model_dir, DAE)) if "dae" in need else None
    expected = tuple(image_shape) if image_shape is not None else (stats.image_shape if stats else None)
    if clf is not None:
        where = f"--classifier {classifier}" if classifier else f"the classifier in {model_dir}"
        check_image_model(clf, where, expected, num_classes, logits=True)
    if dae is not None:
        check_image_model(dae, f"the dae in {model_dir}", expected)
    if stats is not None and expected is not None and stats.image_shape != expected:
        raise ApudaeError(f"{model_dir}/{DAE_STATS} is for images of shape {stats.image_shape}, the data has {expected}")
    return Models(classifier=clf, dae=dae, stats=stats, folder=model_dir, classifier_file=clf_path if clf else None)
