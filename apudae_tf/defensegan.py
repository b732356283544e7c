"""Defense-GAN (Samangouei et al. 2018), the paper's strongest MNIST baseline: a WGAN-GP
generator G of clean images, and purification by projecting an input onto G's range.

Purification: for each input x, L random starts z ~ N(0, I), R steps of gradient descent with
momentum on ‖G(z) − x‖² (per pixel mean, as Defense-GAN's code), output G(z*) of the restart
with the lowest error. All restarts of a batch run as one [B·L] batch inside one tf.function.

Training: WGAN with gradient penalty (Gulrajani et al. 2017), n_critic critic steps per
generator step, Adam(1e-4, β = (0.5, 0.9)), checkpointed per epoch like every long training.
"""

from __future__ import annotations

import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from apudae_tf import models, store
from apudae_tf.defences import BaseDefence
from apudae_tf.errors import ApudaeError

LATENT_DIM = 128
GAN_FILE = store.GENERATOR
GAN_INFO = store.GENERATOR_INFO
GAN_CHECKPOINTS = ".gan_backup"
N_CRITIC = 5
GP_WEIGHT = 10.0
GAN_LEARNING_RATE = 1e-4
GAN_BETAS = (0.5, 0.9)


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """L restarts, R descent steps of size ``lr`` with ``momentum`` (Defense-GAN's defaults: L = 10,
    R = 200, learning rate 10 on the per-pixel mean error, momentum 0.7)."""

    restarts: int = 10
    steps: int = 200
    lr: float = 10.0
    momentum: float = 0.7
    seed: int = 0

    def check(self) -> SearchSettings:
        if self.restarts < 1 or self.steps < 0 or not (self.lr > 0) or not (0 <= self.momentum < 1):
            raise ApudaeError(f"bad Defense-GAN settings: {self}")
        return self


def tuned_search(folder: str) -> SearchSettings:
    """The search settings chosen on validation (``apudae-tf tune --defense-gan`` writes them to
    ``folder``/generator.json), else Defense-GAN's defaults."""
    import json

    path = os.path.join(folder, GAN_INFO)
    if not os.path.isfile(path):
        return SearchSettings()
    try:
        with open(path) as f:
            chosen = json.load(f).get("search", {}).get("settings")
        return SearchSettings(**chosen).check() if chosen else SearchSettings()
    except (ValueError, TypeError, AttributeError) as e:
        raise ApudaeError(f"{path}: unreadable search settings ({e})") from None


def save_search(folder: str, report: dict) -> None:
    """Record the search settings chosen on validation in ``folder``/generator.json."""
    import json

    path = os.path.join(folder, GAN_INFO)
    with open(path) as f:
        info = json.load(f)
    chosen = report["defense_gan"]
    info["search"] = {"chosen_on": report["split"], "n_val": report["n"], "criterion": report["criterion"],
                      "attack": report["attack"], **{k: chosen[k] for k in ("settings", "val_clean", "val_pgd")}}
    store.write_json(path, info)


# -- the networks ----------------------------------------------------------------------------


def build_generator(image_shape=(28, 28, 1), latent_dim: int = LATENT_DIM, width: int = 64) -> keras.Model:
    """z -> image in [0, 1]: a dense layer to a quarter-size map, two stride-2 deconvolutions."""
    h, w, c = image_shape
    if h % 4 or w % 4:
        raise ApudaeError(f"the generator needs image sides divisible by 4; got {image_shape}")
    z = keras.Input(shape=(latent_dim,), name="z")
    x = layers.Dense((h // 4) * (w // 4) * 2 * width, name="project")(z)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    x = layers.Reshape((h // 4, w // 4, 2 * width))(x)
    x = layers.Conv2DTranspose(width, 5, 2, "same", name="up1")(x)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    x = layers.Conv2DTranspose(c, 5, 2, "same", activation="sigmoid", name="up2")(x)
    return keras.Model(z, x, name="generator")


def build_critic(image_shape=(28, 28, 1), width: int = 64) -> keras.Model:
    """image -> score; no BatchNorm (the gradient penalty is per sample)."""
    x_in = keras.Input(shape=image_shape, name="image")
    x = layers.LeakyReLU(0.2)(layers.Conv2D(width, 5, 2, "same")(x_in))
    x = layers.LeakyReLU(0.2)(layers.Conv2D(2 * width, 5, 2, "same")(x))
    return keras.Model(x_in, layers.Dense(1)(layers.Flatten()(x)), name="critic")


# -- purification: the latent search ---------------------------------------------------------


def _search(generator, x, z0, steps, lr, momentum):
    """R steps of momentum descent on the per-image mean of (G(z) − x)² from ``z0``; returns the
    final z and its per-image error. ``x`` is already repeated once per restart."""

    def error(z):
        return tf.reduce_mean(tf.square(generator(z, training=False) - x), axis=[1, 2, 3])

    def body(k, z, v):
        with tf.GradientTape() as tape:
            tape.watch(z)
            loss = tf.reduce_sum(error(z))  # images are independent: the sum's gradient is per image
        v = momentum * v - lr * tape.gradient(loss, z)
        return k + 1, z + v, v

    _, z, _ = tf.while_loop(lambda k, z, v: k < steps, body, (tf.constant(0), z0, tf.zeros_like(z0)))
    return z, error(z)


class DefenseGan(BaseDefence):
    """``purify(x)`` = G(z*), z* the best of L restarts of the latent search.

    To the adaptive report it is a purifier like APuDAE's: random (each seed draws new restarts),
    attacked by BPDA+EOT only. The counter attacks target a DAE, and the exact gradient through
    L·R unrolled generator steps is beyond a CPU budget."""

    variant = "defense-gan"
    model_key = "generator"  # the model file whose digest keys its attacks' examples
    is_random = True
    # no ``function``: attacks see the search forward and the identity backward (BPDA), as ``gradient`` says
    attacks = ("bpda-eot", "apgd-ce", "apgd-dlr", "apgd-t", "square")

    def __init__(self, generator, settings: SearchSettings = SearchSettings()):
        self.generator, self.settings = generator, settings.check()
        self.latent_dim = int(generator.input_shape[-1])
        self._search = tf.function(_search_best, reduce_retracing=True)

    def purify(self, x, seed: int | None = None):
        s = self.settings
        x = tf.convert_to_tensor(x, tf.float32)
        seed = s.seed if seed is None else seed
        z0 = tf.random.stateless_normal([tf.shape(x)[0] * s.restarts, self.latent_dim], [seed, 7])
        return self._search(self.generator, x, z0, tf.constant(s.restarts), tf.constant(s.steps),
                            tf.constant(s.lr, tf.float32), tf.constant(s.momentum, tf.float32))

    def purify_array(self, x: np.ndarray, batch_size: int | None = None, progress=None,
                     seed: int | None = None) -> np.ndarray:
        seed = self.settings.seed if seed is None else seed
        out = []
        batch_size = batch_size or models.batch_for(x.shape[1:], models.GRADIENT_PIXELS)  # as Purifier's
        for i in range(0, len(x), batch_size):
            # batch i gets its own draws, the same whatever the batch size before it
            out.append(np.asarray(self.purify(x[i : i + batch_size], seed=seed + i)))
            if progress:
                progress(min(i + batch_size, len(x)))
        return np.concatenate(out) if out else np.zeros_like(x)


def _search_best(generator, x, z0, restarts, steps, lr, momentum):
    """Every restart of every image in one batch; keep each image's best restart."""
    b = tf.shape(x)[0]
    # image-major layout: rows i·L .. i·L + L − 1 are image i's restarts
    x_rep = tf.repeat(x, restarts, axis=0)
    z, err = _search(generator, x_rep, z0, steps, lr, momentum)
    best = tf.argmin(tf.reshape(err, [b, restarts]), axis=1, output_type=tf.int32)
    z_best = tf.gather(z, tf.range(b) * restarts + best)
    return generator(z_best, training=False)


# -- training: WGAN-GP -----------------------------------------------------------------------


class WGAN(keras.Model):
    """WGAN with gradient penalty (Gulrajani et al. 2017), trained by ``fit``: each batch holds ``n_critic``
    real batches; ``train_step`` takes one critic step on each, then one generator step."""

    def __init__(self, generator, critic, n_critic: int = N_CRITIC, gp_weight: float = GP_WEIGHT, **kwargs):
        super().__init__(**kwargs)
        self.generator, self.critic, self.n_critic, self.gp_weight = generator, critic, n_critic, gp_weight
        self.latent_dim = int(generator.input_shape[-1])
        self.w_dist = keras.metrics.Mean(name="w_dist")

    def compile(self, critic_optimizer, generator_optimizer):
        # the generator's optimizer is the model's own (saved with it, counting the steps); the critic's beside it
        super().compile(optimizer=generator_optimizer)
        self.critic_optimizer = critic_optimizer

    @property
    def metrics(self):
        return [self.w_dist]

    def call(self, z, training=False):
        return self.generator(z, training=training)

    def _critic_step(self, real, seed):
        n = tf.shape(real)[0]
        z = tf.random.stateless_normal([n, self.latent_dim], seed)
        eps = tf.random.stateless_uniform([n, 1, 1, 1], seed + 1)
        with tf.GradientTape() as tape:
            fake = self.generator(z, training=True)
            mixed = eps * real + (1 - eps) * fake
            with tf.GradientTape() as inner:
                inner.watch(mixed)
                score = self.critic(mixed, training=True)
            slopes = tf.sqrt(tf.reduce_sum(tf.square(inner.gradient(score, mixed)), axis=[1, 2, 3]) + 1e-12)
            gp = tf.reduce_mean(tf.square(slopes - 1.0))
            w_dist = tf.reduce_mean(self.critic(real, training=True)) - tf.reduce_mean(self.critic(fake, training=True))
            loss = -w_dist + self.gp_weight * gp
        variables = self.critic.trainable_variables
        self.critic_optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return w_dist

    def train_step(self, real):
        # stateless draws keyed by the step count: reproducible, and a resumed run continues the sequence
        base = tf.cast(self.optimizer.iterations, tf.int32) * (self.n_critic + 1)
        chunks = tf.split(real, self.n_critic)
        for j, chunk in enumerate(chunks):
            w_dist = self._critic_step(chunk, tf.stack([tf.constant(0), base + j]))
        z = tf.random.stateless_normal([tf.shape(chunks[0])[0], self.latent_dim],
                                       tf.stack([tf.constant(0), base + self.n_critic]))
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(self.critic(self.generator(z, training=True), training=True))
        variables = self.generator.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        self.w_dist.update_state(w_dist)
        return {"w_dist": self.w_dist.result()}


def train_gan(x_train: np.ndarray, out_dir: str, epochs: int, batch_size: int = 64, seed: int = 0, echo=print,
              resume: bool = False, dataset: str = "", source: str = "") -> dict:
    """Train G (and its critic) on ``x_train``; writes ``out_dir``/generator.keras and generator.json."""
    from apudae_tf import fitting

    keras.utils.set_random_seed(seed)
    shape = tuple(x_train.shape[1:])
    with fitting.strategy().scope():
        gan = WGAN(build_generator(shape), build_critic(shape))
        gan.compile(keras.optimizers.Adam(GAN_LEARNING_RATE, beta_1=GAN_BETAS[0], beta_2=GAN_BETAS[1]),
                    keras.optimizers.Adam(GAN_LEARNING_RATE, beta_1=GAN_BETAS[0], beta_2=GAN_BETAS[1]))
        gan(tf.zeros((1, LATENT_DIM)))  # built, as BackupAndRestore needs
        gan.critic(tf.zeros((1, *shape)))
        gan.critic_optimizer.build(gan.critic.trainable_variables)
        gan.optimizer.build(gan.generator.trainable_variables)
    recipe = {"batch_size": batch_size, "seed": seed, "latent_dim": LATENT_DIM, "n_critic": N_CRITIC,
              "gp_weight": GP_WEIGHT, "learning_rate": GAN_LEARNING_RATE, "betas": list(GAN_BETAS)}
    data = (tf.data.Dataset.from_tensor_slices(x_train).shuffle(len(x_train), seed=seed, reshuffle_each_iteration=True)
            .batch(batch_size * N_CRITIC, drop_remainder=True).prefetch(tf.data.AUTOTUNE))
    history = fitting.fit(gan, data, epochs, os.path.join(out_dir, GAN_CHECKPOINTS), recipe, "gan", echo, resume)
    store.save_model(gan.generator, os.path.join(out_dir, GAN_FILE))
    store.write_json(os.path.join(out_dir, GAN_INFO), {"dataset": dataset, "recipe": recipe, "epochs": epochs,
                                                       "history": history, "source": source})
    fitting.finish(os.path.join(out_dir, GAN_CHECKPOINTS))
    return {"generator_epochs": epochs}
