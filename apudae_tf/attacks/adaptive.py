"""The attacks that know the defence (spec §5): the paper's counter attacks A (BPDA through the DAE) and B
(the weighted loss), PGD through the exact gradient of the purification, and BPDA + EOT. ``defence`` is
the purifier being attacked; its classifier is ``model_fn``."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from apudae_tf import models
from apudae_tf.attacks.base import AttackSettings, DefendedModel, ce_loss, cross_entropy, eot_gradient, pgd_on


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


