"""The purification engine (spec §3): one loop, variants as small pieces.

Every iterative variant runs the same ``tf.while_loop`` (spec §3, "x_0 = x_in, n iterations,
return clip(x_n, 0, 1)"):

    x ← T(x_in)                                    transform   (G)
    repeat n times:
        x ← x + U(−η_i, η_i)                        noise rule  (F, G; eq. 12)
        g ← ∇_x Σ_i loss_i(r(x_i))                  loss        (A–G)
        x ← step(x, g), per-image lr scale           step rule   (sign: A; Adam: B–G; Φ-scaled: C)
        x ← clip(x, 0, 1)

A ``Variant`` names its loss, step rule, learning-rate rule, noise rule and
transform; nothing else differs between variants. Per-image quantities stay
per image: the batch loss is a sum of per-image losses, the DAE runs in
inference mode, and Adam is element-wise, so each image's update depends on
that image alone (F's and G's noise is drawn for the whole batch from one seed,
so it depends on the image's place in the batch).

Adam is Keras' update written as tensors (not an optimizer with variables), so
the loop is a pure function of its input: compiled once for every batch size,
traced into the SavedModel, and differentiable by the attacks of spec §5.

Choice (recorded): x is clipped to [0, 1] after every step for all variants
(the spec clips each step for A and at the end for B–G); it keeps the DAE's
input in the domain it was trained on and changes no image that stays inside.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import tensorflow as tf

from apudae_tf import fitting, models, names, profiles
from apudae_tf.defences import BaseDefence
from apudae_tf.errors import ApudaeError
from apudae_tf.store import DaeStats

VARIANTS = names.PURIFY_VARIANTS


@dataclasses.dataclass(frozen=True)
class PurifySettings:
    """n iterations, step/learning rate α, noise ε_r (F, G), transform ρ and θ_max in degrees (G)."""

    n: int = 20
    alpha: float = 0.01
    eps_r: float = 0.0
    rho: float = 0.1
    theta_max: float = 10.0
    seed: int = 0

    def check(self) -> PurifySettings:
        for option, value, ok, allowed in (("--n", self.n, self.n >= 0, ">= 0"), ("--alpha", self.alpha, self.alpha >= 0, ">= 0"),
                                           ("--eps-r", self.eps_r, self.eps_r >= 0, ">= 0"),
                                           ("--rho", self.rho, 0 <= self.rho < 1, "[0, 1)"),
                                           ("--theta-max", self.theta_max, 0 <= self.theta_max <= 180, "[0, 180]")):
            if not ok:  # NaN fails too
                raise ApudaeError(f"purification setting {option} {value:g} is outside {allowed}")
        return self


def default_settings(dataset: str, variant: str, model_dir: str | None = None) -> PurifySettings:
    """Settings tuned for these models (model_dir/purify_settings.json, written by `apudae-tf tune` from a
    sweep on the validation split), else the dataset profile's fallback (CIFAR-10's: the paper's)."""
    import json
    import os

    from apudae_tf.store import PURIFY_SETTINGS

    path = os.path.join(model_dir, PURIFY_SETTINGS) if model_dir else None
    if path and os.path.isfile(path):
        with open(path) as f:
            tuned = json.load(f).get("variants", {})
        if variant in tuned:
            try:
                return PurifySettings(**tuned[variant]["settings"]).check()
            except (TypeError, KeyError) as e:
                raise ApudaeError(f"{path}: bad settings for variant {variant} ({e})") from None
    return PurifySettings(**profiles.get(dataset).purify_fallback).check()


# -- per-variant pieces ----------------------------------------------------------------------
# Each loss maps per-image r (shape [B]) to a per-image loss; μ, σ from the clean statistics.


def loss_r(r, mu, sigma):
    """A, B, C: minimise r itself (eqs. 8–10)."""
    return r


def loss_target(r, mu, sigma):
    """D: pull r towards the clean mean, (r − μ)² / σ² (eq. 11)."""
    return tf.square(r - mu) / sigma**2


def loss_one_sided(r, mu, sigma):
    """E, F, G: only push r down to μ, max(r − μ, 0)² / σ²; images already below μ get no gradient."""
    return tf.square(tf.nn.relu(r - mu)) / sigma**2


def lr_constant(r0, mu, sigma):
    return tf.ones_like(r0)


def lr_from_error(r0, mu, sigma):
    """C: per-image learning-rate factor Φ((r(x_in) − μ)/σ), Φ the standard normal CDF (eq. 10)."""
    return 0.5 * (1.0 + tf.math.erf((r0 - mu) / (sigma * math.sqrt(2.0))))


def noise_amplitude(r, mu, sigma, eps_r):
    """F, G: η_i = ε_r · clip(((r_i − μ)/(2σ))², 0, 4) (eq. 12)."""
    return eps_r * tf.clip_by_value(tf.square((r - mu) / (2.0 * sigma)), 0.0, 4.0)


def random_transform(x, rho, theta_max_deg, seed):
    """G: per image, scale by s ~ U(1−ρ, 1+ρ) about the centre (resize, then crop/pad back) and
    rotate by θ ~ U(−θ_max, θ_max) (eq. 13); one bilinear projective warp, edges filled by nearest."""
    b = tf.shape(x)[0]
    h, w = tf.cast(tf.shape(x)[1], tf.float32), tf.cast(tf.shape(x)[2], tf.float32)
    s = tf.random.stateless_uniform([b], [seed, 101], 1.0 - rho, 1.0 + rho)
    theta = tf.random.stateless_uniform([b], [seed, 102], -theta_max_deg, theta_max_deg)
    theta = theta * (math.pi / 180.0)
    # the warp maps output pixel (u, v) to input (x, y): inverse of scale-then-rotate about the centre
    cos, sin = tf.cos(theta) / s, tf.sin(theta) / s
    cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
    a0, a1, b0, b1 = cos, sin, -sin, cos
    a2 = cx - a0 * cx - a1 * cy
    b2 = cy - b0 * cx - b1 * cy
    zeros = tf.zeros_like(s)
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=x, transforms=transforms, output_shape=tf.shape(x)[1:3], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="NEAREST",
    )



@dataclasses.dataclass(frozen=True)
class Variant:
    loss: callable
    sign_step: bool = False  # A: x ← x − α·sign(g); otherwise Adam(lr = α)
    lr_rule: callable = lr_constant
    noise: bool = False
    transform: bool = False


VARIANT_PIECES = {
    "A": Variant(loss_r, sign_step=True),
    "B": Variant(loss_r),
    "C": Variant(loss_r, lr_rule=lr_from_error),
    "D": Variant(loss_target),
    "E": Variant(loss_one_sided),
    "F": Variant(loss_one_sided, noise=True),
    "G": Variant(loss_one_sided, noise=True, transform=True),
}
# the variants that draw noise (or a transform) per call: attacks average over their draws (EOT)
RANDOM_VARIANTS = tuple(v for v, p in VARIANT_PIECES.items() if p.noise or p.transform)


# -- the loop --------------------------------------------------------------------------------

# tf.keras.optimizers.Adam's defaults and its update, written as tensors (Keras 3's Adam.update_step:
# m += (g − m)(1 − β1); v += (g² − v)(1 − β2); x −= m·α_t / (√v + ε̂), α_t = α·√(1 − β2^t)/(1 − β1^t))
ADAM_BETA_1, ADAM_BETA_2, ADAM_EPSILON = 0.9, 0.999, 1e-7


def _sqrt_with_finite_gradient(v):
    """√v, bitwise, whose derivative is 0 instead of ∞ at v = 0: E–G leave images below μ with a zero
    gradient, so their Adam second moment stays 0, and an attack differentiating the loop would
    otherwise meet ∞·0."""
    positive = v > 0
    return tf.where(positive, tf.sqrt(tf.where(positive, v, tf.ones_like(v))), tf.zeros_like(v))


def _stepwise_gradient(step, lr_of, x0, n):
    """The purification loop run forward keeping only each step's state (x_t, m_t, v_t), with a custom
    gradient that walks the steps backwards, recomputing each under a tape for its vector-Jacobian
    product (checkpointing at every step). The exact gradient of the plain loop, with the memory of one
    step's activations instead of n.

    ``step(k, x, m, v, lr_scale) -> (x, m, v)`` is a pure function of its arguments and the seed (the
    noise is stateless), so the recomputation repeats the forward pass exactly; ``lr_of(x0)`` is C's
    per-image learning-rate scale, differentiated at the end. ``tf.recompute_grad`` cannot do this: it
    runs the forward pass with recording stopped, which also stops the step's own tape (the DAE gradient
    that the purification descends), and a custom gradient inside the loop body reads the DAE's weights
    where ``tf.while_loop``'s gradient cannot capture them."""
    n = tf.cast(n, tf.int64)

    @tf.custom_gradient
    def run(x0):
        lr = lr_of(x0)
        zeros = tf.zeros_like(x0)

        def stored():
            return tf.TensorArray(x0.dtype, size=tf.cast(n, tf.int32), element_shape=x0.shape)

        def forward(k, x, m, v, xs, ms, vs):
            i = tf.cast(k, tf.int32)
            return (k + 1, *step(k, x, m, v, lr), xs.write(i, x), ms.write(i, m), vs.write(i, v))

        _, x, _, _, xs, ms, vs = tf.while_loop(lambda k, *_: k < n, forward,
                                               (tf.constant(0, tf.int64), x0, zeros, zeros, stored(), stored(),
                                                stored()))

        def grad(dx, variables=None):
            def backward(k, dx, dm, dv, dlr):
                k = k - 1
                i = tf.cast(k, tf.int32)
                xk, mk, vk = xs.read(i), ms.read(i), vs.read(i)
                with tf.GradientTape() as tape:
                    tape.watch([xk, mk, vk, lr])
                    out = step(k, xk, mk, vk, lr)
                gx, gm, gv, gl = tape.gradient(out, [xk, mk, vk, lr], output_gradients=[dx, dm, dv],
                                               unconnected_gradients=tf.UnconnectedGradients.ZERO)
                return k, gx, gm, gv, dlr + gl

            # One iteration at a time: each step's recomputation depends only on its stored state, so with
            # the default parallel_iterations (10) the executor would run ten of them ahead of the chained
            # vector-Jacobian products and hold their activations, the memory this function exists to save.
            _, dx0, _, _, dlr = tf.while_loop(lambda k, *_: k > 0, backward,
                                              (n, dx, tf.zeros_like(dx), tf.zeros_like(dx), tf.zeros_like(lr)),
                                              parallel_iterations=1)
            with tf.GradientTape() as tape:
                tape.watch(x0)
                scale = lr_of(x0)
            dx0 += tape.gradient(scale, x0, output_gradients=dlr, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            # the attacks differentiate with respect to the image, never the DAE's weights
            return dx0, [None] * len(variables or ())

        return x, grad

    return run(x0)


class Purifier(BaseDefence):
    """Purify batches with one variant.

    ``function(x, seed)`` is the purification: one ``tf.while_loop`` over the pieces of the
    variant, a plain differentiable TensorFlow function of x. ``purify`` is that function compiled
    once for any batch size (batch dimension ``None``; the settings are tensors, so changing them
    does not retrace either); the SavedModel export traces it into its graph; the attacks that see
    the defence (spec §5) differentiate it under an outer tape (second order through the loop's own
    gradients). There is no second copy of the maths.

    With ``jit_compile=True`` the loop is XLA-compiled; F and G then draw different (still seeded,
    reproducible) noise, since XLA's stateless RNG kernels differ from TF's.

    With ``checkpoint=True`` the loop keeps only each step's state and its gradient recomputes the
    steps one at a time (``_stepwise_gradient``): the memory of the exact adaptive attack no longer grows
    with the DAE's activations × n. Values and gradients are the same; the backward pass costs about one
    more forward pass per step. For 224-px images and the U-Net (docs/imagenet.md).
    """

    model_key = "dae"  # the model file whose digest keys its attacks' examples
    # every attack of spec §5 applies, and the AutoAttack-grade ones through ``function``'s exact gradient
    attacks = names.ADAPTIVE_METHODS + names.ENSEMBLE_METHODS

    def __init__(self, dae, stats: DaeStats, variant: str, settings: PurifySettings | None = None,
                 jit_compile: bool = False, checkpoint: bool = False):
        if variant not in VARIANTS:
            raise ApudaeError(f"unknown purification variant {variant!r}; use one of {', '.join(VARIANTS)}")
        self.dae, self.stats, self.variant = dae, stats, variant
        self.settings = (settings or PurifySettings()).check()
        self.pieces = VARIANT_PIECES.get(variant)
        self._mu = tf.constant(stats.mu, tf.float32)
        self._sigma = tf.constant(max(stats.sigma, 1e-12), tf.float32)
        self.jit_compile, self.checkpoint = jit_compile, checkpoint
        shape = tuple(None if d is None else int(d) for d in dae.input_shape[1:])  # the U-Net takes any size
        scalar = tf.TensorSpec([], tf.float32)
        signature = [tf.TensorSpec([None, *shape], tf.float32), tf.TensorSpec([], tf.int64),
                     tf.TensorSpec([], tf.int32), scalar, scalar, scalar, scalar]
        # G's warp (ImageProjectiveTransformV3) has no XLA kernel: under XLA only the loop is compiled
        loop = tf.function(self._loop, jit_compile=True) if jit_compile else self._loop
        self._compiled = tf.function(functools.partial(self._graph, loop=loop), input_signature=signature)

    def r(self, x):
        return models.reconstruction_error(self.dae, x)

    @property
    def is_random(self) -> bool:
        """F and G draw noise (and G a transform) per call; the others are deterministic."""
        return self.variant in RANDOM_VARIANTS

    def _settings_tensors(self):
        s = self.settings
        return (tf.constant(s.n, tf.int32), tf.constant(s.alpha, tf.float32), tf.constant(s.eps_r, tf.float32),
                tf.constant(s.rho, tf.float32), tf.constant(s.theta_max, tf.float32))

    def _seed(self, seed):
        return tf.cast(self.settings.seed if seed is None else seed, tf.int64)

    def function(self, x, seed=None):
        """The purification of a batch (spec §3) as a differentiable function of ``x``.

        Float32, or float64 for a finite-difference check (the DAE built in float64)."""
        x = tf.cast(x, self.dae.compute_dtype)
        return self._graph(x, self._seed(seed), *self._settings_tensors())

    def _graph(self, x, seed, n, alpha, eps_r, rho, theta_max, loop=None):
        if self.pieces is None:
            return models.denoise(self.dae, x)
        if self.pieces.transform:
            x = random_transform(x, rho, theta_max, seed)
        return (loop or self._loop)(x, seed, n, alpha, eps_r)

    def _loop(self, x, seed, n, alpha, eps_r):
        """x_0 = x, then n steps of noise (F, G), the loss's gradient, the step rule and the clip."""
        p = self.pieces
        mu, sigma = tf.cast(self._mu, x.dtype), tf.cast(self._sigma, x.dtype)
        alpha, eps_r = tf.cast(alpha, x.dtype), tf.cast(eps_r, x.dtype)
        b1, b2 = tf.constant(ADAM_BETA_1, x.dtype), tf.constant(ADAM_BETA_2, x.dtype)

        def lr_of(x0):
            return tf.reshape(p.lr_rule(self.r(x0), mu, sigma), [-1, 1, 1, 1])

        def step(k, x, m, v, lr_scale):
            if p.noise:
                eta = tf.reshape(noise_amplitude(self.r(x), mu, sigma, eps_r), [-1, 1, 1, 1])
                u = tf.random.stateless_uniform(tf.shape(x), tf.stack([seed, k]), -1.0, 1.0, dtype=x.dtype)
                x = tf.clip_by_value(x + eta * u, 0.0, 1.0)
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(p.loss(self.r(x), mu, sigma))
            g = tape.gradient(loss, x)
            if p.sign_step:
                x = x - alpha * tf.sign(g)
            else:
                m = m + (g - m) * (1.0 - ADAM_BETA_1)
                v = v + (tf.square(g) - v) * (1.0 - ADAM_BETA_2)
                t = tf.cast(k + 1, x.dtype)
                lr_t = alpha * tf.sqrt(1.0 - tf.pow(b2, t)) / (1.0 - tf.pow(b1, t))
                update = (m * lr_t) / (_sqrt_with_finite_gradient(v) + ADAM_EPSILON)
                x = x - (lr_scale * update if p.lr_rule is not lr_constant else update)  # C: lr α·Φ(·)
            return tf.clip_by_value(x, 0.0, 1.0), m, v

        if self.checkpoint:
            return _stepwise_gradient(step, lr_of, x, n)
        lr_scale = lr_of(x)
        zeros = tf.zeros_like(x)
        _, x, _, _ = tf.while_loop(lambda k, *_: k < tf.cast(n, tf.int64),
                                   lambda k, x, m, v: (k + 1, *step(k, x, m, v, lr_scale)),
                                   (tf.constant(0, tf.int64), x, zeros, zeros))
        return x

    def purify(self, x, seed=None):
        """Purify a float32 NHWC batch in [0, 1] (any batch size, one trace); returns a tensor.

        Also callable while tracing (the SavedModel export does); ``seed`` may then be a tensor."""
        return self._compiled(tf.convert_to_tensor(x, tf.float32), self._seed(seed), *self._settings_tensors())

    def purify_array(self, x: np.ndarray, batch_size: int | None = None, progress=None,
                     seed: int | None = None) -> np.ndarray:
        """Purify a numpy array in batches (default: ``models.batch_for`` its image size at
        ``GRADIENT_PIXELS``); batch i uses seed ``seed + i`` (default: ``settings.seed + i``), so the
        result is reproducible for a given batch size."""
        seed = self.settings.seed if seed is None else seed
        batch_size = batch_size or models.batch_for(x.shape[1:], models.GRADIENT_PIXELS)
        out = []
        for j, i in enumerate(range(0, len(x), batch_size)):
            out.append(fitting.across_replicas(lambda b, j=j: self.purify(b, seed=seed + j),
                                               tf.constant(x[i : i + batch_size], tf.float32)).numpy())
            if progress:
                progress(min(i + batch_size, len(x)))
        return np.concatenate(out) if out else np.zeros_like(x)
