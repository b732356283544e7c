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

import numpy as np
import tensorflow as tf
from cleverhans.tf2.attacks.carlini_wagner_l2 import CarliniWagnerL2
from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method
from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

from apudae_tf import models, names
from apudae_tf.errors import ApudaeError

METHODS = names.ATTACK_METHODS + names.ADAPTIVE_METHODS
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


# The paper's protocols (spec §4): Madry's PGD-40 on MNIST, BIM 7×2/255 on CIFAR-10.
PRESETS = {
    "mnist": AttackSettings(eps=0.3, steps=40, step=0.01),
    "cifar10": AttackSettings(eps=8 / 255, steps=7, step=2 / 255),
}
CW_L2_STEPS = 100  # Adam iterations per binary-search step; cleverhans' 1000 is far too slow on 2 CPU cores
CW_L2_SEARCH = 5


def preset(dataset: str, eps=None, steps=None, step=None, seed=0) -> AttackSettings:
    """The dataset's preset with any override; a new ε without a step keeps the preset's steps/ε ratio."""
    base = PRESETS.get(dataset)
    if base is None:
        if eps is None or steps is None:
            raise ApudaeError(f"no attack preset for dataset {dataset!r}: pass --eps and --steps")
        base = AttackSettings(eps=eps, steps=steps, step=2.5 * eps / steps)
    eps_ = base.eps if eps is None else float(eps)
    step_ = step if step is not None else base.step * eps_ / base.eps
    s = AttackSettings(eps=eps_, steps=base.steps if steps is None else int(steps), step=float(step_), seed=seed)
    if not (0 < s.eps <= 1) or s.steps < 1 or not (0 < s.step <= 1):
        raise ApudaeError(f"bad attack budget: eps={s.eps}, steps={s.steps}, step={s.step}")
    return s


def settings_for(method: str, dataset: str, eps=None, steps=None, step=None, seed=0, lam=0.0, eot=1) -> AttackSettings:
    """The settings of one attack: the dataset's preset with overrides; CW-L2 has no ε, and its
    steps are Adam iterations per binary-search step."""
    if method == "cw-l2":
        return AttackSettings(eps=1.0, steps=steps or CW_L2_STEPS, step=0.0, seed=seed)
    return dataclasses.replace(preset(dataset, eps, steps, step, seed), lam=float(lam), eot=int(eot))


# -- shared helpers --------------------------------------------------------------------------


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
    """PGD / BIM (eq. 3), cleverhans; random start when ``rand_init`` (Madry)."""
    tf.random.set_seed(s.seed)  # cleverhans draws its random start from the global generator
    x = tf.convert_to_tensor(x, tf.float32)
    return projected_gradient_descent(
        model_fn, x, s.eps, s.step, s.steps, np.inf, clip_min=0.0, clip_max=1.0, y=y,
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


# -- attacks that know the defence (spec §5) -------------------------------------------------
# ``defence`` is the Purifier being attacked; its classifier is ``model_fn``.


def counter_a(model_fn, x, y, s: AttackSettings, defence):
    """Counter A, BPDA through the DAE (eq. 14): PGD on L(f(D(x)), y), the purifier approximated by D."""
    return pgd_on(cross_entropy(lambda b: model_fn(models.denoise(defence.dae, b)), y), x, s)


def counter_b(model_fn, x, y, s: AttackSettings, defence):
    """Counter B, weighted loss (eq. 15): PGD on L(f(x), y) − λ·r(x): fool the classifier while keeping
    the reconstruction error, which purification acts on, low. λ = 0 is plain PGD."""
    ce = cross_entropy(model_fn, y)
    return pgd_on(lambda b: ce(b) - s.lam * defence.r(b), x, s)


def _eot_seeds(s: AttackSettings, k: int):
    """Fresh draws of the defence's randomness for step k: seeds no purification of the attack repeats."""
    return [s.seed * 1_000_003 + k * s.eot + j for j in range(s.eot)]


def full_adaptive(model_fn, x, y, s: AttackSettings, defence):
    """PGD with the exact gradient of L(f(P(x)), y) through the unrolled purification loop
    (``Purifier.unrolled``, second-order tapes), averaged over ``s.eot`` draws of its randomness (EOT)."""
    y = tf.convert_to_tensor(y)

    @tf.function(reduce_retracing=True)
    def grad(x_adv, seed):
        return input_gradient(cross_entropy(lambda b: model_fn(defence.unrolled(b, seed)), y), x_adv)

    def grad_fn(x_adv, k):
        return tf.add_n([grad(x_adv, tf.constant(seed, tf.int64)) for seed in _eot_seeds(s, k)]) / s.eot

    return pgd_on(None, x, s, grad_fn)


def bpda_eot(model_fn, x, y, s: AttackSettings, defence):
    """BPDA + EOT (Athalye et al. 2018): run the real purifier forward, take the backward pass as the
    identity, i.e. the gradient is ∇L(f(·), y) at P(x), averaged over ``s.eot`` draws of P's randomness."""
    ce = cross_entropy(model_fn, y)

    def grad_fn(x_adv, k):
        grads = [input_gradient(ce, defence.purify(x_adv, seed=seed)) for seed in _eot_seeds(s, k)]
        return tf.add_n(grads) / s.eot

    return pgd_on(None, x, s, grad_fn)


DEFENCE_ATTACKS = {"bpda": counter_a, "weighted": counter_b, "adaptive": full_adaptive, "bpda-eot": bpda_eot}
# the counter attacks see only the DAE (D and r), not the variant's loop: their examples are the
# same for every purification variant of one DAE
DAE_ONLY_ATTACKS = ("bpda", "weighted")

ATTACKS = {"none": no_attack, "random": random_noise, "fgsm": fgsm, "r-fgsm": r_fgsm, "pgd": pgd, "cw": cw_linf, "cw-l2": cw_l2}


def run_attack(method: str, model_fn, x, y, settings: AttackSettings, batch_size: int = 500, progress=None,
               defence=None):
    """Attack ``x`` (numpy) in batches; returns float32 numpy adversarial images.

    The attacks of ``DEFENCE_ATTACKS`` also need ``defence``, the Purifier in front of ``model_fn``."""
    if method in DEFENCE_ATTACKS:
        if defence is None:
            raise ApudaeError(f"the {method} attack needs the defence it attacks (a purification variant)")
        fn = functools.partial(DEFENCE_ATTACKS[method], defence=defence)
    elif method in ATTACKS:
        fn = ATTACKS[method]
    else:
        raise ApudaeError(f"unknown attack {method!r}; use one of {', '.join(METHODS)}")
    y = np.asarray(y, np.int64)
    out = []
    for i in range(0, len(x), batch_size):
        batch = dataclasses.replace(settings, seed=settings.seed + i)  # batches get distinct random draws
        out.append(np.asarray(fn(model_fn, tf.constant(x[i : i + batch_size]), tf.constant(y[i : i + batch_size]),
                                 batch), np.float32))
        if progress:
            progress(min(i + batch_size, len(x)))
    return np.concatenate(out) if out else np.zeros_like(x)
