"""The ``apudae-tf`` command line: parses, loads, calls the library.

Every failure a user can cause (bad data, missing model) is an ApudaeError,
printed as one line on stderr with exit status 2; no traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shlex
import sys

import click

from apudae_tf import names
from apudae_tf.errors import ApudaeError
from apudae_tf.progress import LogProgress

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # keep TF's C++ banner off stderr; Python errors still surface


def _import_tensorflow_quietly():
    """Import TensorFlow with fd 2 muted: its C++ start-up lines (CUDA probes) bypass TF_CPP_MIN_LOG_LEVEL
    and would bury the progress and error lines of a pipeline. Python exceptions still propagate."""
    if os.environ.get("APUDAE_VERBOSE_TF"):
        return
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def friendly_errors(fn):
    """Run a command: TensorFlow is imported here, after click has parsed and checked the options (so
    ``--help`` and bad options answer at once); ApudaeError and OS errors become ``error: ...`` and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            _import_tensorflow_quietly()
            return fn(*args, **kwargs)
        except ApudaeError as e:
            fail(str(e))
        except OSError as e:  # a disk full, a permission refused at write time: one line, never a traceback
            where = f" {e.filename}" if getattr(e, "filename", None) else ""
            fail(f"cannot write{where}: {e.strerror or e}")

    return wrapper


def fail(message: str):
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


class Cli(click.Group):
    """The command group. A usage error (an unknown option, a value out of its range) is one ``error:`` line
    naming the option, the value and the allowed range, and exit status 2, like every other bad input."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as e:
            fail(e.format_message())
        except click.Abort:
            click.echo("error: interrupted", err=True)
            sys.exit(130)
        if standalone_mode:
            sys.exit(code or 0)
        return code


data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder holding <dataset>.npz (Keras layout). Defaults to $APUDAE_DATA_DIR, then tensorflow-datasets.",
)
force_option = click.option("--force", is_flag=True,
                            help="Replace what the output location already holds (never needed for a new location).")


def _renamed(new: str):
    """A click callback for an option that was renamed: naming it is one error that says the new name."""

    def callback(ctx, param, value):
        if value is not None:
            raise click.UsageError(f"{param.opts[0]} {value}: this option is now {new} ({param.opts[0]} counts images "
                                   f"in attack and evaluate); use {new} {value}")
        return value

    return callback


def progress_bar(length, label):
    """Progress on stderr, so stdout carries data only: click's live bar on a terminal, ``LogProgress`` lines
    in a log."""
    if sys.stderr.isatty():
        return click.progressbar(length=length, label=label, file=sys.stderr, show_pos=True)
    return LogProgress(length, label, echo=functools.partial(click.echo, err=True))


def read_batch(path):
    from apudae_tf import pipeline

    if path and path != "-":
        return pipeline.read(path)
    if sys.stdin.isatty():
        raise ApudaeError("no input: pipe an npz (e.g. from `apudae-tf attack`) or pass -i FILE")
    return pipeline.loads(sys.stdin.buffer.read(), "stdin")


def check_output(path, option="-o", force=False):
    """Before any work: an output file can be written (and exists only with ``force``), or stdout is a pipe or
    file, not a terminal."""
    from apudae_tf import store

    if path and path != "-":
        store.check_output_file(path, option, force)
    elif sys.stdout.isatty():
        raise ApudaeError(f"refusing to write npz data to a terminal: pass {option} FILE or pipe into another command")


def write_stdout(data: bytes, what: str):
    """All of ``data`` to stdout, or an error: a reader that stops early (``| head``) must not leave a
    silently cut stream and exit status 0. Buffered writes can report a short write without raising, so
    the bytes go to the file descriptor in a loop that counts them."""
    sys.stdout.flush()
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError, AttributeError):  # an in-memory stream (tests, notebooks): nothing to cut
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    view, done = memoryview(data), 0
    try:
        while done < len(data):
            n = os.write(fd, view[done:])
            if n <= 0:
                break
            done += n
    except OSError:
        pass
    if done < len(data):
        # point stdout at /dev/null so Python's own flush at exit does not fail a second time
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
        except OSError:
            pass
        raise ApudaeError(f"the reader closed the pipe after {done} of {len(data)} bytes of {what}: output lost")


def write_batch(batch, path, force=False):
    from apudae_tf import pipeline

    if path and path != "-":
        pipeline.write(batch, path)
        click.echo(f"wrote {len(batch.x)} images to {path}", err=True)
    else:
        check_output(path, force=force)
        write_stdout(pipeline.dumps(batch), f"{len(batch.x)} images")


BATCH_HELP = ("Images per batch (default: 500 for MNIST- and CIFAR-sized images, fewer for large ones: 10 at 224 px, "
              "to stay within a few GB). Random draws (random starts, a random variant's noise) are made per batch, "
              "so it is part of the result.")


def _out_option(given, option="--out"):
    """How an error names an output location: the option, or that it is the option's default."""
    return option if given else f"{option} (default)"


def model_folder(dataset, model_dir):
    """The model folder of a command (store.resolve_model_folder), saying which when it is not the shipped one."""
    from apudae_tf import store

    return store.resolve_model_folder(dataset, model_dir, echo=lambda m: click.echo(m, err=True))


def check_dataset(dataset, model_dir=None):
    from apudae_tf import data

    data.check_name(dataset, model_dir)


def models_for(batch, model_dir, dataset, need=("classifier", "dae"), classifier=None):
    """The models for a pipeline batch: --models, else saved_models/<dataset from --dataset or meta>."""
    from apudae_tf import store

    name = dataset or batch.dataset
    if model_dir is None and name is None:
        raise ApudaeError("the input names no dataset in its meta: pass --dataset NAME or --models DIR")
    return store.load_models(model_folder(name, model_dir), batch.x.shape[1:], need=need, classifier=classifier)


EOT_DEFAULT = names.ADAPTIVE_BUDGET["eot"]  # samples of the defence's randomness per gradient for F and G


def _variant_list(text: str) -> list[str]:
    """A comma-separated list of purification variants, checked."""
    chosen = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in names.PURIFY_VARIANTS]
    if unknown or not chosen:
        raise ApudaeError(f"unknown variant(s) {', '.join(unknown) or '(none)'}; use {', '.join(names.PURIFY_VARIANTS)}")
    return chosen

SIGMA_MAX = 4.0  # a smoothing σ beyond this drowns any [0, 1] image


def _sigma_list(text: str, option: str = "--sigma") -> tuple[float, ...]:
    """A comma-separated list of smoothing noise levels, each in (0, SIGMA_MAX]."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or any(not (0 < v <= SIGMA_MAX) for v in values):
        raise ApudaeError(f"{option} {text}: give noise levels sigma in (0, {SIGMA_MAX:g}], comma-separated, e.g. "
                          "0.25,0.5,1")
    return values


models_option = click.option("--models", "model_dir", type=click.Path(file_okay=False), default=None,
                             help="Model folder (default: saved_models/<dataset>).")
classifier_option = click.option(
    "--classifier", "classifier_path", type=click.Path(dir_okay=False, exists=True), default=None,
    help="Your own classifier: a Keras model file mapping float32 NHWC images in [0, 1] to logits (default: "
         "MODELS/classifier.keras). Its input shape and class count are checked against the data.")


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="apudae-tf")
def main():
    """Adversarial purification with denoising autoencoders (APuDAE).

    Train the classifier and DAE, attack, purify and classify, reproduce the
    paper's tables. Datasets: mnist, cifar10, imagenet, npz:PATH (keys
    x_train, y_train, x_test, y_test; uint8) or folder:PATH (image files in
    class sub-folders or with a labels.txt; val/ and train/ splits).
    Offline, point --data-dir or APUDAE_DATA_DIR at a folder holding
    mnist.npz / cifar10.npz / imagenet/.
    """


@main.command()
@click.argument("dataset")
@click.option("--what", type=click.Choice(["classifier", "dae", "all", "adv-classifier", "gan", "adapted-classifier",
                                           "smoothing-dae"]),
              default="all",
              show_default=True,
              help="Which model(s) to train. all = classifier and DAE. adv-classifier = the adversarial-training "
                   "baseline (mnist: Madry PGD-10 at the attack's eps, fine-tuned from OUT/classifier.keras when it "
                   "exists; cifar10: fast N-FGSM training from scratch on Wong et al.'s schedule; checkpoints "
                   "every epoch). gan = Defense-GAN's WGAN-GP generator (OUT/generator.keras). "
                   "adapted-classifier = BASE's classifier fine-tuned on the outputs of BASE's purifier (--adapt-to) "
                   "of clean training images, written with copies of BASE's DAE to OUT (which must differ from "
                   "BASE); run `tune` on OUT afterwards. smoothing-dae = the denoisers of randomized smoothing "
                   "(`certify`), one per --sigma, in front of BASE's classifier (frozen): MSE for --epochs, then the "
                   "stability objective for --stability-epochs; written to OUT/smoothing/.")
@click.option("--base", "base_dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="--what adapted-classifier: the model folder whose classifier and purifier are adapted; "
                   "--what smoothing-dae: the folder whose classifier the denoisers serve (default: "
                   "saved_models/<dataset>).")
@click.option("--sigma", "sigma_list", default=None,
              help="--what smoothing-dae: the noise levels, comma-separated, each in (0, 4] (default: the "
                   "dataset profile's: 0.25,0.5,1 for mnist and cifar10).")
@click.option("--stability-epochs", type=click.IntRange(min=0), default=None,
              help="--what smoothing-dae: epochs of the stability objective after the MSE epochs (0: MSE only; "
                   "default: the profile's).")
@click.option("--adapt-to", default="A,C", show_default=True,
              help="--what adapted-classifier: the purification variants (comma-separated) whose outputs the "
                   "classifier learns; each uses BASE's tuned settings, or V:n=K:alpha=A overrides them (e.g. "
                   "B:n=20:alpha=2/255).")
@click.option("--arch", type=click.Choice(names.CLASSIFIER_ARCHS), default=None,
              help="Classifier architecture (default: cnn for mnist, resnet20 for cifar10). resnet20 has 0.27M "
                   "weights and suits 2 CPU cores; resnet18 (11M) is the paper's CIFAR-10 model, for users with more "
                   "compute.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted ResNet or adversarial training from its checkpoint in OUT (saved after "
                   "every epoch). Without it, an existing checkpoint is an error, never silently mixed in.")
@click.option("--recipe", type=click.Choice(names.TRAIN_RECIPES), default="paper", show_default=True,
              help="paper: spec §1's Gaussian-noise DAE and a plain classifier. plus: the DAE also learns random "
                   "L-inf corner noise and the classifier also learns on the DAE's outputs. adv-dae: the DAE also "
                   "learns to undo PGD examples (training images) of the classifier in OUT. adv-mix: adv-dae plus "
                   "full-eps FGSM examples of further training images. plus, adv-dae and adv-mix are "
                   "experiments; see README.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Training epochs (default: those of the shipped models; mnist: classifier 6, DAE 5, "
                   "adv-classifier 3, adapted-classifier 4; cifar10: classifier 45, DAE 5, adv-classifier 15).")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--dae-filters", type=click.IntRange(min=1), default=None,
              help="Channels of the DAE's layers (default: its architecture's, Table 1: 64, U-Net: 48). Wider is "
                   "an experiment, reported under its own name.")
@click.option("--mixed-precision", is_flag=True,
              help="--what dae: train in mixed precision (float16 on a GPU, bfloat16 on a CPU; variables and the "
                   "saved model stay float32, so purification and attacks run in float32).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Model folder to write (default: ./apudae-runs/<dataset>/models). A folder that already holds "
                   "what this training writes is refused unless --force; so is a shipped model folder.")
@force_option
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for weights, shuffling and noise.")
@click.option("--eps", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Your data's threat model: the L∞ budget, in (0, 1]. With --steps, --step and --sigma-max it "
                   "declares the profile of an npz:PATH or folder:PATH dataset (built-in datasets have theirs, which these "
                   "options change); recorded in OUT/profile.json for every later command.")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Your data's threat model: the iterative attacks' steps (PGD/BIM).")
@click.option("--step", "step_size", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Your data's threat model: the iterative attacks' step size, in (0, 1].")
@click.option("--sigma-max", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="The DAE's noise: sigma ~ U(0, SIGMA_MAX) per image (spec §1); cover the budget: 0.5 for "
                   "MNIST's eps 0.3, 0.1 for CIFAR-10's 8/255.")
@click.option("--profile", "profile_path", type=click.Path(dir_okay=False), default=None,
              help="A dataset profile as JSON (name, eps, steps, step, sigma_max at least; see docs/profiles.md); "
                   "the options above override its fields.")
@data_dir_option
@friendly_errors
def train(dataset, what, base_dir, sigma_list, stability_epochs, adapt_to, recipe, arch, resume, epochs, batch_size,
          dae_filters, mixed_precision, out_dir, force, seed, eps, steps, step_size, sigma_max, profile_path, data_dir):
    """Train the classifier and/or the DAE on DATASET.

    Writes OUT/classifier.keras, OUT/dae.keras and OUT/dae_stats.json (the
    mean and std of the DAE's reconstruction error r(x) on the clean
    validation split, spec §2); --what adv-classifier writes
    OUT/adv_classifier.keras and OUT/adv_classifier.json; --what
    adapted-classifier writes OUT/classifier.keras and OUT/classifier.json
    beside copies of BASE's DAE.
    """
    import contextlib

    from apudae_tf import data, profiles, store
    from apudae_tf import train as training

    adapt_to = [v.strip() for v in adapt_to.split(",") if v.strip()]
    if what == "adapted-classifier":
        _variant_list(",".join(v.partition(":")[0] for v in adapt_to))
    sigmas = _sigma_list(sigma_list) if sigma_list is not None else None
    check_dataset(dataset)
    out_option = _out_option(out_dir)
    out_dir = out_dir or store.run_dir(dataset, "models")
    declared = profile_path or any(v is not None for v in (eps, steps, step_size, sigma_max))
    # a folder trained before keeps the profile it recorded (e.g. adding the adversarially trained model)
    recorded = None if declared else profiles.from_folder(out_dir, profiles.dataset_name(dataset))
    profile = recorded or profiles.declare(profiles.dataset_name(dataset), eps, steps, step_size, sigma_max,
                                           profile_path)
    parts = ["classifier", "dae"] if what == "all" else [what]
    holds = tuple(f for p in parts if p != "smoothing-dae" for f in store.PART_FILES[p])
    if what == "smoothing-dae":
        from apudae_tf.denoisers import SMOOTHING_STAGES, smoothing_denoiser_file

        holds = tuple(os.path.join(store.SMOOTHING_DIR, smoothing_denoiser_file(s, stage))
                      for s in sigmas or profile.smoothing_sigmas for stage in SMOOTHING_STAGES)
    store.check_output_folder(out_dir, out_option, holds, force=force or resume)
    ds = data.load_dataset(dataset, data_dir)
    click.echo(f"writing to {out_dir}", err=True)
    profiles.save(profile, out_dir)
    todo = training.train_order(recipe) if what == "all" else [what]
    summary = {}
    for part in todo:
        n_epochs = epochs or training.default_epochs(ds.name, part)
        settings = training.TrainSettings(epochs=n_epochs, batch_size=batch_size, seed=seed, arch=arch,
                                          dae_filters=dae_filters, mixed_precision=mixed_precision)
        click.echo(f"training the {part} on {ds.name} ({len(ds.x_train)} images, {n_epochs} epochs) -> {out_dir}",
                   err=True)
        with contextlib.redirect_stdout(sys.stderr):  # Keras' progress lines; stdout carries the summary only
            summary.update(training.train(ds, part, out_dir, settings, echo=lambda m: click.echo(m, err=True),
                                          recipe=recipe, progress_bar=progress_bar, resume=resume, base_dir=base_dir,
                                          adapt_to=adapt_to, sigmas=sigmas, stability_epochs=stability_epochs))
    click.echo(json.dumps(summary, indent=2))


@main.command()
@click.argument("dataset")
@models_option
@classifier_option
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON.")
@data_dir_option
@friendly_errors
def info(dataset, model_dir, classifier_path, as_json, data_dir):
    """Measure the models of DATASET: classifier test accuracy and DAE reconstruction error.

    Scores the whole test split; r(x) is reported on clean test and
    validation images beside the stored mu and sigma.
    """
    from apudae_tf import data, info, store

    folder = model_folder(dataset, model_dir)
    ds = data.load_dataset(dataset, data_dir)
    m = store.load_models(folder, ds.image_shape, classifier=classifier_path, num_classes=ds.num_classes)
    facts = info.model_facts(m, ds)
    if as_json:
        click.echo(json.dumps(facts, indent=2))
    else:
        click.echo(info.format_facts(facts))


@main.command()
@click.option("--dataset", required=True, help="mnist, cifar10, imagenet, npz:PATH or folder:PATH.")
@click.option("--method", type=click.Choice(names.ATTACK_METHODS + names.ADAPTIVE_METHODS + names.ENSEMBLE_METHODS),
              default="pgd", show_default=True,
              help="Attack (spec §4); cw is PGD on the CW margin loss, cw-l2 the L2 CW attack; none writes the clean "
                   "images; bpda, weighted, adaptive and bpda-eot see the defence (spec §5); apgd-ce, apgd-dlr, "
                   "apgd-t and square are AutoAttack's (Croce & Hein 2020): white box on the classifier, or through "
                   "the purifier with --variant.")
@click.option("--eps", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="L∞ budget, in (0, 1] (default: 0.3 MNIST, 8/255 CIFAR-10).")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Iterations (default: 40 MNIST, 7 CIFAR-10; Adam steps for cw-l2, default 100; APGD 100; "
                   "queries for square, default 5000).")
@click.option("--step", "step_size", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Step size, in (0, 1] (default: 0.01 MNIST, 2/255 CIFAR-10; scaled with --eps).")
@click.option("--n", "n_images", type=click.IntRange(min=1), default=None, help="Attack the first N images.")
@click.option("--split", type=click.Choice(["test", "val"]), default="test", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help=BATCH_HELP)
@click.option("--variant", type=click.Choice(names.PURIFY_VARIANTS), default=None,
              help="The purification variant the attack sees: for bpda-eot and adaptive (default F), and for "
                   "apgd-ce, apgd-dlr, apgd-t and square, which then attack classifier ∘ purifier through its exact "
                   "gradient (Square: its outputs only). Settings from the model folder, as for `purify`.")
@click.option("--restarts", type=click.IntRange(min=1), default=1, show_default=True,
              help="APGD's random starts per image.")
@click.option("--targets", type=click.IntRange(min=1), default=names.APGD_TARGETS, show_default=True,
              help="apgd-t: target classes, the highest ranked after the true one.")
@click.option("--lam", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Counter B's weight on r(x) (weighted), >= 0.")
@click.option("--eot", type=click.IntRange(min=1), default=None,
              help="Samples of the defence's randomness per gradient, or per score for square (default: 8 for F and G, "
                   "else 1).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Output npz (default: stdout, when it is not a terminal). An existing file is refused unless "
                   "--force.")
@force_option
@models_option
@classifier_option
@data_dir_option
@friendly_errors
def attack(dataset, method, eps, steps, step_size, n_images, split, seed, batch_size, output, force, model_dir,
           classifier_path, data_dir, variant, restarts, targets, lam, eot):
    """Attack the classifier; write the adversarial images as pipeline npz.

    none, random, fgsm, r-fgsm, pgd, cw, cw-l2: white box on the classifier,
    blind to any defence ("grey box" for the purifier). bpda (counter A,
    BPDA through the DAE), weighted (counter B, loss L - lam*r(x)), adaptive
    (exact gradients through the unrolled purification of --variant, EOT over
    its randomness) and bpda-eot (the real purifier forward, identity
    backward, EOT) see the defence (spec §5). The npz holds x (adversarial),
    y (true labels) and meta.
    """
    import dataclasses

    from apudae_tf import attacks, data, pipeline, store

    check_output(output, force=force)
    folder = model_folder(dataset, model_dir)
    ds = data.load_dataset(dataset, data_dir, test_only=split == "test")
    x, y = ds.split(split)
    x, y = x[:n_images], y[:n_images]
    adaptive = method in names.ADAPTIVE_METHODS or (method in names.ENSEMBLE_METHODS and variant is not None)
    if method in names.ADAPTIVE_METHODS and variant is None:
        variant = "F"
    m = store.load_models(folder, ds.image_shape, need=("classifier", "dae") if adaptive else ("classifier",),
                          classifier=classifier_path, num_classes=ds.num_classes)
    if eot is None:
        from apudae_tf.purify import RANDOM_VARIANTS

        eot = EOT_DEFAULT if adaptive and method not in ("bpda", "weighted") and variant in RANDOM_VARIANTS else 1
    settings = attacks.settings_for(method, ds.name, eps, steps, step_size, seed, lam, eot)
    settings = dataclasses.replace(settings, restarts=restarts, targets=targets)
    model_fn = m.classifier_fn()
    defence, seen = None, None
    if adaptive:
        from apudae_tf import profiles
        from apudae_tf.purify import Purifier, default_settings

        defence = Purifier(m.dae, m.stats, variant, default_settings(ds.name, variant, folder),
                           checkpoint=profiles.get(ds.name).checkpoint_steps)
        seen = {"variant": variant, **dataclasses.asdict(defence.settings)}
    with progress_bar(len(x), f"{method} on {len(x)} {split} images") as bar:
        x_adv = attacks.run_attack(method, model_fn, x, y, settings, batch_size,
                                   progress=lambda done: bar.update(done - bar.pos), defence=defence)
    step = {"command": "attack", "method": method, "split": split, "n": len(x), "models": m.folder,
            "settings": dataclasses.asdict(settings), "saw_defence": adaptive}
    if adaptive:
        step["defence"] = seen
    write_batch(pipeline.Batch(x=x_adv, y=y, meta={"dataset": ds.name, "history": [step]}), output, force)


@main.command()
@click.option("--variant", type=click.Choice(names.PURIFY_VARIANTS), default="F",
              show_default=True, help="Purification variant (spec §3).")
@click.option("--steps", "n_iter", type=click.IntRange(min=1), default=None,
              help="Purification iterations n (spec §3), >= 1 (default: the tuned or the profile's).")
@click.option("--n", "old_n", hidden=True, default=None, expose_value=False, callback=_renamed("--steps"))
@click.option("--alpha", type=click.FloatRange(min=0), default=None,
              help="Step size (A) or Adam learning rate (B-G), >= 0.")
@click.option("--eps-r", type=click.FloatRange(min=0), default=None, help="Noise scale ε_r (F, G; eq. 12), >= 0.")
@click.option("--rho", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Resize range ρ (G; eq. 13), in [0, 1).")
@click.option("--theta-max", type=click.FloatRange(0, 180), default=None,
              help="Rotation range θ_max in degrees (G; eq. 13), in [0, 180].")
@click.option("--seed", type=int, default=None, help="Seed of the random variants F and G.")
@click.option("--dataset", default=None, help="Dataset whose models to use, when the input's meta names none.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help=BATCH_HELP)
@click.option("-i", "--input", "input_path", type=click.Path(dir_okay=False), default=None,
              help="Input npz (default: stdin).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Output npz (default: stdout, when it is not a terminal). An existing file is refused unless "
                   "--force.")
@force_option
@models_option
@friendly_errors
def purify(variant, n_iter, alpha, eps_r, rho, theta_max, seed, dataset, batch_size, input_path, output, force,
           model_dir):
    """Purify images with the DAE; reads pipeline npz, writes pipeline npz.

    Settings not given come from the model folder's purify_settings.json
    (chosen on the validation split by `apudae-tf tune`), else built-in
    defaults.
    """
    import dataclasses

    from apudae_tf import purify as purification

    check_output(output, force=force)
    batch = read_batch(input_path)
    m = models_for(batch, model_dir, dataset, need=("dae",))
    base = purification.default_settings(m.stats.dataset, variant, m.folder)
    given = dict(n=n_iter, alpha=alpha, eps_r=eps_r, rho=rho, theta_max=theta_max, seed=seed)
    settings = dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})
    p = purification.Purifier(m.dae, m.stats, variant, settings)
    with progress_bar(len(batch.x), f"purify ({variant})") as bar:
        x = p.purify_array(batch.x, batch_size, progress=lambda done: bar.update(done - bar.pos))
    step = {"command": "purify", "variant": variant, "models": m.folder, "settings": dataclasses.asdict(settings)}
    write_batch(batch.then(x, step), output, force)


@main.command()
@click.option("--dataset", default=None, help="Dataset whose classifier to use, when the input's meta names none.")
@click.option("-i", "--input", "input_path", type=click.Path(dir_okay=False), default=None,
              help="Input npz (default: stdin).")
@click.option("-o", "--predictions", type=click.Path(dir_okay=False), default=None,
              help="Write the predictions (pred, logits) to this npz; an existing file is refused unless --force.")
@force_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--smooth", "smooth_sigma", type=click.FloatRange(0, 4, min_open=True), default=None,
              help="Classify with randomized smoothing at this sigma: PREDICT (Cohen et al. 2019) over --N noisy "
                   "copies through the --denoiser and the classifier; an image whose vote is not clear at level "
                   "--alpha is abstained from (class -1), counted wrong.")
@click.option("--denoiser", type=click.Choice(["none", "mse", "stability"]), default="stability", show_default=True,
              help="With --smooth: the denoiser in front of the classifier (MODELS/smoothing/).")
@click.option("--N", "n_draws", type=click.IntRange(min=1), default=1000, show_default=True,
              help="With --smooth: noise draws per image.")
@click.option("--alpha", type=click.FloatRange(0, 0.5, min_open=True, max_open=True), default=0.001,
              show_default=True, help="With --smooth: PREDICT's failure probability.")
@click.option("--seed", type=int, default=0, show_default=True, help="With --smooth: seed of the noise draws.")
@models_option
@classifier_option
@friendly_errors
def classify(dataset, input_path, predictions, force, as_json, smooth_sigma, denoiser, n_draws, alpha, seed, model_dir,
             classifier_path):
    """Classify pipeline npz images; print the accuracy when labels are present."""
    import numpy as np

    from apudae_tf import models, store

    if predictions:
        store.check_output_file(predictions, "-o", force)
    batch = read_batch(input_path)
    m = models_for(batch, model_dir, dataset, need=("classifier",), classifier=classifier_path)
    result = {"n": int(len(batch.x)), "dataset": batch.dataset or dataset, "models": m.folder,
              "history": batch.meta.get("history", [])}
    if smooth_sigma is None:
        logits = models.predict_in_batches(m.classifier_fn(), batch.x)
        pred = np.argmax(logits, 1).astype(np.int64)
        arrays = {"pred": pred, "logits": logits.astype(np.float32)}
    else:
        from apudae_tf import smoothing

        sd = _smoothing_defence(m, smooth_sigma, denoiser, n_draws, alpha, seed)
        pred = sd.predict(batch.x)
        arrays = {"pred": pred}
        result["smoothing"] = {**dataclasses.asdict(sd.settings), "abstained": int(np.sum(pred == smoothing.ABSTAIN))}
    if batch.y is not None:
        result["accuracy"] = float(np.mean(pred == batch.y))
    if predictions:
        store.atomic_write(predictions, lambda tmp: np.savez(tmp, **arrays))
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    abstained = f", abstained on {result['smoothing']['abstained']} (counted wrong)" if smooth_sigma else ""
    if "accuracy" in result:
        click.echo(f"accuracy {result['accuracy']:.4f} ({int(np.sum(pred == batch.y))}/{len(pred)}){abstained}")
    else:
        click.echo(f"classified {len(pred)} images (no labels in the input){abstained}")


def _smoothing_defence(m, sigma, denoiser, n_draws, alpha, seed):
    """The smoothed classifier of a model folder at ``sigma`` behind its ``denoiser`` (smoothing/), with PREDICT's
    settings."""
    from apudae_tf import certify as cert
    from apudae_tf import smoothing

    row = cert.load_row(m.classifier_file, sigma, denoiser, m.folder, cert.CertifySettings(), classifier=m.classifier)
    settings = smoothing.SmoothingSettings(sigma, denoiser, n_draws, alpha, seed)
    return smoothing.SmoothingDefence(row.smoothed, settings, f"smoothing-{sigma:g}-{denoiser}")


@main.command()
@click.option("--dataset", required=True, help="Dataset whose models to export (saved_models/<dataset>).")
@click.option("--variant", type=click.Choice(names.PURIFY_VARIANTS), default="F",
              show_default=True, help="Purification variant served by serving_default.")
@click.option("--out", "base", type=click.Path(file_okay=False), required=True,
              help="Model base path; the SavedModel goes to OUT/VERSION/ (TF Serving's layout).")
@click.option("--version", "version", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--smooth", "smooth_sigma", type=click.FloatRange(0, 4, min_open=True), default=None,
              help="Export the smoothed classifier at this sigma instead: serving_default runs PREDICT in the graph "
                   "(--N draws through --denoiser and the classifier) and returns classes (-1: abstain), abstain and "
                   "counts.")
@click.option("--denoiser", type=click.Choice(["none", "mse", "stability"]), default="stability", show_default=True,
              help="With --smooth: the denoiser in front of the classifier (MODELS/smoothing/).")
@click.option("--N", "n_draws", type=click.IntRange(min=1), default=1000, show_default=True,
              help="With --smooth: noise draws per image.")
@click.option("--alpha", type=click.FloatRange(0, 0.5, min_open=True, max_open=True), default=0.001,
              show_default=True, help="With --smooth: PREDICT's failure probability.")
@click.option("--seed", type=int, default=0, show_default=True, help="With --smooth: seed of the noise draws.")
@models_option
@classifier_option
@friendly_errors
def export(dataset, variant, base, version, smooth_sigma, denoiser, n_draws, alpha, seed, model_dir, classifier_path):
    """Export purifier + classifier as a TF Serving SavedModel.

    Signatures: serving_default (images [N,H,W,C] float32 in [0,1] ->
    purified, logits, probabilities, classes, r_before, r_after) and
    classify_only (no purification). Settings come from the model folder's
    purify_settings.json, as for `apudae-tf purify`. With --smooth S:
    serving_default (images -> classes, abstain, counts) runs randomized
    smoothing's PREDICT.
    """
    from apudae_tf import export as exporting
    from apudae_tf import purify as purification
    from apudae_tf import store

    exporting.check_target(base, version)
    if smooth_sigma is not None:
        folder = model_folder(dataset, model_dir)
        m = store.load_models(folder, need=("classifier",), classifier=classifier_path)
        shape = tuple(int(d) for d in m.classifier.input_shape[1:])
        sd = _smoothing_defence(m, smooth_sigma, denoiser, n_draws, alpha, seed)
        path = exporting.export_smoothed(sd.smoothed, shape, base, version, n=n_draws, alpha=alpha, seed=seed,
                                         meta={"dataset": dataset, "models": store.shown_path(folder)})
        click.echo(f"exported smoothing (sigma {smooth_sigma:g}, {denoiser} denoiser) for {dataset} to {path}", err=True)
        click.echo(path)
        return
    m = store.load_models(model_folder(dataset, model_dir), classifier=classifier_path)
    settings = purification.default_settings(m.stats.dataset, variant, m.folder)
    p = purification.Purifier(m.dae, m.stats, variant, settings)
    path = exporting.export(m.classifier, p, base, version, meta={"dataset": m.stats.dataset, "models": m.folder})
    click.echo(f"exported {variant} for {m.stats.dataset} to {path}", err=True)
    click.echo(path)


@main.command()
@click.argument("dataset")
@click.option("--variants", default="direct,A,B,C,D,E,F,G", show_default=True, help="Comma-separated variants.")
@click.option("--n-val", type=click.IntRange(min=1), default=500, show_default=True,
              help="Validation images to tune on.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--defense-gan", is_flag=True,
              help="Tune the Defense-GAN baseline instead: sweep its steps R (L = 10) and write the choice to "
                   "MODELS/generator.json; the sweep goes to results/<dataset>/tune_gan.json.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Model folder that receives the choice (default: ./apudae-runs/<dataset>/tuned). When it is not "
                   "MODELS, MODELS' files are copied into it first, so it is a complete model folder: pass it as "
                   "--models to purify, attack, evaluate and export. One that already holds a choice is refused "
                   "unless --force; so is a shipped model folder.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="The whole sweep as JSON (default: OUT/tune.json, or OUT/tune_gan.json with --defense-gan).")
@force_option
@models_option
@classifier_option
@data_dir_option
@friendly_errors
def tune(dataset, variants, n_val, seed, defense_gan, out_dir, report_path, force, model_dir, classifier_path,
         data_dir):
    """Choose purification settings on the validation split (never the test set).

    For each variant, sweeps n, alpha (and eps_r for F, G) on N_VAL
    validation images and their PGD versions (the dataset's preset, blind to
    the defence), keeps the setting with the best mean of clean and PGD
    accuracy, and writes it to OUT/purify_settings.json, which `purify
    --models OUT` then uses by default. The whole sweep goes to the report.
    Each scored setting is kept in ./apudae-runs/<dataset>/tune-cache, so the
    same command run again after an interruption resumes.
    """
    from apudae_tf import attacks, data, store, tuning

    chosen_variants = None if defense_gan else _variant_list(variants)
    folder = model_folder(dataset, model_dir)
    out_option = _out_option(out_dir)
    out_dir = out_dir or store.run_dir(dataset, "tuned")
    same = os.path.realpath(out_dir) == os.path.realpath(folder)
    holds = (store.GENERATOR_INFO,) if defense_gan and same else () if defense_gan else (store.PURIFY_SETTINGS,)
    if not same:  # a new folder is checked before the copy brings the base's settings along; copies of the
        # very files it would copy are no conflict (a tune that was interrupted, run again: it resumes)
        sources = {store.CLASSIFIER: classifier_path or os.path.join(folder, store.CLASSIFIER),
                   store.DAE: os.path.join(folder, store.DAE)}
        differ = tuple(f for f, src in sources.items() if not store.same_file(src, os.path.join(out_dir, f)))
        store.check_output_folder(out_dir, out_option, holds + differ, force)
    else:
        store.check_output_folder(out_dir, out_option, holds, force)
    report_option = _out_option(report_path, "--report")
    report_path = report_path or os.path.join(out_dir, "tune_gan.json" if defense_gan else "tune.json")
    store.check_output_file(report_path, report_option, force=force)
    ds = data.load_dataset(dataset, data_dir)
    m = store.load_models(folder, ds.image_shape, classifier=classifier_path, num_classes=ds.num_classes)
    click.echo(f"writing to {out_dir}", err=True)
    if not same:
        store.copy_model_files(folder, out_dir)
        if classifier_path:  # the choice is for this classifier: the new folder holds it
            store.copy_file(classifier_path, os.path.join(out_dir, store.CLASSIFIER))
    if defense_gan:
        _tune_gan(ds, m, folder, out_dir, n_val, seed, report_path)
        return
    chosen_variants = _variant_list(variants)

    def show(variant, row):
        s = row["settings"]
        click.echo(f"{variant}: n={s['n']} alpha={s['alpha']:.4g} eps_r={s['eps_r']:.4g} "
                   f"clean {row['clean']:.3f} pgd {row['pgd']:.3f}", err=True)

    # every scored setting is kept, so an interrupted tune resumes (at ImageNet size one costs minutes)
    report = tuning.tune(m, ds, chosen_variants, n_val, attacks.preset(ds.name, seed=seed), seed, progress=show,
                           cache_dir=store.run_dir(dataset, "tune-cache"))
    report["command"] = "apudae-tf tune " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    report["models"] = store.shown_path(folder)
    store.write_json(report_path, report)
    chosen = {v: {k: r[k] for k in ("settings", "val_clean", "val_pgd")} for v, r in report["variants"].items()}
    settings_path = os.path.join(out_dir, store.PURIFY_SETTINGS)
    previous = {}
    if os.path.isfile(settings_path):  # keep variants tuned earlier and not re-tuned now
        with open(settings_path) as f:
            previous = json.load(f).get("variants", {})
    store.write_json(settings_path, {"chosen_on": "val", "n_val": report["n"], "criterion": report["criterion"],
                                     "attack": report["attack"], "variants": {**previous, **chosen}})
    for v, r in chosen.items():
        click.echo(f"{v}: {r['settings']}  val clean {r['val_clean']:.3f}, val pgd {r['val_pgd']:.3f}")


def _tune_gan(ds, m, folder, out_dir, n_val, seed, report_path):
    from apudae_tf import attacks, defensegan, store, tuning

    gen = _load_generator(folder, ds.name, "tune")

    def show(row):
        s = row["settings"]
        click.echo(f"Defense-GAN: L={s['restarts']} R={s['steps']} lr={s['lr']:g} clean {row['clean']:.3f} "
                   f"pgd {row['pgd']:.3f} ({row['ms_per_image']:.0f} ms/image)", err=True)

    report = tuning.tune_gan(m, ds, gen, n_val, attacks.preset(ds.name, seed=seed), seed=seed, progress=show)
    report["command"] = "apudae-tf tune " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    store.write_json(report_path, report)
    defensegan.save_search(out_dir, report)
    r = report["defense_gan"]
    click.echo(f"Defense-GAN: {r['settings']}  val clean {r['val_clean']:.3f}, val pgd {r['val_pgd']:.3f}")


def _load_generator(folder, dataset, command):
    from apudae_tf import defensegan, store

    path = os.path.join(folder, defensegan.GAN_FILE)
    if not os.path.isfile(path):
        where = "" if store.is_shipped(folder) else f" --out {folder}"
        raise ApudaeError(f"no {defensegan.GAN_FILE} in {folder}: train it with `apudae-tf train {dataset} "
                          f"--what gan{where}`" + (" or leave out --defense-gan" if command == "evaluate" else ""))
    return store.load_model(path)


@main.command()
@click.argument("dataset")
@click.option("--n", "n_images", type=click.IntRange(min=1), default=None,
              help="Score the first N test images (default: all for the table, 100 with --adaptive, whose "
                   "attacks through an iterative purifier cost seconds per image). --n 500 for a quick look at the "
                   "table.")
@click.option("--variants", default="direct,chosen", show_default=True,
              help="APuDAE rows, comma-separated: direct, A-G (each optionally with :n=STEPS, e.g. A:n=12), "
                   "'chosen' (the best iterative variant on validation) or 'all' (the paper's rows).")
@click.option("--cw-l2-n", type=click.IntRange(min=0), default=None,
              help="Images in the CW-L2 column, the dearest attack (default: 1000; 0 leaves the column out).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Report folder (default: ./apudae-runs/<dataset>/evaluate). Finished cells are cached in OUT/cache, "
                   "so an interrupted run resumes; a folder that already holds the report is refused unless --force "
                   "(which keeps the cache).")
@force_option
@click.option("--no-adv-training", is_flag=True, help="Leave out the adversarial-training row.")
@click.option("--defense-gan", is_flag=True,
              help="Add the Defense-GAN row (MODELS/generator.keras, from `train --what gan`). Opt-in: its latent "
                   "search costs ~1 s per image on 2 cores at L=10, R=200, hours on the full test set.")
@click.option("--gan-restarts", type=click.IntRange(min=1), default=None,
              help="Defense-GAN: random starts of z per image (L; default: the value chosen on validation by "
                   "`tune --defense-gan`, else 10).")
@click.option("--gan-steps", type=click.IntRange(min=0), default=None,
              help="Defense-GAN: gradient-descent steps per start (R; default: chosen on validation by "
                   "`tune --defense-gan`, else 200).")
@click.option("--gan-attack-restarts", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --adaptive: restarts of the latent search that BPDA+EOT runs forward on Defense-GAN at each "
                   "attack step (fewer than L keeps the attack affordable; the score uses the full defence).")
@click.option("--adaptive", is_flag=True,
              help="Instead of the table: attacks that see the defence, on adversarial training (white box), APuDAE "
                   "direct, the chosen variant, the chosen variant in front of the adversarially trained classifier "
                   "(and Defense-GAN with --defense-gan). Columns: clean, blind PGD, counter A, counter B over a "
                   "lambda grid, then APGD-CE, APGD-T and Square as a cascade (each on the images still standing) "
                   "through the defence's own gradient, and the per-image worst case: the number to quote. Also the "
                   "ROC of r(x) as a detector. Writes OUT/adaptive.json, adaptive.md, roc.json, roc.png.")
@click.option("--apgd-steps", type=click.IntRange(min=1), default=names.ADAPTIVE_BUDGET["apgd_steps"],
              show_default=True,
              help="With --adaptive: APGD iterations per run (AutoAttack: 100).")
@click.option("--restarts", type=click.IntRange(min=1), default=names.ADAPTIVE_BUDGET["restarts"],
              show_default=True,
              help="With --adaptive: APGD's random starts per image (AutoAttack's standard evaluation: 1).")
@click.option("--apgd-targets", type=click.IntRange(min=1), default=names.ADAPTIVE_BUDGET["targets"],
              show_default=True,
              help="With --adaptive: APGD-T's target classes, the highest ranked after the true one (AutoAttack's "
                   "standard evaluation: 9; each target costs a full APGD run through the purifier).")
@click.option("--square-queries", type=click.IntRange(min=1), default=names.ADAPTIVE_BUDGET["square_queries"],
              show_default=True,
              help="With --adaptive: Square attack queries per image (AutoAttack's standard evaluation: 5000; each "
                   "query through an iterative purifier costs a purification).")
@click.option("--eot", type=click.IntRange(min=1), default=names.ADAPTIVE_BUDGET["eot"], show_default=True,
              help="With --adaptive: draws of a random defence's randomness per gradient, and per score for Square "
                   "(EOT; F, G, Defense-GAN).")
@click.option("--cascade/--no-cascade", default=None,
              help="With --adaptive: every attack column runs only on the images still standing (each cell is then "
                   "the robust accuracy so far; the worst case is the same), or only the AutoAttack ensemble does. "
                   "Default: the dataset profile's (imagenet: on, where one attack through the purifier costs "
                   "minutes per image; others: off).")
@click.option("--chunk", type=click.IntRange(min=0), default=None,
              help="With --adaptive: attack, score and cache each cell this many images at a time, so that a cell "
                   "taking hours resumes from its last finished chunk from OUT/cache/cells.json alone (0: a cell at "
                   "once). Default: the dataset profile's (imagenet: 10, and 1 for BPDA+EOT and the AutoAttack "
                   "cascade, whose attacks run G's purification at every step; others: 0).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the attacks' random starts.")
@click.option("--norm", type=click.Choice(["linf", "l2"]), default="linf", show_default=True,
              help="With --adaptive: the threat model. l2 = the report of the certified defence (docs/certify.md): "
                   "rows no defence, the chosen APuDAE variant and randomized smoothing behind each of --denoisers; "
                   "columns clean, blind PGD-L2, then APGD-CE, APGD-T and Square-L2 as a cascade at the profile's L2 "
                   "budget (mnist 2.0, cifar10 0.5, imagenet 1.0); smoothed rows scored by PREDICT; certified "
                   "accuracy at r = eps of the same images beside it (--certify-report). Writes OUT/adaptive_l2.json "
                   "and adaptive_l2.md.")
@click.option("--sigma", "l2_sigma", type=click.FloatRange(0, 4, min_open=True), default=None,
              help="--norm l2: the smoothed rows' sigma (default: the smallest of the profile's whose largest "
                   "certifiable radius at N = 10,000 exceeds 1.5 eps: mnist 1.0, cifar10 0.25).")
@click.option("--denoisers", "denoiser_list", default="none,mse,stability", show_default=True,
              help="--norm l2: the smoothed rows (none, mse, stability; see `certify`).")
@click.option("--denoisers-from", "denoiser_dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="--norm l2: the model folder whose smoothing/ holds the denoisers (default: the models folder).")
@click.option("--every", type=click.IntRange(min=1), default=20, show_default=True,
              help="--norm l2: attack every EVERY-th test image, as `certify` does, so both reports hold the same "
                   "images.")
@click.option("--predict-n", type=click.IntRange(min=1), default=1000, show_default=True,
              help="--norm l2: noise draws of PREDICT, which scores the smoothed rows.")
@click.option("--alpha", type=click.FloatRange(0, 0.5, min_open=True, max_open=True), default=0.001,
              show_default=True, help="--norm l2: PREDICT's failure probability.")
@click.option("--mixed-precision", is_flag=True, help="--norm l2: the denoisers in bfloat16/float16 (see `certify`).")
@click.option("--certify-report", "certify_path", type=click.Path(dir_okay=False), default=None,
              help="--norm l2: a certify.json whose certificates of the same images go beside the attacks "
                   "(default: results/<dataset>/certify/certify.json when it exists).")
@click.option("--no-purifier", is_flag=True, help="--norm l2: leave out the APuDAE row.")
@click.option("--correct-only/--all-images", default=None,
              help="Score only those of the first N test images that the classifier gets right (the paper's "
                   "ImageNet protocol, spec §6), or all of them. Default: the dataset profile's (imagenet: "
                   "correct only; others: all).")
@models_option
@classifier_option
@data_dir_option
@friendly_errors
def evaluate(dataset, n_images, variants, cw_l2_n, out_dir, force, no_adv_training, defense_gan, gan_restarts,
             gan_steps, gan_attack_restarts, adaptive, apgd_steps, restarts, apgd_targets, square_queries, eot, cascade,
             chunk, seed, norm, l2_sigma, denoiser_list, denoiser_dir, every, predict_n, alpha, mixed_precision,
             certify_path, no_purifier, correct_only, model_dir, classifier_path, data_dir):
    """Rebuild the paper's table for DATASET (spec §6): defences x attacks.

    Rows: no defence, adversarial training (MODELS/adv_classifier.keras, from
    `train --what adv-classifier`), MagNet (two ways of counting refused
    inputs), APuDAE direct and the APuDAE variants. Columns: clean, FGSM,
    R-FGSM, PGD, CW (L-inf) and CW-L2, at the dataset's preset budget.
    Purifying defences are attacked blind (white box on the classifier).
    Writes OUT/table.json (records), OUT/table.md (the paper's numbers
    beside ours) and PNG figures. An interrupted run resumes from OUT/cache.
    """
    from apudae_tf import data, profiles, store, table
    from apudae_tf import reports as ev

    if norm == "l2":
        if not adaptive:
            raise ApudaeError("--norm l2: only the adaptive report has an L2 threat model; add --adaptive")
        budget = table.Budget(apgd_steps=apgd_steps, restarts=restarts, targets=apgd_targets,
                              square_queries=square_queries, eot=eot)
        return _evaluate_l2(dataset, n_images, every, out_dir, force, budget, seed, l2_sigma, denoiser_list,
                            denoiser_dir, predict_n, alpha, mixed_precision, certify_path, no_purifier, model_dir,
                            classifier_path, data_dir)
    report = "adaptive" if adaptive else "table"
    folder = model_folder(dataset, model_dir)
    out_option = _out_option(out_dir)
    out_dir = out_dir or store.run_dir(dataset, "evaluate")
    store.check_output_folder(out_dir, out_option, (f"{report}.json", f"{report}.md"), force)
    chosen = ev.parse_variants(profiles.get(profiles.dataset_name(dataset)).name, variants)
    if "chosen" in chosen and table.chosen_variant(ev._tuned(folder)) is None:
        click.echo(f"note: nothing in {folder} was tuned on validation, so --variants' 'chosen' row is left out; "
                   f"`apudae-tf tune {dataset} --models {folder}` chooses one", err=True)
    ds = data.load_dataset(dataset, data_dir)
    m = store.load_models(folder, ds.image_shape, classifier=classifier_path, num_classes=ds.num_classes)
    adv = None
    if not no_adv_training:
        if not os.path.isfile(os.path.join(folder, store.ADV_CLASSIFIER)):
            raise ApudaeError(f"no {store.ADV_CLASSIFIER} in {folder}: pass --no-adv-training"
                              + ("" if store.is_shipped(folder) else
                                 f", or train it with `apudae-tf train {dataset} --what adv-classifier --out {folder}`"))
        adv = store.load_adv_classifier(folder)
    click.echo(f"writing to {out_dir}", err=True)
    gan = None
    if defense_gan:
        from apudae_tf import defensegan

        gen = _load_generator(folder, ds.name, "evaluate")
        tuned = defensegan.tuned_search(folder)  # chosen on validation by `tune --defense-gan`
        gan = defensegan.DefenseGan(gen, dataclasses.replace(
            tuned, restarts=gan_restarts or tuned.restarts, steps=tuned.steps if gan_steps is None else gan_steps,
            seed=seed))
    n = min(n_images or (names.ADAPTIVE_N if adaptive else len(ds.x_test)), len(ds.x_test))
    test_images = None
    if correct_only is None:
        correct_only = profiles.get(ds.name).correct_only
    if correct_only:
        ds, test_images = ev.correctly_classified(ds, m.classifier_fn(), n)
        n = test_images["kept"]
        click.echo(f"scoring the {n} of the first {test_images['first']} test images the classifier gets right",
                   err=True)
    command = "apudae-tf evaluate " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    echo = functools.partial(click.echo, err=True)
    if adaptive:
        budget = table.Budget(apgd_steps=apgd_steps, restarts=restarts, targets=apgd_targets,
                              square_queries=square_queries, eot=eot)
        result = ev.adaptive_report(m, ds, n, out_dir, adv=adv, seed=seed, budget=budget, command=command,
                                    echo=echo, progress_bar=progress_bar, gan=gan,
                                    gan_attack_restarts=gan_attack_restarts, variants=chosen,
                                    test_images=test_images, cascade=cascade, chunk=chunk)
    else:
        result = ev.table_report(m, ds, n, chosen, out_dir, adv=adv, seed=seed, cw_l2_n=cw_l2_n, command=command,
                                 echo=echo, progress_bar=progress_bar, gan=gan, test_images=test_images)
    with open(os.path.join(out_dir, f"{report}.md")) as f:
        click.echo(f.read().split("\n\n")[0])
    click.echo(f"wrote {out_dir}/{report}.json, {report}.md and figures in {result['seconds'] / 60:.1f} min", err=True)


def _evaluate_l2(dataset, n_images, every, out_dir, force, budget, seed, sigma, denoiser_list, denoiser_dir, predict_n,
                 alpha, mixed_precision, certify_path, no_purifier, model_dir, classifier_path, data_dir):
    """`evaluate --adaptive --norm l2`: the L2 adaptive report (adaptive_l2.py)."""
    from apudae_tf import adaptive_l2, data, profiles, store
    from apudae_tf import certify as cert

    kinds = _denoiser_kinds(denoiser_list)
    folder = model_folder(dataset, model_dir)
    out_option = _out_option(out_dir)
    out_dir = out_dir or store.run_dir(dataset, "evaluate")
    store.check_output_folder(out_dir, out_option, ("adaptive_l2.json", "adaptive_l2.md"), force)
    name = profiles.dataset_name(dataset)
    if profiles.get(name).l2_threat is None:
        raise ApudaeError(f"dataset {name!r} declares no L2 threat model (l2_threat in its profile)")
    if certify_path is None:
        default = os.path.join("results", name, "certify", cert.REPORT)
        certify_path = default if os.path.isfile(default) else None
    elif not os.path.isfile(certify_path):
        raise ApudaeError(f"--certify-report {certify_path}: no such file; run `apudae-tf certify {dataset}` first")
    ds = data.load_dataset(dataset, data_dir, test_only=True)
    need = ("classifier",) if no_purifier else ("classifier", "dae")
    m = store.load_models(folder, ds.image_shape, need=need, classifier=classifier_path, num_classes=ds.num_classes)
    command = "apudae-tf evaluate " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    click.echo(f"writing to {out_dir}", err=True)
    result = adaptive_l2.report(m, ds, n_images or names.ADAPTIVE_N, every, out_dir, denoisers=kinds,
                                denoiser_dir=denoiser_dir or folder, sigma=sigma, budget=budget, predict_n=predict_n,
                                alpha=alpha, seed=seed, mixed_precision=mixed_precision, certify_path=certify_path,
                                command=command, echo=functools.partial(click.echo, err=True),
                                progress_bar=progress_bar, with_purifier=not no_purifier)
    with open(os.path.join(out_dir, "adaptive_l2.md")) as f:
        click.echo(f.read().split("\n\n")[1])
    click.echo(f"wrote {out_dir}/adaptive_l2.json and adaptive_l2.md in {result['seconds'] / 60:.1f} min", err=True)


def _denoiser_kinds(text: str) -> list[str]:
    from apudae_tf import certify as cert

    kinds = [d.strip() for d in text.split(",") if d.strip()]
    bad = [d for d in kinds if d not in cert.DENOISERS]
    if bad or not kinds:
        raise ApudaeError(f"--denoisers {text}: use {', '.join(cert.DENOISERS)}, comma-separated")
    return kinds


@main.command()
@click.argument("dataset")
@click.option("--sigma", "sigma_list", default=None,
              help="Noise levels sigma, comma-separated, each in (0, 4] (default: the profile's: 0.25,0.5,1 for mnist "
                   "and cifar10; 0.25,0.5 for imagenet). The noise N(0, sigma^2 I) is added in the classifier's [0, 1] "
                   "input space.")
@click.option("--denoisers", "denoiser_list", default="none,mse,stability", show_default=True,
              help="Rows per sigma, comma-separated: none (the classifier smoothed directly), mse, stability (the "
                   "denoisers of `train --what smoothing-dae` in DENOISERS-FROM/smoothing/), purify (the mse denoiser, "
                   "then the APuDAE variant chosen on validation in the models folder: ~3n+1 DAE passes a draw).")
@click.option("--n", "n_images", type=click.IntRange(min=1), default=100, show_default=True,
              help="Certify this many test images: every EVERY-th from the first.")
@click.option("--every", type=click.IntRange(min=1), default=20, show_default=True,
              help="Take every EVERY-th test image (Cohen et al.'s --skip; 20 spreads 500 images over CIFAR-10's "
                   "10,000).")
@click.option("--n0", type=click.IntRange(min=1), default=100, show_default=True,
              help="Draws that select the class (CERTIFY's n0).")
@click.option("--N", "n_draws", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Draws that bound its probability (CERTIFY's n). The largest radius a row can certify is "
                   "sigma * Phi^-1(alpha^(1/N)): 3.2 sigma at N = 10,000 and alpha = 0.001. Cost on 2 CPU cores: "
                   "~2-5 s per image per row for MNIST and ~10-20 s for CIFAR-10 at N = 10,000.")
@click.option("--alpha", type=click.FloatRange(0, 0.5, min_open=True, max_open=True), default=0.001,
              show_default=True, help="Failure probability of each certificate.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the noise draws.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Noisy copies per forward pass (part of the record: the draws are made per batch). Default: the "
                   "profile's (1000; 50 for ImageNet, whose 224-px U-Net needs ~14 GiB for 1000).")
@click.option("--mixed-precision", is_flag=True,
              help="Run the denoiser in bfloat16 (CPU) or float16 (GPU), ~1.8x faster on a CPU with bfloat16 "
                   "kernels; the classifier stays float32. Recorded in each row: it defines the base classifier.")
@click.option("--denoisers-from", "denoiser_dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="The model folder whose smoothing/ holds the denoisers (default: the models folder).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Report folder (default: ./apudae-runs/<dataset>/certify). Its certify.json keeps every image's "
                   "record: a run resumes from it, and runs with other rows or more images add to it (nothing in it "
                   "is replaced). Writes certify.json, certify.md and certify.png.")
@models_option
@classifier_option
@data_dir_option
@friendly_errors
def certify(dataset, sigma_list, denoiser_list, n_images, every, n0, n_draws, alpha, seed, batch_size, mixed_precision,
            denoiser_dir, out_dir, model_dir, classifier_path, data_dir):
    """Certify L2 robustness on DATASET's test images by randomized smoothing.

    For each sigma and denoiser, the smoothed classifier votes over N noisy
    copies of each image passed through denoiser and classifier (Cohen et
    al. 2019, CERTIFY; Salman et al. 2020's denoised smoothing). Its answer
    is a class and an L2 radius within which, with probability at least
    1 - alpha, no perturbation changes the vote; or an abstention, counted
    as wrong. Writes OUT/certify.json (one record per image and row),
    OUT/certify.md (certified accuracy by radius, beside published
    numbers) and OUT/certify.png.
    """
    from apudae_tf import certify as cert
    from apudae_tf import data, profiles, store

    name = profiles.dataset_name(dataset)
    kinds = _denoiser_kinds(denoiser_list)
    folder = model_folder(dataset, model_dir)  # registers the folder's profile: a user's dataset has its batch
    if batch_size is None:
        batch_size = getattr(profiles.REGISTRY.get(name), "certify_batch", cert.CertifySettings.batch_size)
    settings = cert.CertifySettings(n0=n0, n=n_draws, alpha=alpha, seed=seed, batch_size=batch_size,
                                    mixed_precision=mixed_precision).check()
    out_dir = out_dir or store.run_dir(dataset, "certify")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ApudaeError(f"--out {out_dir}: is a file; name a folder")
    if store.is_shipped(out_dir):
        raise ApudaeError(f"--out {out_dir}: inside the shipped models; choose another folder")
    store.probe_folder(out_dir, "--out", out_dir)
    cert.read_report(os.path.join(out_dir, cert.REPORT))  # an unreadable earlier report fails before any work
    sigmas = _sigma_list(sigma_list) if sigma_list else profiles.get(name).smoothing_sigmas
    ds = data.load_dataset(dataset, data_dir, test_only=True)
    m = store.load_models(folder, ds.image_shape, need=("classifier",), classifier=classifier_path,
                          num_classes=ds.num_classes)
    rows = [cert.load_row(m.classifier_file, s, d, denoiser_dir or folder, settings, num_classes=ds.num_classes,
                          classifier=m.classifier, purifier_folder=folder, image_shape=ds.image_shape)
            for s in sigmas for d in kinds]
    indices = cert.test_indices(len(ds.x_test), n_images, every)
    command = "apudae-tf certify " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    echo = functools.partial(click.echo, err=True)
    echo(f"certifying {len(indices)} test images (every {every}th) with {len(rows)} rows -> {out_dir}")
    report = cert.certify_rows(rows, ds.x_test, ds.y_test, indices, settings, out_dir=out_dir, dataset=ds.name,
                               command=command, echo=echo)
    with open(os.path.join(out_dir, "certify.md")) as f:
        click.echo(f.read().split("## Best over")[0].rstrip())
    click.echo(f"wrote {out_dir}/certify.json, certify.md and certify.png ({len(report['records'])} records)", err=True)


if __name__ == "__main__":
    main()
