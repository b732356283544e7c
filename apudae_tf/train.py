"""What `apudae-tf train` trains, and in which order: the dispatcher over the training modules.

``classifiers`` (the CNN, the ResNets, the classifier adapted to a purifier), ``denoisers`` (the DAE
and its clean statistics, spec §1–2), ``adversarial`` (the adversarial-training baseline) and
``defensegan`` (the WGAN-GP generator) each train through ``model.fit`` (``fitting``).
"""

from __future__ import annotations

import dataclasses

from apudae_tf import names, profiles, store
from apudae_tf.data import Dataset
from apudae_tf.errors import ApudaeError

RECIPES = names.TRAIN_RECIPES


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int = 128
    learning_rate: float = 1e-3
    seed: int = 0
    arch: str | None = None  # the classifier's (names.CLASSIFIER_ARCHS); None = the profile's default
    dae_filters: int | None = None  # the DAE's channels; None: its architecture's (Table 1: 64, U-Net: 48)
    mixed_precision: bool = False  # the DAE trains in float16 (GPU) / bfloat16 (CPU); saved in float32


def default_epochs(dataset: str, part: str) -> int:
    """What ``apudae-tf train`` runs without --epochs: the dataset profile's (the shipped models')."""
    return profiles.get(dataset).epochs.get(part, profiles.DEFAULT_EPOCHS[part])


def train_order(recipe: str) -> list[str]:
    """The parts of ``--what all`` in the order a recipe needs them."""
    from apudae_tf.denoisers import ADVERSARIAL_RECIPES

    return ["classifier", "dae"] if recipe in ADVERSARIAL_RECIPES else ["dae", "classifier"]


def train(ds: Dataset, what: str, out_dir: str, settings: TrainSettings, echo=print, recipe: str = "paper",
          progress_bar=None, resume: bool = False, base_dir: str | None = None, adapt_to=("A", "C"),
          sigmas=None, stability_epochs: int | None = None) -> dict:
    """Train ``classifier``, ``dae`` or ``all`` with a recipe and save into ``out_dir``; returns a summary.

    Recipes: ``paper`` (spec §1: Gaussian-noise DAE, plain classifier); ``plus`` (this project's: the DAE
    also learns random L∞-corner noise, and the classifier also learns on that DAE's outputs); ``adv-dae``
    (this project's, after HGD, Liao et al. 2018: the DAE also learns to map PGD examples of the classifier
    in ``out_dir`` back to their clean training images); ``adv-mix`` (adv-dae plus full-ε FGSM examples).
    ``all`` trains the parts in ``train_order(recipe)``; ``adv-classifier`` (the adversarial-training
    baseline) and ``gan`` (Defense-GAN's generator) are trained only when asked for.
    ``adapted-classifier`` fine-tunes ``base_dir``'s classifier on the outputs of its purifier variants
    ``adapt_to``. ``smoothing-dae`` trains the denoisers of randomized smoothing for ``sigmas`` (default: the
    profile's) in front of ``base_dir``'s classifier, frozen: MSE for ``settings.epochs``, then the stability
    objective for ``stability_epochs`` (docs/certify.md §2). ``resume`` continues an interrupted run from its backup in ``out_dir``.
    ``progress_bar(length, label)``, if given, is a context manager with ``update(k)`` and ``pos`` (click's),
    shown while adv-dae makes its PGD examples.
    """
    from apudae_tf import adversarial, classifiers, defensegan, denoisers

    if recipe not in RECIPES:
        raise ApudaeError(f"unknown training recipe {recipe!r}; use one of {', '.join(RECIPES)}")
    summary = {"dataset": ds.name, "out": out_dir, "recipe": recipe}
    for part in train_order(recipe) if what == "all" else [what]:
        if part == "dae":
            summary.update(denoisers.train_dae_part(ds, out_dir, settings, echo, recipe, progress_bar, resume))
        elif part == "adapted-classifier":
            summary.update(classifiers.train_adapted_classifier(ds, base_dir or store.default_model_dir(ds.name),
                                                                out_dir, list(adapt_to), settings, echo, resume))
        elif part == "adv-classifier":
            summary.update(adversarial.train_adv_classifier(ds, out_dir, settings, echo, resume=resume))
        elif part == "smoothing-dae":
            summary.update(denoisers.train_smoothing_part(
                ds, out_dir, settings, echo=echo, resume=resume, base_dir=base_dir or store.default_model_dir(ds.name),
                sigmas=sigmas, stability_epochs=stability_epochs))
        elif part == "gan":
            summary.update(defensegan.train_gan(ds.x_train, out_dir, settings.epochs, settings.batch_size,
                                                settings.seed, echo, resume, ds.name, ds.source))
        else:
            summary.update(classifiers.train_classifier_part(ds, out_dir, settings, echo, recipe, resume))
    return summary
