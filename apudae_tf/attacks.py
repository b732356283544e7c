"""White-box attacks on a classifier (spec §4) and on the defence (spec §5), one function each.

Every attack takes ``model_fn(x) -> logits``, images ``x`` in [0, 1] and true
labels ``y`` (untargeted). FGSM and PGD are cleverhans'; the step, projection
and clipping helpers here are shared by every iterative attack of ours (CW-L∞,
the counter attacks, the adaptive attacks). The L2 Carlini–Wagner attack is
cleverhans' ``CarliniWagnerL2``, adapted to Keras 3 below. The attacks of
``DEFENCE_ATTACKS`` also take the Purifier they attack.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time

import numpy as np
import tensorflow as tf
from cleverhans.tf2.attacks.carlini_wagner_l2 import CarliniWagnerL2
from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method
from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

from apudae_tf import fitting, models, names, profiles
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
    targets: int = 9  # APGD-T's target classes
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


# -- the attacks -----------------------------------------------------------------------------


def no_attack(model_fn, x, y, s: AttackSettings):
    """The clean images themselves: the pipeline's baseline."""
    return tf.convert_to_tensor(x, tf.float32)


def random_noise(model_fn, x, y, s: AttackSettings):
    """x + U(−ε, ε), clipped (eq. 1)."""
    return random_start(tf.convert_to_tensor(x, tf.float32), s.eps, s.seed)


def fgsm(model_fn, x, y, s: AttackSettings):
    """x + ε·sign(∇ L(f(x), y)) (eq. 2), cleverhans."""
    return fast_gradient_method(model_fn, tf.convert_to_tensor(x, tf.float32), s.eps, np.inf,
                                clip_min=0.0, clip_max=1.0, y=y)


def r_fgsm(model_fn, x, y, s: AttackSettings):
    """Tramèr et al.: a random sign step of a = ε/2, then FGSM with the remaining ε − a."""
    x = tf.convert_to_tensor(x, tf.float32)
    a = s.eps / 2
    x_rand = tf.clip_by_value(x + a * tf.sign(tf.random.stateless_normal(tf.shape(x), [s.seed, 2])), 0.0, 1.0)
    x_adv = fast_gradient_method(model_fn, x_rand, s.eps - a, np.inf, clip_min=0.0, clip_max=1.0, y=y)
    return project(x_adv, x, s.eps)  # guards against float round-off only; the steps already sum to ε


def pgd(model_fn, x, y, s: AttackSettings):
    """PGD / BIM (eq. 3), cleverhans; random start when ``rand_init`` (Madry). In the L2 threat model the
    steps are ``step``·∇/‖∇‖₂ and the projection is onto the L2 ball (cleverhans' norm 2)."""
    tf.random.set_seed(s.seed)  # cleverhans draws its random start from the global generator
    x = tf.convert_to_tensor(x, tf.float32)
    return projected_gradient_descent(
        model_fn, x, s.eps, s.step, s.steps, np.inf if s.norm == "linf" else 2, clip_min=0.0, clip_max=1.0, y=y,
        rand_init=s.rand_init, sanity_checks=False,
    )


def cw_linf(model_fn, x, y, s: AttackSettings):
    """The paper's CW: PGD on the Carlini–Wagner margin loss, κ = 2, same budget as PGD (spec §4)."""
    return pgd_on(cw_margin(model_fn, y), x, s)


class _Keras3Adam:
    """Adam whose ``variables()`` is callable and leaves the learning rate alone.

    cleverhans 4.0.0 resets its optimizer with ``for v in optimizer.variables(): v.assign(0)``;
    in Keras 3 ``variables`` is a list, and zeroing all of it would also zero the learning rate.
    """

    def __init__(self, learning_rate):
        self._adam = tf.keras.optimizers.Adam(learning_rate)

    def variables(self):
        # the step count and moments; the learning rate (a variable in Keras 3) is never reset
        return [self._adam.iterations] + [v for v in self._adam.variables
                                          if v.path.endswith(("_momentum", "_velocity"))]

    def apply_gradients(self, grads_and_vars):
        return self._adam.apply_gradients(grads_and_vars)


class _CarliniWagnerL2(CarliniWagnerL2):
    """cleverhans' CW-L2 with two fixes, made here rather than in a fork.

    1. Keras 3: a fresh ``_Keras3Adam`` per batch (see above; a Keras 3 optimizer only updates
       the variables it was built for, and cleverhans makes a new perturbation per batch).
    2. cleverhans 4.0.0 keeps the trade-off constant with the image's shape, so ``const * loss``
       broadcasts [B,H,W,C] against [B] (garbage for grey images, a crash for RGB ones). This
       ``_attack`` keeps one constant per image. The inner step and loss are cleverhans' own
       (``attack_step``, ``gradient``, ``loss_fn``).
    """

    def _attack(self, x):
        self.optimizer = _Keras3Adam(self.learning_rate)
        x = tf.cast(x, tf.float32)
        n = int(x.shape[0])
        labels = tf.constant(np.asarray(self.y), tf.int64)
        y = tf.one_hot(labels, int(self.model_fn(x[:1]).shape[-1]))
        w = tf.atanh((2.0 * x - 1.0) * 0.999999)  # tanh space, clip_min = 0, clip_max = 1
        lower, upper = tf.zeros([n]), tf.fill([n], 1e10)
        const = tf.fill([n], float(self.initial_const))
        best_l2, best = tf.fill([n], 1e10), x
        modifier = tf.Variable(tf.zeros_like(x))
        for _ in range(self.binary_search_steps):
            modifier.assign(tf.zeros_like(x))
            for v in self.optimizer.variables():
                v.assign(tf.zeros_like(v))
            found, prev = tf.zeros([n], tf.bool), None
            for it in range(self.max_iterations):
                x_new, loss, logits, l2 = self.attack_step(w, y, modifier, const)
                if self.abort_early and it % (max(self.max_iterations // 10, 1)) == 0:
                    if prev is not None and loss > prev * 0.9999:
                        break
                    prev = loss
                success = tf.not_equal(tf.argmax(logits, 1), labels)
                better = tf.logical_and(success, l2 < best_l2)
                best_l2 = tf.where(better, l2, best_l2)
                best = tf.where(better[:, None, None, None], x_new, best)
                found = tf.logical_or(found, success)
            # binary search on the constant, per image
            upper = tf.where(found, tf.minimum(upper, const), upper)
            lower = tf.where(found, lower, tf.maximum(lower, const))
            const = tf.where(upper < 1e9, (lower + upper) / 2.0, const * 10.0)
        return best


def cw_l2(model_fn, x, y, s: AttackSettings):
    """Carlini–Wagner L2 (cleverhans), untargeted on the true labels; L2-minimal, so no ε budget.

    Images it cannot fool within ``s.steps`` Adam steps are returned unchanged.
    """
    attack = _CarliniWagnerL2(model_fn, y=np.asarray(y), batch_size=len(x), binary_search_steps=CW_L2_SEARCH,
                              max_iterations=s.steps, confidence=0.0, initial_const=1.0, learning_rate=5e-2,
                              abort_early=False)
    attack.targeted = False  # cleverhans takes "labels given" to mean targeted
    return tf.convert_to_tensor(attack.attack(np.asarray(x, np.float32)))


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


# -- APGD (Croce & Hein 2020) ----------------------------------------------------------------

APGD_MOMENTUM = 0.75  # α of Algorithm 1
APGD_RHO = 0.75  # ρ of condition 1
APGD_TARGETS = 9  # APGD-T's target classes in AutoAttack's standard evaluation


def apgd_checkpoints(n_iter: int) -> list[int]:
    """The iterations w_j = ⌈p_j·N_iter⌉ where APGD may halve its step (Croce & Hein 2020, §3.2):
    p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06). w_0 = 0 is left out."""
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({int(math.ceil(q * n_iter - 1e-9)) for q in p[1:] if math.ceil(q * n_iter - 1e-9) < n_iter})


def apgd_halve(increases, interval: int, halved_last, f_max, f_max_checked):
    """Which images halve their step at a checkpoint (Croce & Hein 2020, §3.2): condition 1, fewer than
    ρ·interval of the steps since the last checkpoint raised the loss; or condition 2, the step was not
    halved at the last checkpoint and the best loss has not improved since."""
    return (increases < APGD_RHO * interval) | (~halved_last & (f_max <= f_max_checked))


def apgd_run(model_fn, loss, x, y, target, start, eps: float, n_iter: int, eot: int = 1, early_stop: bool = True,
             trace: dict | None = None, norm: str = "linf"):
    """One run of Auto-PGD (Croce & Hein 2020, Algorithm 1), L∞ or L2, from ``start``; numpy in and out.

    Step size η⁰ = 2ε, halved at a checkpoint w_j when (1) fewer than ρ = 0.75 of the steps since
    w_{j−1} raised the loss, or (2) the step was not halved at w_{j−1} and the best loss has not
    improved since; a halving restarts from the best point. Steps carry momentum α = 0.75:
    z = P(x_k + η·d(∇f(x_k))), x_{k+1} = P(x_k + α(z − x_k) + (1 − α)(x_k − x_{k−1})), with d = sign for
    L∞ and d(g) = g/‖g‖₂ for L2, P the projection onto the ε-ball of the norm and [0, 1].
    Every quantity is per image. With ``early_stop`` an image leaves the batch once misclassified
    (AutoAttack's practice; the robust/not-robust outcome is the same) and is returned at the
    first misclassified point; the others at their highest-loss point. Returns (x_adv, fooled).
    ``trace``, if given, receives the per-iteration step sizes (for tests).
    """
    n = len(x)
    checkpoints = apgd_checkpoints(n_iter)
    eta = np.full(n, 2.0 * eps, np.float32)
    active = np.arange(n)
    f, logits, g = eot_gradient(model_fn, loss, start, y, target, eot)
    x_cur, x_prev, f_cur, g_cur = start.copy(), start.copy(), f, g
    x_max, f_max, g_max = start.copy(), f.copy(), g.copy()
    out, fooled = start.copy(), np.argmax(logits, 1) != y
    increases = np.zeros(n, np.int64)
    f_max_checked, halved_last = f_max.copy(), np.zeros(n, bool)
    last_w = 0
    if trace is not None:
        trace["eta"], trace["fooled_at"] = [eta.copy()], np.where(fooled, 0, -1)
    for k in range(n_iter):
        if early_stop:
            active = np.flatnonzero(~fooled)
            if not active.size:
                break
        a = active
        step = eta[a].reshape(-1, *[1] * (x.ndim - 1))
        z = project_np(x_cur[a] + step * ascent_direction(g_cur[a], norm), x[a], eps, norm)
        if k == 0:
            x_new = z
        else:
            x_new = x_cur[a] + APGD_MOMENTUM * (z - x_cur[a]) + (1 - APGD_MOMENTUM) * (x_cur[a] - x_prev[a])
            x_new = project_np(x_new, x[a], eps, norm).astype(np.float32)
        f_new, logits, g_new = eot_gradient(model_fn, loss, x_new, y[a], target[a], eot)
        now = np.argmax(logits, 1) != y[a]
        first = now & ~fooled[a]
        out[a[first]], fooled[a[now]] = x_new[first], True
        if trace is not None:
            trace["fooled_at"][a[first]] = k + 1
        increases[a] += f_new > f_cur[a]
        x_prev[a], x_cur[a], f_cur[a], g_cur[a] = x_cur[a], x_new, f_new, g_new
        better = f_new > f_max[a]
        x_max[a[better]], f_max[a[better]], g_max[a[better]] = x_new[better], f_new[better], g_new[better]
        if k + 1 in checkpoints:
            w = k + 1
            halve = apgd_halve(increases, w - last_w, halved_last, f_max, f_max_checked)
            eta[halve] /= 2.0
            x_cur[halve], f_cur[halve], g_cur[halve] = x_max[halve], f_max[halve], g_max[halve]
            halved_last, f_max_checked, last_w = halve, f_max.copy(), w
            increases[:] = 0
        if trace is not None:
            trace["eta"].append(eta.copy())
    out[~fooled] = x_max[~fooled]
    return out, fooled


def _class_count(model_fn, x, needed: int, name: str) -> int:
    """The model's number of classes, checked against what a DLR loss needs."""
    classes = int(np.asarray(getattr(model_fn, "forward", model_fn)(tf.constant(x[:1]))).shape[-1])
    if classes < needed:
        raise ApudaeError(f"{name} needs a classifier with at least {needed} classes (this one has {classes}); "
                          "use apgd-ce")
    return classes


def _apgd_restarts(model_fn, loss, x, y, target, s: AttackSettings):
    """``s.restarts`` runs of APGD from random starts in the ε-ball of ``s.norm`` (``random_in_ball``), each
    on the images no earlier run fooled. Returns (x_adv, fooled)."""
    x_adv, fooled = x.copy(), np.zeros(len(x), bool)
    rng = np.random.default_rng(s.seed)
    for r in range(s.restarts):
        todo = np.flatnonzero(~fooled)
        if not todo.size:
            break
        start = random_in_ball(x[todo], s.eps, s.norm, rng)
        adv, now = apgd_run(model_fn, loss, x[todo], y[todo], target[todo], start, s.eps, s.steps, s.eot,
                            norm=s.norm)
        keep = now | (r == 0)  # the first run's best point, or any later run's success
        x_adv[todo[keep]] = adv[keep]
        fooled[todo] = now
    return x_adv, fooled


def apgd_ce(model_fn, x, y, s: AttackSettings):
    """APGD on the cross-entropy loss (Croce & Hein 2020): ``s.steps`` iterations, ``s.restarts``
    random starts, the gradient averaged over ``s.eot`` draws of a random model."""
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int64)
    return _apgd_restarts(model_fn, ce_loss, x, y, y, s)[0]


def apgd_dlr(model_fn, x, y, s: AttackSettings):
    """APGD on the DLR loss (Croce & Hein 2020), untargeted."""
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int64)
    _class_count(model_fn, x, 3, "apgd-dlr")
    return _apgd_restarts(model_fn, dlr_loss, x, y, y, s)[0]


def apgd_t(model_fn, x, y, s: AttackSettings):
    """APGD-T (Croce & Hein 2020): APGD on the targeted DLR loss, once per target class among the
    ``s.targets`` classes the model ranks highest after the true one (on the clean image), each on
    the images no earlier target has fooled. Success is any wrong class (the untargeted criterion)."""
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int64)
    classes = _class_count(model_fn, x, 4, "apgd-t")
    logits = models.predict_in_batches(getattr(model_fn, "forward", model_fn), x)
    ranked = np.argsort(-logits, axis=1, kind="stable")
    ranked = np.stack([r[r != c] for r, c in zip(ranked, y)])  # the other classes, best first
    x_adv, fooled = x.copy(), np.zeros(len(x), bool)
    for k in range(min(s.targets, classes - 1)):
        todo = np.flatnonzero(~fooled)
        if not todo.size:
            break
        adv, now = _apgd_restarts(model_fn, dlr_targeted_loss, x[todo], y[todo], ranked[todo, k],
                                  dataclasses.replace(s, seed=s.seed + 1000 * (k + 1)))
        x_adv[todo[now]], fooled[todo[now]] = adv[now], True
    return x_adv


# -- Square attack (Andriushchenko et al. 2020) ----------------------------------------------

SQUARE_P_INIT = 0.8  # AutoAttack's value for L∞ (the Square paper's schedule of p below)


def square_p(p_init: float, i: int, n_queries: int) -> float:
    """The fraction of pixels a square covers at query i: p_init halved at queries 10, 50, 200,
    500, 1000, 2000, 4000, 6000 and 8000 of a 10,000-query run, rescaled to ``n_queries``."""
    i = int(i / n_queries * 10000)
    for k, bound in enumerate((10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)):
        if i <= bound:
            return p_init / 2**k
    return p_init / 2**9


def _margin_scores(model_fn, s: AttackSettings, n: int):
    """``images, labels -> margins`` through the model's forward (the defence's, when it has one); on a random
    model (``model_fn.is_random``) each margin is averaged over ``s.eot`` draws (EOT on the scores). With one
    draw a lucky sample ends an image's search at once, and the best-so-far margin, a minimum over noisy
    samples, rejects real progress afterwards."""
    forward = getattr(model_fn, "forward", model_fn)
    draws = max(int(s.eot), 1) if getattr(model_fn, "is_random", False) else 1
    chunk = max(n, 1)  # never a larger forward batch than the first query's

    def margins(images, labels):
        # the draws are per image, so K copies of an image in one batch are K draws
        tiled, labels = np.repeat(images, draws, axis=0), np.repeat(labels, draws)
        logits = np.concatenate([np.asarray(forward(tf.constant(tiled[i : i + chunk])))
                                 for i in range(0, len(tiled), chunk)])
        return margin(logits, labels).reshape(-1, draws).mean(axis=1)

    return margins


def square(model_fn, x, y, s: AttackSettings):
    """Square attack, untargeted, margin loss (Andriushchenko et al. 2020, Algorithm 1): random search,
    score-based and gradient-free, so gradient masking cannot stop it. L∞: squares of ±ε; L2
    (``square_l2``): windows of a pseudo-Gaussian pattern on the ε-sphere. ``s.steps`` queries per image; an
    image stops being queried once misclassified. Uses only ``model_fn.forward`` (the defence's forward) when
    the model has one, its scores averaged over ``s.eot`` draws on a random model. numpy in and out."""
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int64)
    if s.norm == "l2":
        return square_l2(model_fn, x, y, s)
    n, h, w, c = x.shape
    rng = np.random.default_rng(s.seed)
    margins = _margin_scores(model_fn, s, n)
    # start: vertical stripes of ±ε, one sign per column and channel
    x_best = np.clip(x + s.eps * rng.choice([-1.0, 1.0], size=(n, 1, w, c)), 0.0, 1.0).astype(np.float32)
    m_best = margins(x_best, y)
    for i in range(1, s.steps):
        todo = np.flatnonzero(m_best > 0)
        if not todo.size:
            break
        side = int(round(math.sqrt(square_p(SQUARE_P_INIT, i, s.steps) * h * w)))
        side = min(max(side, 1), h - 1, w - 1)
        top = rng.integers(0, h - side + 1, len(todo))[:, None]
        left = rng.integers(0, w - side + 1, len(todo))[:, None]
        rows = (np.arange(h)[None] >= top) & (np.arange(h)[None] < top + side)
        cols = (np.arange(w)[None] >= left) & (np.arange(w)[None] < left + side)
        window = (rows[:, :, None] & cols[:, None, :])[..., None]
        delta = x_best[todo] - x[todo]
        for _ in range(10):  # a square that would change nothing is drawn again
            signs = s.eps * rng.choice([-1.0, 1.0], size=(len(todo), 1, 1, c))
            candidate = np.clip(x[todo] + np.where(window, signs, delta), 0.0, 1.0).astype(np.float32)
            same = np.all(np.where(window, candidate == x_best[todo], True), axis=(1, 2, 3))
            if not same.any():
                break
        m_new = margins(candidate, y[todo])
        better = m_new < m_best[todo]
        x_best[todo[better]], m_best[todo[better]] = candidate[better], m_new[better]
    return x_best


def _rectangles(rows: int, cols: int) -> np.ndarray:
    """Nested rectangles around the centre, weighted 1/(k+1)², unit L2 norm: half of Square-L2's pattern."""
    d = np.zeros((rows, cols), np.float32)
    r0, c0 = rows // 2, cols // 2  # the centre, as the rings grow outwards from it
    for k in range(max(r0 + 1, c0 + 1)):
        d[max(r0 - k, 0):min(r0 + k + 1, rows), max(c0 - k, 0):min(c0 + k + 1, cols)] += 1.0 / (k + 1) ** 2
    return d / np.sqrt(np.sum(d * d))


def square_l2_pattern(side: int, rng) -> np.ndarray:
    """Square-L2's window (Andriushchenko et al. 2020, §3.2): a pseudo-Gaussian bump in one half and its
    negative in the other, unit L2 norm, the halves split along a random axis."""
    d = np.concatenate([_rectangles(side // 2, side), -_rectangles(side - side // 2, side)])
    d /= np.sqrt(np.sum(d * d))
    return d.T.copy() if rng.random() > 0.5 else d


def square_l2(model_fn, x, y, s: AttackSettings):
    """Square attack, L2 (Andriushchenko et al. 2020, §3.2), untargeted, margin loss. The perturbation stays
    on the ε-sphere: a start of pseudo-Gaussian tiles, then at each query the mass of a second random window
    moves into the first, whose content becomes the old one plus a fresh ± pattern, rescaled per channel so
    that the total norm stays ε; the candidate is kept when it lowers the margin. numpy in and out."""
    n, h, w, c = x.shape
    rng = np.random.default_rng(s.seed)
    margins = _margin_scores(model_fn, s, n)

    def on_sphere(delta):
        return np.clip(x_rows + delta * (s.eps / np.maximum(l2_norms(delta), 1e-12)), 0.0, 1.0).astype(np.float32)

    tile = max(h // 5, 1)
    offset = (h - tile * 5) // 2 if h >= 5 else 0
    delta = np.zeros_like(x)
    for top in range(offset, h - tile + 1, tile):
        for left in range(offset, w - tile + 1, tile):
            signs = rng.choice([-1.0, 1.0], size=(n, 1, 1, c))
            delta[:, top:top + tile, left:left + tile, :] += square_l2_pattern(tile, rng)[None, :, :, None] * signs
    x_rows = x
    x_best = on_sphere(delta)
    m_best = margins(x_best, y)
    for i in range(1, s.steps):
        todo = np.flatnonzero(m_best > 0)
        if not todo.size:
            break
        x_rows = x[todo]
        d = x_best[todo] - x_rows
        side = max(int(round(math.sqrt(square_p(SQUARE_P_INIT, i, s.steps) * h * w))), 3)
        side = min(side + (side % 2 == 0), h, w)  # odd, so the pattern has a centre
        r1, r2 = rng.integers(0, h - side + 1, 2)  # the two windows' top rows ...
        c1, c2 = rng.integers(0, w - side + 1, 2)  # ... and left columns
        win1 = (slice(None), slice(r1, r1 + side), slice(c1, c1 + side), slice(None))
        win2 = (slice(None), slice(r2, r2 + side), slice(c2, c2 + side), slice(None))
        norm_window = np.sqrt(np.sum(d[win1] ** 2, axis=(1, 2), keepdims=True))  # per image and channel
        both = np.zeros(d.shape[1:3], bool)
        both[win1[1], win1[2]] = True
        both[win2[1], win2[2]] = True
        norm_both = np.sqrt(np.sum(np.where(both[None, :, :, None], d, 0.0) ** 2, axis=(1, 2), keepdims=True))
        norm_image = l2_norms(d)
        fresh = square_l2_pattern(side, rng)[None, :, :, None] * rng.choice([-1.0, 1.0], size=(len(todo), 1, 1, c))
        new = fresh + d[win1] / (norm_window + 1e-12)
        # the window takes the energy of both windows plus whatever the image lacks of ε², per channel
        budget = np.sqrt(np.maximum(s.eps ** 2 - norm_image ** 2, 0.0) / c + norm_both ** 2)
        new = new / (np.sqrt(np.sum(new ** 2, axis=(1, 2), keepdims=True)) + 1e-12) * budget
        d = d.copy()
        d[win2] = 0.0
        d[win1] = new
        candidate = on_sphere(d)
        m_new = margins(candidate, y[todo])
        better = m_new < m_best[todo]
        x_best[todo[better]], m_best[todo[better]] = candidate[better], m_new[better]
    return x_best


# -- attacks that know the defence (spec §5) -------------------------------------------------
# ``defence`` is the purifier being attacked; its classifier is ``model_fn``.


def counter_a(model_fn, x, y, s: AttackSettings, defence):
    """Counter A, BPDA through the DAE (eq. 14): PGD on L(f(D(x)), y), the purifier approximated by D."""
    return pgd_on(cross_entropy(lambda b: model_fn(models.denoise(defence.dae, b)), y), x, s)


def counter_b(model_fn, x, y, s: AttackSettings, defence):
    """Counter B, weighted loss (eq. 15): PGD on L(f(x), y) − λ·r(x): fool the classifier while keeping
    the reconstruction error, which purification acts on, low. λ = 0 is plain PGD."""
    ce = cross_entropy(model_fn, y)
    return pgd_on(lambda b: ce(b) - s.lam * defence.r(b), x, s)


def _pgd_through(model, x, y, s: AttackSettings):
    """PGD on L(model(x), y) with the gradient averaged over ``s.eot`` calls of the model (EOT)."""
    y = np.asarray(y, np.int64)

    def grad_fn(x_adv, k):
        return tf.constant(eot_gradient(model, ce_loss, np.asarray(x_adv), y, y, s.eot)[2])

    return pgd_on(None, x, s, grad_fn)


def full_adaptive(model_fn, x, y, s: AttackSettings, defence):
    """PGD with the exact gradient of L(f(P(x)), y) through the purification loop (second-order tapes),
    averaged over ``s.eot`` draws of its randomness (EOT)."""
    return _pgd_through(DefendedModel(defence, model_fn, "exact", s.seed), x, y, s)


def bpda_eot(model_fn, x, y, s: AttackSettings, defence):
    """BPDA + EOT (Athalye et al. 2018): run the real purifier forward, take the backward pass as the
    identity, i.e. the gradient is ∇L(f(·), y) at P(x), averaged over ``s.eot`` draws of P's randomness."""
    return _pgd_through(DefendedModel(defence, model_fn, "bpda", s.seed), x, y, s)


DEFENCE_ATTACKS = {"bpda": counter_a, "weighted": counter_b, "adaptive": full_adaptive, "bpda-eot": bpda_eot}
# the counter attacks see only the DAE (D and r), not the variant's loop: their examples are the
# same for every purification variant of one DAE
DAE_ONLY_ATTACKS = ("bpda", "weighted")
# AutoAttack-grade attacks on any model_fn: white box on a classifier, or on classifier ∘ purifier
# through the defence's own gradient (exact, or BPDA for a purifier that has none: ``defence.gradient``)
ENSEMBLE_ATTACKS = {"apgd-ce": apgd_ce, "apgd-dlr": apgd_dlr, "apgd-t": apgd_t, "square": square}

ATTACKS = {"none": no_attack, "random": random_noise, "fgsm": fgsm, "r-fgsm": r_fgsm, "pgd": pgd, "cw": cw_linf, "cw-l2": cw_l2}


def run_attack(method: str, model_fn, x, y, settings: AttackSettings, batch_size: int | None = None, progress=None,
               defence=None, done=None):
    """Attack ``x`` (numpy) in batches (default: ``models.batch_for`` its image size at ``GRADIENT_PIXELS``);
    returns float32 numpy adversarial images. ``done`` (``get(i)``/``put(i, x)`` by the batch's first
    index, e.g. ``table.BatchStore``) keeps finished batches, so an interrupted attack resumes.

    The attacks of ``DEFENCE_ATTACKS`` also need ``defence``, the Purifier in front of ``model_fn``."""
    if method in DEFENCE_ATTACKS:
        if defence is None:
            raise ApudaeError(f"the {method} attack needs the defence it attacks (a purification variant)")
        fn = functools.partial(DEFENCE_ATTACKS[method], defence=defence)
    elif method in ENSEMBLE_ATTACKS:
        # one model object for every batch: its compiled gradient is traced once. The defence says how it is
        # attacked (defences.BaseDefence.attack_model: classifier ∘ defence, or the soft smoothed classifier)
        if defence is not None:
            model_fn, settings = defence.attack_model(model_fn, settings)
        fn = ENSEMBLE_ATTACKS[method]
    elif method in ATTACKS:
        fn = ATTACKS[method]
    else:
        raise ApudaeError(f"unknown attack {method!r}; use one of {', '.join(METHODS)}")
    if settings.norm != "linf" and method not in L2_METHODS:
        raise ApudaeError(f"the {method} attack is L∞ only; in the {settings.norm} threat model use "
                          f"{', '.join(L2_METHODS)}")
    y = np.asarray(y, np.int64)
    # a model that runs several noisy copies of each image per call (the soft smoothed classifier) holds
    # that many images' activations
    pixels = models.GRADIENT_PIXELS // max(int(getattr(model_fn, "draws", 1)), 1)
    batch_size = batch_size or models.batch_for(x.shape[1:], pixels)
    out = []
    for i in range(0, len(x), batch_size):
        kept = done.get(i) if done is not None else None
        if kept is not None and len(kept) == len(x[i : i + batch_size]):
            out.append(kept)
        else:
            batch = dataclasses.replace(settings, seed=settings.seed + i)  # batches get distinct random draws
            t0 = time.perf_counter()
            out.append(np.asarray(fn(model_fn, tf.constant(x[i : i + batch_size]),
                                     tf.constant(y[i : i + batch_size]), batch), np.float32))
            if done is not None:
                done.put(i, out[-1], time.perf_counter() - t0)
        if progress:
            progress(min(i + batch_size, len(x)))
    return np.concatenate(out) if out else np.zeros_like(x)
