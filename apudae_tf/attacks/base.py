"""What every attack shares (spec §4–5): the settings and the dataset presets, the steps and projections of
both norms, the losses (cross-entropy, CW margin, DLR), and the defended model the attacks differentiate
(classifier ∘ defence, exact or BPDA, EOT over a random defence's draws)."""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from apudae_tf import fitting, names, profiles
from apudae_tf.errors import ApudaeError

METHODS = names.ATTACK_METHODS + names.ADAPTIVE_METHODS + names.ENSEMBLE_METHODS
CW_KAPPA = 2.0  # spec §4: the margin loss is clipped at -κ


@dataclasses.dataclass(frozen=True)
class AttackSettings:
    """Budget and steps; ``step`` is the per-iteration size of iterative attacks."""

    eps: float
    steps: int
    step: float
    rand_init: bool = True
    seed: int = 0
    lam: float = 0.0  # counter B's weight on r(x) (eq. 15)
    eot: int = 1  # samples of the defence's randomness per gradient (the adaptive attacks)
    restarts: int = 1  # APGD's random starts
    targets: int = names.APGD_TARGETS  # APGD-T's target classes
    norm: str = "linf"  # the threat model's norm: "linf" or "l2" (L2_METHODS)


CW_L2_STEPS = 100  # Adam iterations per binary-search step; cleverhans' 1000 is far too slow on 2 CPU cores
CW_L2_SEARCH = 5
# AutoAttack's standard budgets (Croce & Hein 2020): APGD 100 iterations, Square 5000 queries
DEFAULT_STEPS = {"apgd-ce": 100, "apgd-dlr": 100, "apgd-t": 100, "square": 5000}


def threat_model(dataset: str, norm: str = "linf") -> profiles.ThreatModel:
    """The dataset profile's threat model in ``norm`` (L∞: spec §4; L2: docs/certify.md §5)."""
    p = profiles.get(dataset)
    t = p.threat if norm == "linf" else p.l2_threat
    if t is None:
        raise ApudaeError(f"dataset {dataset!r} declares no {norm} threat model; pass --eps and --steps")
    return t


def preset(dataset: str, eps=None, steps=None, step=None, seed=0, norm: str = "linf") -> AttackSettings:
    """The dataset profile's threat model in ``norm`` (spec §4: Madry's PGD-40 on MNIST, BIM 7×2/255 on
    CIFAR-10; L2: docs/certify.md §5) with any override; a new ε without a step keeps the preset's step/ε
    ratio."""
    if norm not in profiles.NORMS:
        raise ApudaeError(f"--norm {norm}: use {' or '.join(profiles.NORMS)}")
    if dataset not in profiles.REGISTRY and eps is not None and steps is not None:
        # no profile, but the caller names the whole budget (`attack --eps E --steps K` on a foreign model)
        base = AttackSettings(eps=float(eps), steps=int(steps), step=float(step or 2.5 * eps / steps), norm=norm)
    else:
        t = threat_model(dataset, norm)
        base = AttackSettings(eps=t.eps, steps=t.steps, step=t.step, rand_init=t.rand_init, norm=norm)
    eps_ = base.eps if eps is None else float(eps)
    step_ = step if step is not None else base.step * eps_ / base.eps
    s = AttackSettings(eps=eps_, steps=base.steps if steps is None else int(steps), step=float(step_), seed=seed,
                       rand_init=base.rand_init, norm=norm)
    top = 1.0 if norm == "linf" else profiles.L2_EPS_MAX
    for option, value, ok, allowed in (("--eps", s.eps, 0 < s.eps <= top, f"(0, {top:g}]"),
                                       ("--steps", s.steps, s.steps >= 1, ">= 1"),
                                       ("--step", s.step, 0 < s.step <= top, f"(0, {top:g}]")):
        if not ok:
            raise ApudaeError(f"{option} {value:g} is outside {allowed}" + (" for the l2 norm" if norm == "l2" else ""))
    return s


def settings_for(method: str, dataset: str, eps=None, steps=None, step=None, seed=0, lam=0.0, eot=1,
                 norm: str = "linf") -> AttackSettings:
    """The settings of one attack: the dataset's preset with overrides; CW-L2 has no ε, and its
    steps are Adam iterations per binary-search step."""
    if norm == "l2" and method not in L2_METHODS:
        raise ApudaeError(f"the {method} attack is L∞ only; in the l2 threat model use {', '.join(L2_METHODS)}")
    if method == "cw-l2":
        return AttackSettings(eps=1.0, steps=steps or CW_L2_STEPS, step=0.0, seed=seed)
    if method in DEFAULT_STEPS:  # step sizes are the attack's own (APGD: 2ε, halving; Square: ±ε squares)
        base = preset(dataset, eps, seed=seed, norm=norm)
        return dataclasses.replace(base, steps=int(steps or DEFAULT_STEPS[method]), step=base.eps, eot=int(eot))
    return dataclasses.replace(preset(dataset, eps, steps, step, seed, norm), lam=float(lam), eot=int(eot))


# the attacks that have an L2 version (docs/certify.md §5); the others are L∞ only
L2_METHODS = ("none", "pgd", "apgd-ce", "apgd-dlr", "apgd-t", "square")


# -- shared helpers --------------------------------------------------------------------------


def l2_norms(d):
    """‖d_i‖₂ per image of a numpy batch, shaped [B, 1, 1, 1] to broadcast."""
    return np.sqrt(np.sum(np.square(d, dtype=np.float64), axis=tuple(range(1, d.ndim)), keepdims=True)).astype(
        np.float32)


def project_np(z, x, eps: float, norm: str):
    """Onto the ε-ball of ``norm`` around x, then into [0, 1] (numpy). For L2 the clip after the radial
    scaling keeps the point in the ball: it moves every coordinate towards x, which lies in [0, 1]."""
    if norm == "linf":
        return np.clip(z, np.clip(x - eps, 0.0, 1.0), np.clip(x + eps, 0.0, 1.0))
    d = z - x
    d = d * np.minimum(1.0, eps / np.maximum(l2_norms(d), 1e-12))
    return np.clip(x + d, 0.0, 1.0)


def ascent_direction(g, norm: str):
    """The steepest-ascent direction of ``norm``'s unit ball: sign(g) for L∞, g/‖g‖₂ for L2 (numpy)."""
    if norm == "linf":
        return np.sign(g)
    return g / np.maximum(l2_norms(g), 1e-12)


def random_in_ball(x, eps: float, norm: str, rng):
    """A random start in the ε-ball, clipped to [0, 1]: uniform in the L∞ box (AutoAttack's APGD), or on the
    L2 sphere of radius ε (AutoAttack's APGD-L2)."""
    if norm == "linf":
        return np.clip(x + rng.uniform(-eps, eps, x.shape), 0.0, 1.0).astype(np.float32)
    u = rng.standard_normal(x.shape).astype(np.float32)
    return np.clip(x + eps * u / np.maximum(l2_norms(u), 1e-12), 0.0, 1.0).astype(np.float32)



def project(x_adv, x, eps):
    """clip_{x,ε}: onto the L∞ ball of radius ε around x, intersected with [0, 1]."""
    return tf.clip_by_value(tf.clip_by_value(x_adv, x - eps, x + eps), 0.0, 1.0)


def sign_step(x, grad, size):
    """One ascent step of size ``size`` along sign(grad), clipped to [0, 1]."""
    return tf.clip_by_value(x + size * tf.sign(grad), 0.0, 1.0)


def input_gradient(loss_fn, x):
    """∇_x of a scalar loss; ``loss_fn`` maps images to a per-image loss (summed here)."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(loss_fn(x))
    return tape.gradient(loss, x)


def random_start(x, eps, seed):
    """clip(x + U(−ε, ε), 0, 1), drawn exactly as cleverhans' PGD draws its start (the global
    generator, reset by ``tf.random.set_seed``), so for one seed our iterative attacks and
    cleverhans' PGD start from the same point. Eager use only: in a tf.function the seed would
    act once, at tracing."""
    tf.random.set_seed(seed)
    return tf.clip_by_value(x + tf.random.uniform(tf.shape(x), -eps, eps), 0.0, 1.0)


def iterative_attack(loss_fn, x, start, eps, step, steps, grad_fn=None):
    """PGD (eq. 3) from ``start``, ascending an arbitrary per-image loss; every attack of ours
    (CW-L∞, the counter attacks, the adaptive attacks, adversarial training) reuses it.
    ``grad_fn(x_adv, k)``, if given, replaces ∇ loss at step k (BPDA and EOT estimates)."""
    x = tf.convert_to_tensor(x, tf.float32)
    x_adv = tf.convert_to_tensor(start, tf.float32)
    for k in range(steps):
        g = input_gradient(loss_fn, x_adv) if grad_fn is None else grad_fn(x_adv, k)
        x_adv = project(sign_step(x_adv, g, step), x, eps)
    return x_adv


def pgd_on(loss_fn, x, s: AttackSettings, grad_fn=None):
    """PGD with the settings ``s`` (random start when ``s.rand_init``) on any per-image loss."""
    x = tf.convert_to_tensor(x, tf.float32)
    start = random_start(x, s.eps, s.seed) if s.rand_init else x
    return iterative_attack(loss_fn, x, start, s.eps, s.step, s.steps, grad_fn)


def cross_entropy(model_fn, y):
    """The per-image loss cleverhans' FGSM/PGD ascend, so that our attacks and theirs agree."""
    return lambda x: tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=model_fn(x))


def cw_margin(model_fn, y, kappa=CW_KAPPA):
    """Ascend min(max_{j≠y} Z_j − Z_y, κ), i.e. descend the CW loss max(Z_y − max_{j≠y} Z_j, −κ)."""

    def loss(x):
        z = model_fn(x)
        onehot = tf.one_hot(y, tf.shape(z)[-1])
        z_y = tf.reduce_sum(z * onehot, -1)
        z_other = tf.reduce_max(z - 1e9 * onehot, -1)
        return -tf.maximum(z_y - z_other, -kappa)

    return loss



# -- the defence as a model the attacks can differentiate ------------------------------------


class DefendedModel:
    """classifier ∘ purifier as one ``x -> logits`` callable, the thing the attacks of spec §5 attack.

    ``gradient="exact"``: the purification's own function (``Purifier.function``) is differentiated
    under the attack's tape, second order through the loop (the full adaptive attack). ``"bpda"``:
    the real purifier forward and the identity backward (Athalye et al. 2018), written as
    x + stop_gradient(P(x) − x). ``forward(x)`` is always the real purifier, for score-based attacks.

    A random purifier (F, G, Defense-GAN) draws fresh randomness on every call, from a generator
    seeded by ``seed`` and advanced inside the traced graph: calling the model K times and averaging
    is EOT over K draws, reproducibly. The draws are 64-bit seeds, so they do not repeat the small
    seeds (``settings.seed + batch``) with which ``purify`` scores the result.
    """

    def __init__(self, purifier, model_fn, gradient: str = "exact", seed: int = 0):
        if gradient not in ("exact", "bpda"):
            raise ValueError(f"unknown gradient {gradient!r}")
        self.purifier, self.model_fn, self.gradient = purifier, model_fn, gradient
        self.is_random = bool(purifier.is_random)
        self._draws = tf.random.Generator.from_seed(seed) if self.is_random else None

    def _seed(self):
        return self._draws.uniform_full_int([], tf.int64) if self._draws is not None else None

    def __call__(self, x):
        seed = self._seed()
        if self.gradient == "exact":
            return self.model_fn(self.purifier.function(x, seed))
        return self.model_fn(x + tf.stop_gradient(self.purifier.purify(x, seed) - x))

    def forward(self, x):
        return self.model_fn(self.purifier.purify(x, self._seed()))


def loss_gradient(model_fn, loss, image_shape):
    """A compiled ``(x, y, target) -> (per-image loss, logits, ∇_x Σ loss)`` for any batch size;
    ``loss(logits, y, target)`` is per image. One draw of a random model per call. Kept on the model
    object (tracing a purification costs seconds), so it lives as long as the model does."""
    try:
        per_model = model_fn.__dict__.setdefault("_apudae_gradients", {})
    except AttributeError:  # an object without a __dict__: compiled per call
        per_model = {}
    key = (loss, tuple(image_shape))
    if key not in per_model:
        labels = tf.TensorSpec([None], tf.int64)

        @tf.function(input_signature=[tf.TensorSpec([None, *image_shape], tf.float32), labels, labels])
        def fn(x, y, target):
            with tf.GradientTape() as tape:
                tape.watch(x)
                logits = model_fn(x)
                value = loss(logits, y, target)
                total = tf.reduce_sum(value)
            return value, logits, tape.gradient(total, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)

        per_model[key] = fn
    return per_model[key]


def eot_gradient(model_fn, loss, x, y, target, eot: int = 1):
    """Loss, logits and input gradient averaged over ``eot`` calls of ``model_fn`` (EOT: Athalye et al.
    2018); one call is exact for a deterministic model. numpy in, numpy out."""
    fn = loss_gradient(model_fn, loss, x.shape[1:])
    args = tf.constant(x, tf.float32), tf.constant(y, tf.int64), tf.constant(target, tf.int64)
    total = None
    for _ in range(eot):
        out = [t.numpy() for t in fitting.across_replicas(fn, *args)]
        total = out if total is None else [a + b for a, b in zip(total, out)]
    return [t / eot for t in total]


# -- losses ----------------------------------------------------------------------------------


def ce_loss(logits, y, target=None):
    """Cross-entropy L(f(x), y), per image."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)


def _sorted_and_true(logits, y):
    z = tf.sort(logits, axis=-1, direction="DESCENDING")
    z_y = tf.gather(logits, y, batch_dims=1)
    others = tf.where(tf.one_hot(y, tf.shape(logits)[-1]) > 0, tf.constant(-np.inf, logits.dtype), logits)
    return z, z_y, tf.reduce_max(others, -1)


def dlr_loss(logits, y, target=None):
    """Difference of logits ratio (Croce & Hein 2020, eq. 6): −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3),
    z_π the logits sorted in decreasing order. Invariant to shifting and rescaling the logits, so a
    model cannot hide behind their scale. Needs 3 classes or more."""
    z, z_y, z_other = _sorted_and_true(logits, y)
    return -(z_y - z_other) / (z[:, 0] - z[:, 2] + 1e-12)


def dlr_targeted_loss(logits, y, target):
    """Targeted DLR (Croce & Hein 2020, eq. 7): −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2), target t.
    Needs 4 classes or more."""
    z, z_y, _ = _sorted_and_true(logits, y)
    z_t = tf.gather(logits, target, batch_dims=1)
    return -(z_y - z_t) / (z[:, 0] - 0.5 * (z[:, 2] + z[:, 3]) + 1e-12)


def margin(logits, y):
    """z_y − max_{j≠y} z_j, per image (numpy): negative exactly when the image is misclassified."""
    logits = np.asarray(logits)
    z_y = logits[np.arange(len(y)), y]
    others = logits.copy()
    others[np.arange(len(y)), y] = -np.inf
    return z_y - others.max(1)


