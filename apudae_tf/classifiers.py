"""Training the classifiers: the small CNN (Adam), the ResNets (SGD with a one-cycle rate, crop + flip),
and the classifier adapted to a purifier. All through ``model.fit`` on ``tf.data`` with the augmentation
in the graph, inside the distribution strategy, resumable (``fitting``).
"""

from __future__ import annotations

import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf

from apudae_tf import fitting, models, names, profiles, store
from apudae_tf.data import Dataset
from apudae_tf.errors import ApudaeError

RESNET_PEAK_LR = 0.2
RESNET_MOMENTUM = 0.9
RESNET_WEIGHT_DECAY = 5e-4
ONE_CYCLE_WARMUP = 0.3  # the share of the steps over which the rate climbs to its peak
CROP_PAD = 4
CLASSIFIER_BACKUP = ".classifier_backup"
ONE_CYCLE_RECIPE = {"peak_lr": RESNET_PEAK_LR, "momentum": RESNET_MOMENTUM, "weight_decay": RESNET_WEIGHT_DECAY,
                    "one_cycle_warmup": ONE_CYCLE_WARMUP, "crop_pad": CROP_PAD}
HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


def accuracy(classifier, x: np.ndarray, y: np.ndarray) -> float:
    logits = models.predict_in_batches(lambda b: classifier(b, training=False), x)
    return float(np.mean(np.argmax(logits, axis=1) == y))


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


def crop_flip(x, pad: int = CROP_PAD):
    """The standard CIFAR augmentation on a batch, in the graph: a random crop of the reflect-padded image
    and a horizontal flip with probability 1/2, drawn per image."""
    n, h, w = tf.shape(x)[0], x.shape[1], x.shape[2]
    padded = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    rows = tf.random.uniform([n, 1], 0, 2 * pad + 1, tf.int32) + tf.range(h)[None]
    cols = tf.random.uniform([n, 1], 0, 2 * pad + 1, tf.int32) + tf.range(w)[None]
    out = tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1)
    flip = tf.random.uniform([n, 1, 1, 1]) < 0.5
    return tf.where(flip, tf.reverse(out, [2]), out)


def batches(x, y, batch_size: int, seed: int, augment=None) -> tf.data.Dataset:
    """Shuffled (x, y) batches, reshuffled every epoch, ``augment`` applied in the graph."""
    data = (tf.data.Dataset.from_tensor_slices((x, y))
            .shuffle(len(x), seed=seed, reshuffle_each_iteration=True).batch(batch_size))
    if augment is not None:
        data = data.map(lambda a, b: (augment(a), b), num_parallel_calls=tf.data.AUTOTUNE)
    return data.prefetch(tf.data.AUTOTUNE)


def _compiled(model, optimizer):
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def one_cycle_sgd(model, n_train: int, settings):
    """SGD + Nesterov momentum with the one-cycle rate over the whole run and weight decay on the kernels
    only (not BatchNorm, biases or the standardisation), built for ``model``."""
    n_batches = -(-n_train // settings.batch_size)
    optimizer = keras.optimizers.SGD(OneCycle(RESNET_PEAK_LR, settings.epochs * n_batches), momentum=RESNET_MOMENTUM,
                                     nesterov=True, weight_decay=RESNET_WEIGHT_DECAY)
    optimizer.exclude_from_weight_decay(var_names=["_bn", "bias", "standardise"])
    return optimizer


def train_cnn(ds: Dataset, settings, dae=None, linf_max: float = 0.0, backup: str | None = None, echo=print,
              resume: bool = False) -> keras.Model:
    """The small CNN (logits out), Adam, on the train split, monitoring val.

    With a ``dae`` (the "stable classifier" of this project, not the paper's recipe) the training set is
    the clean images plus one DAE output per image, D(x̃) with x̃ drawn as for the DAE's own training
    (``denoisers.add_noise``), so the classifier learns on what purification hands it."""
    from apudae_tf.denoisers import add_noise

    keras.utils.set_random_seed(settings.seed)
    x, y = ds.x_train, ds.y_train
    if dae is not None:
        sigma_max = profiles.get(ds.name).sigma_max
        denoised = models.predict_in_batches(lambda b: models.denoise(dae, add_noise(b, sigma_max, linf_max)), x)
        x, y = np.concatenate([x, denoised]), np.concatenate([y, y])
    with fitting.strategy().scope():
        model = _compiled(models.build_mnist_classifier(ds.image_shape, ds.num_classes),
                          keras.optimizers.Adam(settings.learning_rate))
    data = batches(x, y, settings.batch_size, settings.seed)
    recipe = {**dataclasses.asdict(settings), "dae": dae is not None, "linf_max": linf_max}
    fitting.fit(model, data, settings.epochs, backup, recipe, "classifier", echo, resume,
                validation_data=(ds.x_val, ds.y_val), keys=HISTORY_KEYS)
    return model


def train_resnet(ds: Dataset, out_dir: str, settings, echo=print, resume: bool = False) -> dict:
    """A ResNet classifier (``settings.arch``) trained from scratch with SGD + Nesterov momentum, weight
    decay, a one-cycle rate and crop + flip. Resumable from ``out_dir``/.classifier_backup. Writes
    classifier.keras and classifier.json (recipe, history, test accuracy)."""
    keras.utils.set_random_seed(settings.seed)
    with fitting.strategy().scope():
        model = models.build_classifier(settings.arch, ds.image_shape, ds.num_classes)
        _compiled(model, one_cycle_sgd(model, len(ds.x_train), settings))
    recipe = {**dataclasses.asdict(settings), **ONE_CYCLE_RECIPE}
    history = fitting.fit(model, batches(ds.x_train, ds.y_train, settings.batch_size, settings.seed, crop_flip),
                          settings.epochs, os.path.join(out_dir, CLASSIFIER_BACKUP), recipe, "classifier", echo, resume,
                          validation_data=(ds.x_val, ds.y_val), keys=HISTORY_KEYS)
    acc = _save_classifier(model, ds, out_dir, recipe, history, CLASSIFIER_BACKUP)
    echo(f"classifier: test accuracy {acc:.4f}")
    return {"classifier_test_accuracy": acc}


def _save_classifier(model, ds: Dataset, out_dir: str, recipe: dict, history, backup: str) -> float:
    """classifier.keras and classifier.json (recipe, history, test accuracy) of a trained model; the backup
    goes. Returns the test accuracy."""
    store.save_model(model, os.path.join(out_dir, store.CLASSIFIER))
    acc = accuracy(model, ds.x_test, ds.y_test)
    store.write_json(os.path.join(out_dir, store.CLASSIFIER_INFO),
                     {"dataset": ds.name, "recipe": recipe, "history": history, "test_accuracy": acc,
                      "source": ds.source})
    fitting.finish(os.path.join(out_dir, backup))
    return acc


def train_classifier_part(ds: Dataset, out_dir: str, settings, echo, recipe: str, resume: bool = False) -> dict:
    """The classifier of a model folder: the profile's architecture unless ``settings.arch``."""
    from apudae_tf.denoisers import linf_max

    arch = settings.arch or profiles.get(ds.name).arch
    if arch != "cnn":
        if recipe == "plus":
            raise ApudaeError("the plus recipe trains the small CNN only; use --recipe paper with --arch " + arch)
        return train_resnet(ds, out_dir, dataclasses.replace(settings, arch=arch), echo, resume)
    dae = None
    if recipe == "plus":  # learns on the outputs of the DAE in out_dir
        dae = store.load_models(out_dir, ds.image_shape, need=("dae",)).dae
    clf = train_cnn(ds, settings, dae=dae, linf_max=linf_max(ds.name, recipe),
                    backup=os.path.join(out_dir, CLASSIFIER_BACKUP), echo=echo, resume=resume)
    store.save_model(clf, os.path.join(out_dir, store.CLASSIFIER))
    fitting.finish(os.path.join(out_dir, CLASSIFIER_BACKUP))
    acc = accuracy(clf, ds.x_test, ds.y_test)
    echo(f"classifier: test accuracy {acc:.4f}")
    return {"classifier_test_accuracy": acc}


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
ADAPT_BACKUP = ".adapted_backup"
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


def mixed_batches(x, y, purified, batch_size: int, seed: int, share: float = ADAPT_PURIFIED_SHARE):
    """Shuffled batches in which each image is, with probability ``share``, replaced by its purified copy
    from a random one of the V variants (``purified``: [V, N, ...]), then cropped and flipped. The arrays
    stay in numpy (V copies of a training set exceed a graph constant); the draws and the augmentation are
    in the graph."""
    v = len(purified)

    def pick(idx, use, which):
        out = x[idx].copy()
        out[use] = purified[which[use], idx[use]]
        return out

    def batch(idx):
        n = tf.shape(idx)[0]
        use = tf.random.uniform([n]) < share
        which = tf.random.uniform([n], 0, v, tf.int32)
        images = tf.numpy_function(pick, [idx, use, which], tf.float32, stateful=False)
        images = tf.ensure_shape(images, [None, *x.shape[1:]])
        return crop_flip(images), tf.gather(y, idx)

    return (tf.data.Dataset.range(len(x)).shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
            .batch(batch_size).map(batch).prefetch(tf.data.AUTOTUNE))


def train_adapted_classifier(ds: Dataset, base_dir: str, out_dir: str, variants: list[str], settings,
                             echo=print, resume: bool = False) -> dict:
    """Fine-tune ``base_dir``'s classifier on its purifier's outputs (``mixed_batches``) with SGD (Nesterov)
    at a fixed rate. Writes ``out_dir``/classifier.keras and classifier.json, and copies the base's DAE,
    statistics and purify settings beside it, so ``out_dir`` is a complete model folder (re-tune it: the
    classifier changed)."""
    if os.path.realpath(base_dir) == os.path.realpath(out_dir):
        raise ApudaeError("the adapted classifier needs its own --out folder, not the base model folder")
    base = store.load_models(base_dir, ds.image_shape)
    for v in variants:
        adapt_purifier(ds.name, base, v)  # a bad token fails before any work
    keras.utils.set_random_seed(settings.seed)
    store.copy_model_files(base_dir, out_dir, (store.DAE, store.DAE_STATS, store.PURIFY_SETTINGS))
    purified = _purified_training_images(ds, base, variants, os.path.join(out_dir, ADAPT_CACHE), echo)
    x_val, y_val = ds.x_val[:ADAPT_VAL_IMAGES], ds.y_val[:ADAPT_VAL_IMAGES]
    val_purified = {v: adapt_purifier(ds.name, base, v).purify_array(x_val) for v in variants}
    with fitting.strategy().scope():
        model = keras.models.clone_model(base.classifier)
        model.set_weights(base.classifier.get_weights())
        _compiled(model, keras.optimizers.SGD(ADAPT_LEARNING_RATE, momentum=ADAPT_MOMENTUM, nesterov=True))

    def validate():
        return {"val_clean": accuracy(model, x_val, y_val),
                **{f"val_{v}": accuracy(model, val_purified[v], y_val) for v in variants}}

    base_path = os.path.join(base_dir, store.CLASSIFIER)
    recipe = {**dataclasses.asdict(settings), "adapted_to": variants, "base": store.shown_path(base_path),
              "base_digest": store.file_digest(base_path), "purified_share": ADAPT_PURIFIED_SHARE,
              "optimizer": "SGD (Nesterov)", "learning_rate": ADAPT_LEARNING_RATE, "momentum": ADAPT_MOMENTUM,
              "crop_pad": CROP_PAD}
    history = fitting.fit(model, mixed_batches(ds.x_train, ds.y_train, purified, settings.batch_size, settings.seed),
                          settings.epochs, os.path.join(out_dir, ADAPT_BACKUP), recipe, "adapted-classifier", echo,
                          resume, extra=validate, keys=("loss",))
    acc = _save_classifier(model, ds, out_dir, recipe, history, ADAPT_BACKUP)
    echo(f"adapted-classifier: test clean accuracy {acc:.4f}")
    return {"adapted_classifier_test_accuracy": acc}
