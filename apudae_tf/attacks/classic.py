"""The classic attacks on a classifier (spec §4): FGSM, R-FGSM and PGD (cleverhans'), CW-L∞ (PGD on the
Carlini–Wagner margin) and cleverhans' CW-L2, made to run on Keras 3."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from cleverhans.tf2.attacks.carlini_wagner_l2 import CarliniWagnerL2
from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method
from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

from apudae_tf.attacks.base import CW_L2_SEARCH, AttackSettings, cw_margin, pgd_on, project, random_start


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


