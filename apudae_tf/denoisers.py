"""Training the DAE (spec §1, paper eq. 5) and measuring its clean statistics (spec §2).

The noise is drawn per image inside the ``tf.data`` pipeline, so ``model.fit`` needs no custom step.
The recipes: ``paper`` (Gaussian noise), ``plus`` (half the images get random L∞-corner noise instead),
``adv-dae`` (the DAE also learns to map PGD examples of the classifier back to their clean images, after
HGD, Liao et al. 2018) and ``adv-mix`` (adv-dae plus full-ε FGSM examples).
"""

from __future__ import annotations

import dataclasses
import json
import os

import keras
import numpy as np
import tensorflow as tf

from apudae_tf import fitting, models, profiles, store
from apudae_tf.data import Dataset
from apudae_tf.imagefolder import FolderImages
from apudae_tf.tfdsimages import TfdsImages

# adv-dae: PGD examples of this many training images join the DAE's noisy pairs
ADV_DAE_IMAGES = 30000
# adv-mix: adv-dae's pairs plus full-ε FGSM examples of this many further training images. The
# adv-dae DAE saw only PGD, and one full-ε FGSM step is where its iterative variants fall short
# of the paper (results/mnist/val_attacks.json).
ADV_MIX_FGSM_IMAGES = 15000
ADVERSARIAL_RECIPES = ("adv-dae", "adv-mix")
# the attacks that make those pairs: (steps, step = ε / this, random start)
ADV_PAIR_ATTACKS = {"pgd": (20, 12, True), "fgsm": (1, 1, False)}
DAE_BACKUP = ".dae_backup"  # resumable training state, beside the model


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
                given: tuple[np.ndarray, np.ndarray] | None = None, patch: int = 0) -> tf.data.Dataset:
    """Shuffled (x̃, x) batches, x̃ = add_noise(x), drawn afresh each epoch.

    ``given`` = (inputs, targets) adds fixed pairs that get no noise: the adv-dae recipe's
    adversarial examples and their clean images. An image folder (``FolderImages``) or a prepared
    tfds split (``TfdsImages``) is streamed instead of held in memory, as random ``patch`` x ``patch``
    crops (random flips) when ``patch`` > 0."""
    if isinstance(x, (FolderImages, TfdsImages)):
        return _streamed_pairs(x, sigma_max, batch_size, seed, linf_max, patch)
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


def _streamed_pairs(x, sigma_max: float, batch_size: int, seed: int, linf_max: float,
                    patch: int) -> tf.data.Dataset:
    def crop(img):
        if patch:
            img = tf.image.random_crop(img, [patch, patch, 3])
        return tf.image.random_flip_left_right(img)

    def pair(clean):
        return add_noise(clean, sigma_max, linf_max), clean

    return (x.images(seed)
            .map(crop, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size)
            .map(pair, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


def adversarial_pairs(model_fn, ds: Dataset, n: int, seed: int, progress=None, method: str = "pgd",
                      start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(adversarial examples, clean images) for training images ``start`` to ``start + n``: the
    adv-dae and adv-mix recipes.

    ``pgd``: PGD at the profile's ε, 20 steps of ε/12 with a random start; ``fgsm``: one step of
    ε. Both on the classifier ``model_fn`` (x -> logits) alone. PGD-20 is a weaker and different
    schedule from the evaluation's PGD-40 (MNIST), and only training images are attacked, so the
    evaluation's test and validation images are never seen."""
    from apudae_tf import attacks

    x, y = ds.x_train[start:start + n], ds.y_train[start:start + n]
    eps = profiles.get(ds.name).threat.eps
    steps, step_divisor, rand_init = ADV_PAIR_ATTACKS[method]
    settings = attacks.AttackSettings(eps=eps, steps=steps, step=eps / step_divisor, rand_init=rand_init, seed=seed)
    return attacks.run_attack(method, model_fn, x, y, settings, batch_size=1000, progress=progress), x


def train_dae(x_train: np.ndarray, x_val: np.ndarray, sigma_max: float, settings, filters: int | None = None,
              linf_max: float = 0.0, given: tuple[np.ndarray, np.ndarray] | None = None, backup: str | None = None,
              echo=print, resume: bool = False, arch: str = "table1", patch: int = 0) -> keras.Model:
    """Train a DAE (``arch``: the Table-1 DAE or the U-Net, spec §1) on noisy inputs, mse to the clean image
    (eq. 5); plus ``given`` pairs. Built and trained inside the distribution strategy; resumable from
    ``backup`` (a temporary folder). ``filters``: the architecture's own width when None; ``patch``: train
    on random crops of that size (image folders)."""
    keras.utils.set_random_seed(settings.seed)
    shape = tuple(x_train.shape[1:])
    with fitting.precision(settings.mixed_precision):
        with fitting.strategy().scope():
            dae = models.build_denoiser(arch, shape, filters)
            dae.compile(optimizer=keras.optimizers.Adam(settings.learning_rate), loss="mse")
        data = noisy_pairs(x_train, sigma_max, settings.batch_size, settings.seed, linf_max, given, patch)
        val = noisy_pairs(x_val, sigma_max, settings.batch_size, settings.seed + 1, linf_max, patch=patch)
        recipe = {**dataclasses.asdict(settings), "filters": filters, "arch": arch, "patch": patch,
                  "sigma_max": sigma_max, "linf_max": linf_max, "given": 0 if given is None else len(given[0])}
        fitting.fit(dae, data, settings.epochs, backup, recipe, "dae", echo, resume, validation_data=val)
    if settings.mixed_precision:
        # the same weights (float32 variables) in a float32 model: the purification's maths stays float32
        with fitting.strategy().scope():
            f32 = models.build_denoiser(arch, shape, filters)
        f32.set_weights(dae.get_weights())
        dae = f32
    return dae


def clean_error_stats(dae, x_val: np.ndarray) -> tuple[float, float]:
    """μ and σ of r(x) over clean validation images (spec §2)."""
    r = models.reconstruction_errors(dae, x_val)
    return float(np.mean(r)), float(np.std(r))


def _adversarial_part(model_fn, ds: Dataset, method: str, start: int, n: int, seed: int, recipe: str, echo,
                      progress_bar):
    label = f"dae: {method.upper()} examples of {n} training images ({recipe})"
    if progress_bar is None:
        echo(label)
        return adversarial_pairs(model_fn, ds, n, seed, method=method, start=start)
    with progress_bar(n, label) as bar:
        return adversarial_pairs(model_fn, ds, n, seed, progress=lambda done: bar.update(done - bar.pos),
                                 method=method, start=start)


def linf_max(dataset: str, recipe: str) -> float:
    """The plus recipe's L∞-corner noise for a dataset (0 for the other recipes)."""
    return profiles.get(dataset).linf_max if recipe == "plus" else 0.0


def train_dae_part(ds: Dataset, out_dir: str, settings, echo, recipe: str, progress_bar, resume: bool = False) -> dict:
    """The DAE of a model folder, with its clean statistics (dae.keras, dae_stats.json)."""
    sigma_max, linf = profiles.get(ds.name).sigma_max, linf_max(ds.name, recipe)
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
    arch = profiles.get(ds.name).dae_arch
    filters = settings.dae_filters or models.DAE_ARCH_FILTERS[arch]
    dae = train_dae(ds.x_train, ds.x_val, sigma_max, settings, filters=filters, linf_max=linf,
                    given=given, backup=os.path.join(out_dir, DAE_BACKUP), echo=echo, resume=resume, arch=arch,
                    patch=profiles.get(ds.name).train_patch)
    mu, sigma = clean_error_stats(dae, ds.x_val)
    stats = store.DaeStats(
        mu=mu,
        sigma=sigma,
        sigma_max=sigma_max,
        image_shape=ds.image_shape,
        dataset=ds.name,
        training={**dataclasses.asdict(settings), "filters": filters, "arch": arch,
                  "dropout": models.DAE_DROPOUT,
                  "recipe": recipe, "linf_max": linf, "adversarial_images": 0 if given is None else len(given[0]),
                  "stats_split": "val", "source": ds.source},
    )
    store.save_model(dae, os.path.join(out_dir, store.DAE))
    store.write_json(os.path.join(out_dir, store.DAE_STATS), stats.to_json())
    fitting.finish(os.path.join(out_dir, DAE_BACKUP))
    echo(f"dae: clean validation r(x) mean {mu:.4f}, std {sigma:.4f} (sigma_max {sigma_max}, linf_max {linf})")
    return {"dae_mu": mu, "dae_sigma": sigma}


# -- denoisers for randomized smoothing (docs/certify.md §2) ------------------------------------------
# Denoised smoothing (Salman et al. 2020): a denoiser D trained for one noise level σ is put in front of the
# frozen classifier f, and the smoothed classifier votes over f(D(x + δ)), δ ~ N(0, σ²I). Two stages on
# ``fit``: MSE to the clean image (eq. 5 at a fixed σ, without eq. 5's clipping: the smoothing noise is
# not clipped), then the stability objective, cross-entropy between f(D(x + δ)) and f(x)'s label.
SMOOTHING_STAGES = ("mse", "stability")
SMOOTHING_LEARNING_RATE = {"mse": 1e-3, "stability": 3e-4}  # Adam, cosine decay to 0 over the stage (choice)


def gaussian_noise(x, sigma: float, seed=None):
    """x + δ, δ ~ N(0, σ²I) in the classifier's [0, 1] input space, not clipped (docs/certify.md eq. S1)."""
    return x + sigma * tf.random.normal(tf.shape(x), seed=seed, dtype=x.dtype)


def smoothing_batches(x, targets, sigma: float, batch_size: int, seed: int) -> tf.data.Dataset:
    """Shuffled (x + δ, target) batches with fresh δ each epoch: the target is the clean image (MSE) or
    f(x)'s label (stability)."""
    return (tf.data.Dataset.from_tensor_slices((x, targets))
            .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
            .batch(batch_size)
            .map(lambda a, t: (gaussian_noise(a, sigma), t), num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


def smoothing_denoiser_file(sigma: float, stage: str) -> str:
    """The file of the denoiser for σ trained up to ``stage`` (``mse`` or ``stability``), inside a model
    folder's ``smoothing/``."""
    return f"sigma{sigma:g}-{stage}.keras"


def _cosine_adam(rate: float, steps: int):
    return keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(rate, max(1, steps)))


def _with_classifier(dae, classifier):
    """x̃ -> f(clip(D(x̃), 0, 1)) with f frozen in inference mode: the base classifier of denoised smoothing,
    as one Keras model so that the stability stage trains on ``fit``."""
    classifier.trainable = False
    x = keras.Input(shape=dae.input_shape[1:], name="noisy")
    logits = classifier(keras.ops.clip(dae(x), 0.0, 1.0), training=False)
    return keras.Model(x, keras.ops.cast(logits, "float32"), name="denoised_classifier")


def train_smoothing_denoiser(ds: Dataset, out_dir: str, sigma: float, settings, classifier, *, echo=print,
                             resume: bool = False, filters: int = 32, stages: int = 4,
                             stability_epochs: int = 0, on_record=None, recorded=None) -> dict:
    """The MSE denoiser for σ (``settings.epochs``), then, from it, the stability denoiser
    (``stability_epochs``; 0: none), both saved in ``out_dir``/smoothing/. Each stage resumes from its own
    backup folder; a finished stage's file is not trained again. Returns each stage's record (recipe,
    history, noisy validation accuracy of f(D(x + δ))), and hands each to ``on_record(stage, record)`` as
    the stage finishes, so a run cut off later keeps it. A stage found finished but not among ``recorded``
    (the stages whose records the caller holds; None: all) gets its accuracy measured again."""
    folder = os.path.join(out_dir, store.SMOOTHING_DIR)
    shape = tuple(ds.image_shape)
    keras.utils.set_random_seed(settings.seed)
    # an image folder (ImageNet's 800 training images: 0.5 GB at 224 px) is decoded once, here
    x_train = np.asarray(ds.x_train, np.float32)
    labels = np.argmax(models.predict_in_batches(models.inference_fn(classifier), x_train), axis=1)
    x_val, y_val = np.asarray(ds.x_val[:SMOOTHING_VAL_IMAGES], np.float32), ds.y_val[:SMOOTHING_VAL_IMAGES]
    records, dae = {}, None
    for stage, epochs in (("mse", settings.epochs), ("stability", stability_epochs)):
        path = os.path.join(folder, smoothing_denoiser_file(sigma, stage))
        if epochs <= 0:
            continue
        if os.path.isfile(path):
            echo(f"smoothing σ={sigma:g}: {stage} denoiser already in {path}; kept")
            dae = store.load_model(path)
            if recorded is not None and stage not in recorded:
                records[stage] = {"file": os.path.basename(path), "recipe": None, "history": None,
                                  "val_noisy_accuracy": noisy_accuracy(dae, classifier, x_val, y_val, sigma, settings.seed),
                                  "note": "the run that trained it was cut off before its record was written: the "
                                          "accuracy was measured again from the file, its recipe and history are lost"}
                if on_record is not None:
                    on_record(stage, records[stage])
            continue
        backup = os.path.join(folder, f".sigma{sigma:g}-{stage}_backup")
        rate = SMOOTHING_LEARNING_RATE[stage]
        steps = epochs * -(-len(x_train) // settings.batch_size)
        with fitting.precision(settings.mixed_precision):
            with fitting.strategy().scope():
                net = models.build_residual_unet(shape, filters, stages)
                if dae is not None:
                    net.set_weights(dae.get_weights())
                if stage == "mse":
                    model, targets, loss = net, x_train, "mse"
                else:
                    model = _with_classifier(net, classifier)
                    targets, loss = labels, keras.losses.SparseCategoricalCrossentropy(from_logits=True)
                model.compile(optimizer=_cosine_adam(rate, steps), loss=loss)
            recipe = {**dataclasses.asdict(settings), "epochs": epochs, "sigma": sigma, "stage": stage,
                      "arch": "residual-unet", "filters": filters, "stages": stages, "learning_rate": rate,
                      "schedule": "cosine", "from": "scratch" if dae is None else "mse"}

            def validate(net=net):
                return {"val_noisy_accuracy": noisy_accuracy(net, classifier, x_val, y_val, sigma, settings.seed)}

            history = fitting.fit(model, smoothing_batches(x_train, targets, sigma, settings.batch_size,
                                                           settings.seed),
                                  epochs, backup, recipe, f"smoothing σ={sigma:g} {stage}", echo, resume,
                                  extra=validate, keys=("loss",))
        with fitting.strategy().scope():  # float32 variables and maths, whatever the training's precision
            dae = models.build_residual_unet(shape, filters, stages)
        dae.set_weights(net.get_weights())
        store.save_model(dae, path)
        fitting.finish(backup)
        records[stage] = {"recipe": recipe, "history": history, "file": os.path.basename(path),
                          "val_noisy_accuracy": history[-1]["val_noisy_accuracy"] if history else None}
        if on_record is not None:
            on_record(stage, records[stage])
        echo(f"smoothing σ={sigma:g}: {stage} denoiser -> {path}")
    return records


SMOOTHING_VAL_IMAGES = 1000  # the noisy validation accuracy printed after each epoch


def noisy_accuracy(dae, classifier, x, y, sigma: float, seed: int) -> float:
    """Accuracy of f(clip(D(x + δ), 0, 1)) (of f(x + δ) when ``dae`` is None) on one noise draw per image: the
    training's progress measure, on validation images."""
    rng = tf.random.Generator.from_seed(seed)

    def fn(b):
        noisy = b + sigma * rng.normal(tf.shape(b))
        return classifier(noisy if dae is None else models.denoise(dae, noisy), training=False)

    return float(np.mean(np.argmax(models.predict_in_batches(fn, x), axis=1) == y))


def train_smoothing_part(ds: Dataset, out_dir: str, settings, *, echo, resume: bool, base_dir: str,
                         sigmas=None, stability_epochs: int | None = None) -> dict:
    """The smoothing denoisers of a model folder (``out_dir``/smoothing/): for each σ of ``sigmas`` (default:
    the profile's), the MSE denoiser and its stability fine-tune against ``base_dir``'s classifier, frozen.
    Their records join ``smoothing/denoisers.json``."""
    profile = profiles.get(ds.name)
    sigmas = tuple(sigmas or profile.smoothing_sigmas)
    base_path = os.path.join(base_dir, store.CLASSIFIER)
    classifier = store.load_models(base_dir, ds.image_shape, need=("classifier",)).classifier
    if stability_epochs is None:
        stability_epochs = profile.epochs.get("smoothing-stability", profiles.DEFAULT_EPOCHS["smoothing-stability"])
    info_path = os.path.join(out_dir, store.SMOOTHING_DIR, store.SMOOTHING_INFO)
    info = read_smoothing_info(os.path.join(out_dir, store.SMOOTHING_DIR))
    arch = dict(profile.smoothing_denoiser)
    info.update({"dataset": ds.name, "image_shape": list(ds.image_shape), "arch": "residual-unet", **arch})
    known = info.setdefault("denoisers", {})
    provenance = {"classifier": store.shown_path(base_path), "classifier_digest": store.file_digest(base_path),
                  "source": ds.source}
    for sigma in sigmas:
        def keep(stage, record, sigma=sigma):
            """denoisers.json gains a stage's record as the stage finishes."""
            known[smoothing_denoiser_file(sigma, stage)] = {**record, **provenance}
            store.write_json(info_path, info)

        train_smoothing_denoiser(ds, out_dir, sigma, settings, classifier, echo=echo, resume=resume,
                                 stability_epochs=stability_epochs, on_record=keep, **arch,
                                 recorded={s for s in SMOOTHING_STAGES if smoothing_denoiser_file(sigma, s) in known})
    return {"smoothing_denoisers": sorted(known)}


def read_smoothing_info(folder: str) -> dict:
    """``folder``/denoisers.json, or an empty record when there is none yet."""
    path = os.path.join(folder, store.SMOOTHING_INFO)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)
