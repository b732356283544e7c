"""Training: the classifier (cross-entropy) and the DAE (spec §1, paper eq. 5).

Both use ``model.fit`` with Keras' progress bars; the DAE's noise is drawn per
image inside the tf.data pipeline, so ``fit`` needs no custom train step.
"""

from __future__ import annotations

import dataclasses
import json
import os

import keras
import numpy as np
import tensorflow as tf

from apudae_tf import models, names, profiles, store
from apudae_tf.checkpoint import EpochCheckpoint
from apudae_tf.data import Dataset
from apudae_tf.errors import ApudaeError

RECIPES = names.TRAIN_RECIPES
# adv-dae: PGD examples of this many training images join the DAE's noisy pairs
ADV_DAE_IMAGES = 30000
# adv-mix: adv-dae's pairs plus full-ε FGSM examples of this many further training images. The
# adv-dae DAE saw only PGD, and one full-ε FGSM step is where its iterative variants fall short
# of the paper (results/mnist/val_attacks.json).
ADV_MIX_FGSM_IMAGES = 15000
ADVERSARIAL_RECIPES = ("adv-dae", "adv-mix")
# the attacks that make those pairs: (steps, step = ε / this, random start)
ADV_PAIR_ATTACKS = {"pgd": (20, 12, True), "fgsm": (1, 1, False)}


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int = 128
    learning_rate: float = 1e-3
    seed: int = 0
    arch: str | None = None  # the classifier's (names.CLASSIFIER_ARCHS); None = the dataset's default
    dae_filters: int = models.DAE_FILTERS  # the DAE's channels (Table 1: 64); wider is an experiment


def _fit_verbose() -> int:
    # one line per epoch when the output is a log file, a live bar on a terminal
    import sys

    return 1 if sys.stdout.isatty() else 2


def train_classifier(ds: Dataset, settings: TrainSettings, dae=None, linf_max: float = 0.0) -> keras.Model:
    """Train a CNN classifier (logits out) on the train split, monitoring val.

    With a ``dae`` (the "stable classifier" of this project, not the paper's recipe) the
    training set is the clean images plus one DAE output per image, D(x̃) with x̃ drawn
    as for the DAE's own training (``add_noise``), so the classifier learns on what
    purification hands it.
    """
    keras.utils.set_random_seed(settings.seed)
    x, y = ds.x_train, ds.y_train
    if dae is not None:
        sigma_max = profiles.get(ds.name).sigma_max
        denoised = models.predict_in_batches(lambda b: models.denoise(dae, add_noise(b, sigma_max, linf_max)), x)
        x, y = np.concatenate([x, denoised]), np.concatenate([y, y])
    model = models.build_mnist_classifier(ds.image_shape, ds.num_classes)
    model.compile(
        optimizer=keras.optimizers.Adam(settings.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(
        x,
        y,
        batch_size=settings.batch_size,
        epochs=settings.epochs,
        validation_data=(ds.x_val, ds.y_val),
        verbose=_fit_verbose(),
    )
    return model


def add_noise(clean, sigma_max: float, linf_max: float = 0.0):
    """x̃ = clip(x + σ·n, 0, 1), σ ~ U(0, σ_max) per image (eq. 5).

    With ``linf_max`` > 0 (not the paper's recipe; the "plus" recipe of this project) half
    of the images instead get random-sign noise x̃ = clip(x + ε·s, 0, 1), s ∈ {−1, +1} per
    pixel, ε ~ U(0, linf_max) per image: corners of the L∞ ball, where an L∞ attack's
    perturbations lie, but drawn at random; no attack is run. (Drawing s per 2×2 or 4×4
    block as well was tried and purified worse on validation.)
    """
    n = tf.shape(clean)[0]
    sigma = tf.random.uniform([n, 1, 1, 1], 0.0, sigma_max)
    noise = sigma * tf.random.normal(tf.shape(clean))
    if linf_max > 0:
        eps = tf.random.uniform([n, 1, 1, 1], 0.0, linf_max)
        signs = tf.sign(tf.random.uniform(tf.shape(clean), -1.0, 1.0))
        noise = tf.where(tf.random.uniform([n, 1, 1, 1]) < 0.5, eps * signs, noise)
    return tf.clip_by_value(clean + noise, 0.0, 1.0)


def noisy_pairs(x: np.ndarray, sigma_max: float, batch_size: int, seed: int, linf_max: float = 0.0,
                given: tuple[np.ndarray, np.ndarray] | None = None) -> tf.data.Dataset:
    """Shuffled (x̃, x) batches, x̃ = add_noise(x), drawn afresh each epoch.

    ``given`` = (inputs, targets) adds fixed pairs that get no noise: the adv-dae recipe's
    adversarial examples and their clean images."""
    inputs, targets, fixed = x, x, np.zeros(len(x), bool)
    if given is not None:
        inputs, targets = np.concatenate([x, given[0]]), np.concatenate([x, given[1]])
        fixed = np.concatenate([fixed, np.ones(len(given[0]), bool)])

    def pair(inp, clean, is_fixed):
        return tf.where(tf.reshape(is_fixed, [-1, 1, 1, 1]), inp, add_noise(clean, sigma_max, linf_max)), clean

    return (
        tf.data.Dataset.from_tensor_slices((inputs, targets, fixed))
        .shuffle(len(inputs), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .map(pair, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )


def adversarial_pairs(model_fn, ds: Dataset, n: int, seed: int, progress=None, method: str = "pgd",
                      start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(adversarial examples, clean images) for training images ``start`` to ``start + n``: the
    adv-dae and adv-mix recipes.

    ``pgd``: PGD at the dataset's ε, 20 steps of ε/12 with a random start; ``fgsm``: one step of
    ε. Both on the classifier ``model_fn`` (x -> logits) alone. PGD-20 is a weaker and different
    schedule from the evaluation's PGD-40 (MNIST), and only training images are attacked, so the
    evaluation's test and validation images are never seen."""
    from apudae_tf import attacks

    x, y = ds.x_train[start:start + n], ds.y_train[start:start + n]
    eps = profiles.get(ds.name).threat.eps
    steps, step_divisor, rand_init = ADV_PAIR_ATTACKS[method]
    settings = attacks.AttackSettings(eps=eps, steps=steps, step=eps / step_divisor, rand_init=rand_init, seed=seed)
    return attacks.run_attack(method, model_fn, x, y, settings, batch_size=1000, progress=progress), x


def train_dae(
    x_train: np.ndarray,
    x_val: np.ndarray,
    sigma_max: float,
    settings: TrainSettings,
    filters: int = models.DAE_FILTERS,
    linf_max: float = 0.0,
    given: tuple[np.ndarray, np.ndarray] | None = None,
) -> keras.Model:
    """Train the Table-1 DAE on noisy inputs, mse to the clean image (eq. 5); plus ``given`` pairs."""
    keras.utils.set_random_seed(settings.seed)
    dae = models.build_dae(tuple(x_train.shape[1:]), filters=filters)
    dae.compile(optimizer=keras.optimizers.Adam(settings.learning_rate), loss="mse")
    dae.fit(
        noisy_pairs(x_train, sigma_max, settings.batch_size, settings.seed, linf_max, given),
        epochs=settings.epochs,
        validation_data=noisy_pairs(x_val, sigma_max, settings.batch_size, settings.seed + 1, linf_max),
        shuffle=False,  # the tf.data pipeline already shuffles
        verbose=_fit_verbose(),
    )
    return dae


def clean_error_stats(dae, x_val: np.ndarray) -> tuple[float, float]:
    """μ and σ of r(x) over clean validation images (spec §2)."""
    r = models.reconstruction_errors(dae, x_val)
    return float(np.mean(r)), float(np.std(r))


def accuracy(classifier, x: np.ndarray, y: np.ndarray) -> float:
    logits = models.predict_in_batches(lambda b: classifier(b, training=False), x)
    return float(np.mean(np.argmax(logits, axis=1) == y))


# -- ResNets (CIFAR-10): SGD with a one-cycle rate, crop + flip, checkpoints every epoch ------

RESNET_PEAK_LR = 0.2
RESNET_MOMENTUM = 0.9
RESNET_WEIGHT_DECAY = 5e-4
ONE_CYCLE_WARMUP = 0.3  # the share of the steps over which the rate climbs to its peak
CROP_PAD = 4
CLASSIFIER_CHECKPOINTS = ".classifier_ckpt"


class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Linear up from 0 to ``peak`` over the first ``warmup`` share of ``total`` steps, then linear
    down to 0 (Smith's one-cycle, as in fast CIFAR-10 training): good accuracy in few epochs."""

    def __init__(self, peak: float, total: int, warmup: float = ONE_CYCLE_WARMUP):
        self.peak, self.total, self.warmup = peak, total, warmup

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        up = max(self.warmup * self.total, 1.0)
        return tf.where(step < up, self.peak * (step + 1) / up,
                        self.peak * tf.maximum(0.0, (self.total - step) / max(self.total - up, 1.0)))

    def get_config(self):
        return {"peak": self.peak, "total": self.total, "warmup": self.warmup}


def crop_flip(x: np.ndarray, rng: np.random.Generator, pad: int = CROP_PAD) -> np.ndarray:
    """The standard CIFAR augmentation on a batch: a random crop of the reflect-padded image and a
    horizontal flip with probability 1/2."""
    n, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    rows = rng.integers(0, 2 * pad + 1, n)[:, None] + np.arange(h)
    cols = rng.integers(0, 2 * pad + 1, n)[:, None] + np.arange(w)
    out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    flip = rng.random(n) < 0.5
    out[flip] = out[flip, :, ::-1]
    return out


ONE_CYCLE_RECIPE = {"peak_lr": RESNET_PEAK_LR, "momentum": RESNET_MOMENTUM, "weight_decay": RESNET_WEIGHT_DECAY,
                    "one_cycle_warmup": ONE_CYCLE_WARMUP, "crop_pad": CROP_PAD}


def _one_cycle_sgd(model, ds: Dataset, settings: TrainSettings):
    """(schedule, optimizer): SGD + Nesterov momentum with the one-cycle rate over the whole run and
    weight decay on the kernels only, built for ``model``."""
    n_batches = -(-len(ds.x_train) // settings.batch_size)
    schedule = OneCycle(RESNET_PEAK_LR, settings.epochs * n_batches)
    optimizer = keras.optimizers.SGD(schedule, momentum=RESNET_MOMENTUM, nesterov=True,
                                     weight_decay=RESNET_WEIGHT_DECAY)
    optimizer.exclude_from_weight_decay(var_names=["_bn", "bias", "standardise"])
    optimizer.build(model.trainable_variables)
    return schedule, optimizer


def cross_entropy_step(model, optimizer):
    """A compiled training step ``(x, y) -> loss``: one optimizer update on the mean cross-entropy of
    the model's logits (BatchNorm in training mode)."""
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = ce(y, model(x, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    return train_step


def train_resnet(ds: Dataset, out_dir: str, settings: TrainSettings, echo=print, resume: bool = False) -> dict:
    """A ResNet classifier (``settings.arch``) trained from scratch with SGD + Nesterov momentum, weight
    decay (not on BatchNorm or biases), a one-cycle rate and crop + flip augmentation. Checkpoints
    after every epoch in ``out_dir``/.classifier_ckpt; ``resume`` continues an interrupted run.
    Writes classifier.keras and classifier.json (recipe, history, test accuracy)."""
    keras.utils.set_random_seed(settings.seed)
    model = models.build_classifier(settings.arch, ds.image_shape, ds.num_classes)
    schedule, optimizer = _one_cycle_sgd(model, ds, settings)
    recipe = {**dataclasses.asdict(settings), **ONE_CYCLE_RECIPE}
    ckpt = EpochCheckpoint(os.path.join(out_dir, CLASSIFIER_CHECKPOINTS), model, optimizer, recipe, "classifier")
    start = ckpt.restore(resume, echo)
    train_step = cross_entropy_step(model, optimizer)

    def step(idx, k):
        x = crop_flip(ds.x_train[idx], np.random.default_rng([settings.seed, k]))
        loss = train_step(tf.constant(x), tf.constant(ds.y_train[idx]))
        return {"loss": float(loss), "lr": float(schedule(k))}

    _run_epochs(ds, settings, ckpt, start, step, lambda: {"val_accuracy": accuracy(model, ds.x_val, ds.y_val)},
                echo, "classifier")
    store.save_model(model, os.path.join(out_dir, store.CLASSIFIER))
    acc = accuracy(model, ds.x_test, ds.y_test)
    store.write_json(os.path.join(out_dir, store.CLASSIFIER_INFO),
                     {"dataset": ds.name, "recipe": recipe, "history": ckpt.history, "test_accuracy": acc,
                      "source": ds.source})
    ckpt.finish()
    echo(f"classifier: test accuracy {acc:.4f}")
    return {"classifier_test_accuracy": acc}


def default_epochs(dataset: str, part: str) -> int:
    """What ``apudae-tf train`` runs without --epochs: the dataset profile's (the shipped models')."""
    return profiles.get(dataset).epochs.get(part, profiles.DEFAULT_EPOCHS[part])


def train_order(recipe: str) -> list[str]:
    """The parts of ``--what all`` in the order a recipe needs them."""
    return ["classifier", "dae"] if recipe in ADVERSARIAL_RECIPES else ["dae", "classifier"]


def train(ds: Dataset, what: str, out_dir: str, settings: TrainSettings, echo=print, recipe: str = "paper",
          progress_bar=None, resume: bool = False, base_dir: str | None = None, adapt_to=("A", "C")) -> dict:
    """Train ``classifier``, ``dae`` or ``all`` with a recipe and save into ``out_dir``; returns a summary.

    Recipes: ``paper`` (spec §1: Gaussian-noise DAE, plain classifier); ``plus`` (this
    project's: the DAE also learns random L∞-corner noise, and the classifier also learns
    on that DAE's outputs; see ``add_noise`` and ``train_classifier``); ``adv-dae`` (this
    project's, after HGD, Liao et al. 2018: the DAE also learns to map PGD examples of the
    classifier in ``out_dir`` back to their clean training images; see ``adversarial_pairs``);
    ``adv-mix`` (adv-dae plus full-ε FGSM examples of further training images).
    ``all`` trains the parts in ``train_order(recipe)``; ``adv-classifier`` (the adversarial-
    training baseline, ``train_adv_classifier``) is trained only when asked for.
    ``adapted-classifier`` fine-tunes ``base_dir``'s classifier on the outputs of its purifier
    variants ``adapt_to`` (``train_adapted_classifier``).
    ``resume`` continues the checkpointed trainings (ResNets, adversarial training) of an
    interrupted run. ``progress_bar(length, label)``, if given, is a context manager with ``update(k)`` and ``pos``
    (click's), shown while adv-dae makes its PGD examples.
    """
    if recipe not in RECIPES:
        raise ApudaeError(f"unknown training recipe {recipe!r}; use one of {', '.join(RECIPES)}")
    summary = {"dataset": ds.name, "out": out_dir, "recipe": recipe}
    for part in train_order(recipe) if what == "all" else [what]:
        if part == "dae":
            summary.update(_train_dae_part(ds, out_dir, settings, echo, recipe, progress_bar))
        elif part == "adapted-classifier":
            summary.update(train_adapted_classifier(ds, base_dir or store.default_model_dir(ds.name), out_dir,
                                                    list(adapt_to), settings, echo))
        elif part == "adv-classifier":
            summary.update(train_adv_classifier(ds, out_dir, settings, echo, resume=resume))
        elif part == "gan":
            from apudae_tf import defensegan

            summary.update(defensegan.train_gan(ds.x_train, out_dir, settings.epochs, settings.batch_size, settings.seed,
                                                echo, resume, ds.name, ds.source))
        else:
            summary.update(_train_classifier_part(ds, out_dir, settings, echo, recipe, resume))
    return summary


def _linf_max(ds: Dataset, recipe: str) -> float:
    return profiles.get(ds.name).linf_max if recipe == "plus" else 0.0


def _adversarial_part(model_fn, ds: Dataset, method: str, start: int, n: int, seed: int, recipe: str, echo,
                      progress_bar):
    label = f"dae: {method.upper()} examples of {n} training images ({recipe})"
    if progress_bar is None:
        echo(label)
        return adversarial_pairs(model_fn, ds, n, seed, method=method, start=start)
    with progress_bar(n, label) as bar:
        return adversarial_pairs(model_fn, ds, n, seed, progress=lambda done: bar.update(done - bar.pos),
                                 method=method, start=start)


def _train_dae_part(ds: Dataset, out_dir: str, settings: TrainSettings, echo, recipe: str, progress_bar) -> dict:
    sigma_max, linf_max = profiles.get(ds.name).sigma_max, _linf_max(ds, recipe)
    given = None
    if recipe in ADVERSARIAL_RECIPES:
        model_fn = store.load_models(out_dir, ds.image_shape, need=("classifier",)).classifier_fn()
        n_pgd = min(ADV_DAE_IMAGES, len(ds.x_train))
        parts = [("pgd", 0, n_pgd)]
        if recipe == "adv-mix":
            parts.append(("fgsm", n_pgd, min(ADV_MIX_FGSM_IMAGES, len(ds.x_train) - n_pgd)))
        pairs = [_adversarial_part(model_fn, ds, method, start, n, settings.seed + 1, recipe, echo, progress_bar)
                 for method, start, n in parts if n > 0]
        given = tuple(np.concatenate([p[i] for p in pairs]) for i in (0, 1))
    dae = train_dae(ds.x_train, ds.x_val, sigma_max, settings, filters=settings.dae_filters, linf_max=linf_max,
                    given=given)
    mu, sigma = clean_error_stats(dae, ds.x_val)
    stats = store.DaeStats(
        mu=mu,
        sigma=sigma,
        sigma_max=sigma_max,
        image_shape=ds.image_shape,
        dataset=ds.name,
        training={**dataclasses.asdict(settings), "filters": settings.dae_filters, "dropout": models.DAE_DROPOUT,
                  "recipe": recipe, "linf_max": linf_max, "adversarial_images": 0 if given is None else len(given[0]),
                  "stats_split": "val", "source": ds.source},
    )
    store.save_model(dae, os.path.join(out_dir, store.DAE))
    store.write_json(os.path.join(out_dir, store.DAE_STATS), stats.to_json())
    echo(f"dae: clean validation r(x) mean {mu:.4f}, std {sigma:.4f} (sigma_max {sigma_max}, linf_max {linf_max})")
    return {"dae_mu": mu, "dae_sigma": sigma}


def _train_classifier_part(ds: Dataset, out_dir: str, settings: TrainSettings, echo, recipe: str,
                           resume: bool = False) -> dict:
    arch = settings.arch or profiles.get(ds.name).arch
    if arch != "cnn":
        if recipe == "plus":
            raise ApudaeError("the plus recipe trains the small CNN only; use --recipe paper with --arch " + arch)
        return train_resnet(ds, out_dir, dataclasses.replace(settings, arch=arch), echo, resume)
    dae = None
    if recipe == "plus":  # learns on the outputs of the DAE in out_dir
        dae = store.load_models(out_dir, ds.image_shape, need=("dae",)).dae
    clf = train_classifier(ds, settings, dae=dae, linf_max=_linf_max(ds, recipe))
    store.save_model(clf, os.path.join(out_dir, store.CLASSIFIER))
    acc = accuracy(clf, ds.x_test, ds.y_test)
    echo(f"classifier: test accuracy {acc:.4f}")
    return {"classifier_test_accuracy": acc}


# -- the adversarial-training baseline ------------------------------------------------------

# MNIST: Madry et al. 2018, PGD at the evaluation's ε with fewer steps than its PGD-40 (2 CPU
# cores), Madry's step rule 2.5·ε/steps, random start. CIFAR-10, where an epoch of PGD-10 on a
# ResNet would cost 2 CPU cores about 40 min: fast adversarial training (Wong et al. 2020), one
# FGSM step from a random start. Both are validated with PGD-10 after every epoch,
# which is what exposes fast training's catastrophic overfitting.
ADV_TRAIN_STEPS = 10
# Wong et al.'s FGSM-RS (step 1.25·ε, start U(−ε, ε), projected onto the ε-ball) overfit
# catastrophically on ResNet-20 from scratch as the rate reached its peak: on 1000 validation
# images PGD-10 fell 0.16 → 0.09 from epoch 3 to 5 while clean rose 0.39 → 0.53; with step ε it
# fell 0.15 → 0.06 (clean 0.42 → 0.58). So CIFAR-10 uses N-FGSM (de Jorge et al. 2022), which
# avoids that failure at the same cost: start U(−2ε, 2ε), one FGSM step of ε, and no projection
# back onto the ε-ball (training perturbations reach 3ε; evaluation keeps ε).
FAST_AT_STEP = 1.0  # × ε
FAST_AT_NOISE = 2.0  # × ε, the half-width of the uniform start
ADV_METHODS = {"pgd": ("Madry PGD adversarial training", "Madry PGD"),
               "fast": ("fast adversarial training with N-FGSM (one FGSM step from U(−2ε, 2ε) noise, not projected; "
                        "de Jorge et al. 2022, after Wong et al. 2020)", "fast N-FGSM")}
# ε grows linearly from 0 to the evaluation's ε over the first ADV_EPS_RAMP_EPOCHS epochs
# (a curriculum). Straight at ε 0.3 the first epoch collapsed to chance with Adam at 1e-3
# (loss ln 10, val accuracy 0.13: PGD examples of a clean model start at a loss of ~20), and
# at Madry's 1e-4 it crawled (val PGD-10 0.10 after one epoch); 2 CPU cores cannot wait for
# Madry's 100k steps.
ADV_EPS_RAMP_EPOCHS = 2
ADV_LEARNING_RATE = 5e-4
ADV_CHECKPOINTS = ".adv_classifier_ckpt"


def adv_train_attack(dataset: str, steps: int | None = None, seed: int = 0):
    """The attack that makes a dataset's adversarial-training examples (``steps`` overrides: tests)."""
    from apudae_tf import attacks

    eps = attacks.preset(dataset).eps
    if is_fast(dataset, steps):
        return attacks.AttackSettings(eps=eps, steps=1, step=FAST_AT_STEP * eps, rand_init=True, seed=seed)
    steps = steps or ADV_TRAIN_STEPS
    return attacks.AttackSettings(eps=eps, steps=steps, step=min(2.5 * eps / steps, eps), rand_init=True, seed=seed)


def n_fgsm(loss_fn, x, eps, seed):
    """N-FGSM training examples: x + U(−2ε, 2ε) noise, then one FGSM step of ε, clipped to [0, 1]
    but not projected onto the ε-ball (so ‖x_adv − x‖∞ ≤ 3ε). ``seed`` is a stateless seed."""
    from apudae_tf import attacks

    spread = FAST_AT_NOISE * eps
    begin = tf.clip_by_value(x + tf.random.stateless_uniform(tf.shape(x), [seed, 1], -spread, spread), 0.0, 1.0)
    # the ball of radius noise + step holds every point the step can reach: the projection is a no-op
    return attacks.iterative_attack(loss_fn, x, begin, spread + FAST_AT_STEP * eps, FAST_AT_STEP * eps, 1)


def is_fast(dataset: str, steps: int | None = None) -> bool:
    """Whether a dataset's adversarial training is fast N-FGSM training (else PGD)."""
    return steps is None and profiles.get(dataset).fast_adv_training


def adv_val_attack(dataset: str, seed: int = 0):
    """PGD-10 with Madry's step rule: how every adversarial training is checked after each epoch."""
    from apudae_tf import attacks

    eps = attacks.preset(dataset).eps
    return attacks.AttackSettings(eps=eps, steps=ADV_TRAIN_STEPS, step=2.5 * eps / ADV_TRAIN_STEPS, seed=seed)


def _run_epochs(ds: Dataset, settings: TrainSettings, ckpt: EpochCheckpoint, start: int, step_fn, validate,
                echo, what: str) -> None:
    """The epoch loop every custom training shares: a seeded shuffle per epoch (so a resumed run
    sees the batches the uninterrupted one would have), ``step_fn(indices, global_step) -> logs``
    per batch, then ``validate() -> record`` and a checkpoint."""
    n_batches = -(-len(ds.x_train) // settings.batch_size)
    for e in range(start, settings.epochs):
        order = np.random.default_rng(settings.seed + e).permutation(len(ds.x_train))
        bar = keras.utils.Progbar(n_batches, verbose=_fit_verbose(), stateful_metrics=["loss", "eps", "lr"])
        for b in range(n_batches):
            logs = step_fn(order[b * settings.batch_size : (b + 1) * settings.batch_size], e * n_batches + b)
            bar.update(b + 1, list(logs.items()))
        record = validate()
        ckpt.save(e + 1, record)
        echo(f"{what}: epoch {e + 1}/{settings.epochs}: " + ", ".join(f"{k} {v:.4f}" for k, v in record.items()))


def train_adv_classifier(ds: Dataset, out_dir: str, settings: TrainSettings, echo=print,
                         steps: int | None = None, resume: bool = False) -> dict:
    """Adversarial training of the classifier architecture: every training batch is replaced by its
    adversarial examples (``adv_train_attack``: PGD, or N-FGSM on CIFAR-10;
    cross-entropy, white box on the model being trained).

    MNIST (PGD): fine-tunes ``out_dir``/classifier.keras when it exists, else fresh weights, with
    Adam and ε ramped up (2 CPU cores cannot afford Madry's 100k steps from scratch). CIFAR-10
    (fast): Wong et al.'s schedule, from random weights with the one-cycle SGD rate of the clean
    ResNet and crop + flip augmentation, with N-FGSM examples. Checkpoints after every epoch in
    ``out_dir``/.adv_classifier_ckpt; ``resume`` continues from there, so a long run can span
    several sessions. Writes adv_classifier.keras and adv_classifier.json.
    """
    from apudae_tf import attacks

    keras.utils.set_random_seed(settings.seed)
    attack = adv_train_attack(ds.name, steps, settings.seed)
    fast = is_fast(ds.name, steps)
    init_path = os.path.join(out_dir, store.CLASSIFIER)
    init = os.path.isfile(init_path) and not fast
    model = (store.load_model(init_path) if init else
             models.build_classifier(settings.arch or profiles.get(ds.name).arch, ds.image_shape,
                                     ds.num_classes))
    n_batches = -(-len(ds.x_train) // settings.batch_size)
    if fast:
        # Wong et al. 2020 train from scratch with a cyclic rate peaking at 0.2 and no ε ramp. Our
        # first try, 8 epochs of Adam 5e-4 fine-tuned from the clean classifier, reached only
        # clean 0.67 / PGD-10 0.29 on validation.
        schedule, optimizer = _one_cycle_sgd(model, ds, settings)
        ramp_epochs, extra = 0, {"optimizer": "SGD one-cycle", **ONE_CYCLE_RECIPE, "noise": FAST_AT_NOISE,
                                 "projected": False}
    else:
        settings = dataclasses.replace(settings, learning_rate=ADV_LEARNING_RATE)
        schedule, optimizer = None, keras.optimizers.Adam(settings.learning_rate)
        optimizer.build(model.trainable_variables)
        ramp_epochs, extra = ADV_EPS_RAMP_EPOCHS, {"optimizer": "Adam"}
    recipe = {**dataclasses.asdict(settings), "attack": dataclasses.asdict(attack), "eps_ramp_epochs": ramp_epochs,
              "init": "classifier" if init else "random", **extra}
    if not fast:
        recipe.pop("epochs")  # a finished fine-tuning may be extended by more epochs (the one-cycle rate may not)
    ckpt = EpochCheckpoint(os.path.join(out_dir, ADV_CHECKPOINTS), model, optimizer, recipe, "adv-classifier")
    start = ckpt.restore(resume, echo)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")

    @tf.function
    def train_step(x, y, seed, eps):
        # stateless draws: a fresh, reproducible random start per batch inside the compiled step.
        # From scratch the BatchNorm moving averages lag the weights, so the fast recipe attacks
        # the model in training mode (batch statistics), as Wong et al. do.
        loss_fn = lambda b: ce(y, model(b, training=fast))  # noqa: E731
        if fast:
            x_adv = n_fgsm(loss_fn, x, eps, seed)
        else:
            begin = tf.clip_by_value(x + tf.random.stateless_uniform(tf.shape(x), [seed, 1], -eps, eps), 0.0, 1.0)
            x_adv = attacks.iterative_attack(loss_fn, x, begin, eps, eps * (attack.step / attack.eps), attack.steps)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(ce(y, model(x_adv, training=True)))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    def step(idx, k):
        ramp = min(1.0, (k + 1) / (ramp_epochs * n_batches)) if ramp_epochs else 1.0
        eps = attack.eps * ramp
        x = crop_flip(ds.x_train[idx], np.random.default_rng([settings.seed, k])) if fast else ds.x_train[idx]
        loss = train_step(tf.constant(x), tf.constant(ds.y_train[idx]), tf.constant(k, tf.int32),
                          tf.constant(eps, tf.float32))
        logs = {"loss": float(loss), "eps": eps}
        return {**logs, "lr": float(schedule(k))} if schedule is not None else logs

    fn = models.inference_fn(model)
    check = adv_val_attack(ds.name, settings.seed)
    _run_epochs(ds, settings, ckpt, start, step, lambda: _robust_accuracy(fn, ds.x_val[:1000], ds.y_val[:1000], check),
                echo, "adv-classifier")
    store.save_model(model, os.path.join(out_dir, store.ADV_CLASSIFIER))
    test_acc = accuracy(model, ds.x_test, ds.y_test)
    method, short = ADV_METHODS["fast" if fast else "pgd"]
    info = {"dataset": ds.name, "method": method, "short_name": short, "attack": dataclasses.asdict(attack),
            "eps_ramp_epochs": ramp_epochs, "validation_attack": dataclasses.asdict(check),
            "init": store.CLASSIFIER if init else "random", "training": {**dataclasses.asdict(settings), **extra},
            "history": ckpt.history, "test_clean_accuracy": test_acc, "source": ds.source}
    store.write_json(os.path.join(out_dir, store.ADV_CLASSIFIER_INFO), info)
    ckpt.finish()
    echo(f"adv-classifier: test clean accuracy {test_acc:.4f}")
    return {"adv_classifier_test_accuracy": test_acc}


# -- a classifier adapted to the purifier ------------------------------------------------------
# On CIFAR-10 the iterative purifiers (A–C) cost the plain classifier 13–19 points of clean
# accuracy (table 3), so many blind-attack misses are the purifier's own distortion. Fine-tuning
# the classifier on the purifier's outputs of clean training images is this project's
# improvement (spec §7: "a classifier trained to be stable on DAE outputs"); its rows are
# reported under their own name and attacked white box on the adapted classifier.
ADAPT_LEARNING_RATE = 0.01
ADAPT_MOMENTUM = 0.9
ADAPT_PURIFIED_SHARE = 0.5  # each training image is replaced by a purified copy with this probability
ADAPT_CACHE = ".adapted_cache"  # the purified training images, one .npy per variant (resumable)
ADAPT_VAL_IMAGES = 2000


def adapt_purifier(ds_name: str, models_: store.Models, token: str):
    """The purifier of one ``--adapt-to`` token: ``V`` (variant V with the base folder's tuned
    settings) or ``V:n=K:alpha=A`` overriding its steps and rate (A a number or a fraction such as
    2/255), so the classifier can also learn stronger purification than the tuned one."""
    from fractions import Fraction

    from apudae_tf import purify

    variant, *overrides = token.split(":")
    if variant not in names.PURIFY_VARIANTS:
        raise ApudaeError(f"unknown variant {variant!r} in {token!r}; use {', '.join(names.PURIFY_VARIANTS)}")
    settings = purify.default_settings(ds_name, variant, models_.folder)
    for item in overrides:
        key, _, value = item.partition("=")
        try:
            if key == "n":
                settings = dataclasses.replace(settings, n=int(value))
            elif key == "alpha":
                settings = dataclasses.replace(settings, alpha=float(Fraction(value)))
            else:
                raise ValueError
        except (ValueError, ZeroDivisionError):
            raise ApudaeError(f"bad --adapt-to item {item!r} in {token!r}: use V, V:n=K or V:n=K:alpha=A") from None
    return purify.Purifier(models_.dae, models_.stats, variant, settings.check())


def _purified_training_images(ds: Dataset, models_: store.Models, variants: list[str], cache: str, echo) -> np.ndarray:
    """[V, N, H, W, C]: every training image purified once per ``--adapt-to`` token
    (``adapt_purifier``); cached as .npy so an interrupted run skips done ones."""
    os.makedirs(cache, exist_ok=True)
    out = []
    for v in variants:
        path = os.path.join(cache, "train_purified_" + v.replace(":", "_").replace("=", "").replace("/", "-") + ".npy")
        if not os.path.isfile(path):
            p = adapt_purifier(ds.name, models_, v)
            echo(f"adapted-classifier: purifying {len(ds.x_train)} training images with {v} ({p.settings})")
            arr = p.purify_array(ds.x_train)
            store.atomic_write(path, lambda f, a=arr: np.save(f, a, allow_pickle=False))
        arr = np.load(path, allow_pickle=False)
        if arr.shape != ds.x_train.shape:
            raise ApudaeError(f"{path}: shape {arr.shape} does not match the training images {ds.x_train.shape}; "
                              f"delete {cache}")
        out.append(arr)
    return np.stack(out)


def train_adapted_classifier(ds: Dataset, base_dir: str, out_dir: str, variants: list[str], settings: TrainSettings,
                             echo=print) -> dict:
    """Fine-tune ``base_dir``'s classifier on its purifier's outputs: SGD (Nesterov) at a fixed rate;
    each training image is, with probability ADAPT_PURIFIED_SHARE, replaced by its purified copy
    from a random one of ``variants``, with crop + flip on top. Writes ``out_dir``/classifier.keras
    and classifier.json, and copies the base's DAE, statistics and purify settings beside it, so
    ``out_dir`` is a complete model folder (re-tune it: the classifier changed)."""
    if os.path.realpath(base_dir) == os.path.realpath(out_dir):
        raise ApudaeError("the adapted classifier needs its own --out folder, not the base model folder")
    base = store.load_models(base_dir, ds.image_shape)
    for v in variants:
        adapt_purifier(ds.name, base, v)  # a bad token fails before any work
    keras.utils.set_random_seed(settings.seed)
    store.copy_model_files(base_dir, out_dir, (store.DAE, store.DAE_STATS, store.PURIFY_SETTINGS))
    purified = _purified_training_images(ds, base, variants, os.path.join(out_dir, ADAPT_CACHE), echo)
    model = base.classifier
    optimizer = keras.optimizers.SGD(ADAPT_LEARNING_RATE, momentum=ADAPT_MOMENTUM, nesterov=True)
    train_step = cross_entropy_step(model, optimizer)

    x_val, y_val = ds.x_val[:ADAPT_VAL_IMAGES], ds.y_val[:ADAPT_VAL_IMAGES]
    val_purified = {v: adapt_purifier(ds.name, base, v).purify_array(x_val) for v in variants}
    history = []
    n_batches = -(-len(ds.x_train) // settings.batch_size)
    for e in range(settings.epochs):
        rng = np.random.default_rng([settings.seed, e])
        order = rng.permutation(len(ds.x_train))
        bar = keras.utils.Progbar(n_batches, verbose=_fit_verbose(), stateful_metrics=["loss"])
        for b in range(n_batches):
            idx = order[b * settings.batch_size : (b + 1) * settings.batch_size]
            x = ds.x_train[idx].copy()
            pick = rng.random(len(idx)) < ADAPT_PURIFIED_SHARE
            which = rng.integers(0, len(variants), len(idx))
            x[pick] = purified[which[pick], idx[pick]]
            loss = train_step(tf.constant(crop_flip(x, rng)), tf.constant(ds.y_train[idx]))
            bar.update(b + 1, [("loss", float(loss))])
        record = {"epoch": e + 1, "val_clean": accuracy(model, x_val, y_val),
                  **{f"val_{v}": accuracy(model, val_purified[v], y_val) for v in variants}}
        history.append(record)
        echo("adapted-classifier: " + ", ".join(f"{k} {v:.4f}" if k != "epoch" else f"epoch {v}/{settings.epochs}"
                                                for k, v in record.items()))
    store.save_model(model, os.path.join(out_dir, store.CLASSIFIER))
    acc = accuracy(model, ds.x_test, ds.y_test)
    base_path = os.path.join(base_dir, store.CLASSIFIER)
    recipe = {**dataclasses.asdict(settings), "adapted_to": variants, "base": store.shown_path(base_path),
              "base_digest": store.file_digest(base_path), "purified_share": ADAPT_PURIFIED_SHARE,
              "optimizer": "SGD (Nesterov)", "learning_rate": ADAPT_LEARNING_RATE, "momentum": ADAPT_MOMENTUM,
              "crop_pad": CROP_PAD}
    store.write_json(os.path.join(out_dir, store.CLASSIFIER_INFO),
                     {"dataset": ds.name, "recipe": recipe, "history": history, "test_accuracy": acc,
                      "source": ds.source})
    echo(f"adapted-classifier: test clean accuracy {acc:.4f}")
    return {"adapted_classifier_test_accuracy": acc}


def _robust_accuracy(model_fn, x, y, attack) -> dict:
    from apudae_tf import attacks

    def acc(images):
        return float(np.mean(np.argmax(models.predict_in_batches(model_fn, images), 1) == y))

    return {"val_clean": acc(x), f"val_pgd{attack.steps}": acc(attacks.run_attack("pgd", model_fn, x, y, attack))}
