"""Attacks that see the defence (spec §5): the differentiable purification they use, and the
attacks' definitions (counter A, counter B, full adaptive with EOT, BPDA + EOT)."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import half_images, linear_classifier

from apudae_tf import attacks, models, purify, store
from apudae_tf.errors import ApudaeError

SHAPE = (8, 8, 1)


def _tiny_dae(dtype="float32"):
    """A small random DAE (8x8x1) and clean statistics measured on its inputs."""
    old = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    try:
        keras.utils.set_random_seed(0)
        dae = models.build_dae(SHAPE, filters=8)
    finally:  # later tests build float32 models
        keras.config.set_floatx(old[0])
        keras.config.set_dtype_policy(old[1])
    x = np.random.default_rng(0).uniform(0.3, 0.7, (2, *SHAPE)).astype(dtype)
    r = models.reconstruction_error(dae, x).numpy()
    stats = store.DaeStats(float(r.mean()), float(r.std()) + 1e-3, 0.5, SHAPE, "mnist", {})
    return dae, stats, x


@pytest.mark.parametrize("variant", ["A", "B", "C", "D", "E", "F"])
def test_nested_tape_gradient_of_the_purification_matches_finite_differences(variant):
    # float64 so that a central difference is accurate to ~1e-8; the maths is the same code path
    dae, stats, x = _tiny_dae("float64")
    p = purify.Purifier(dae, stats, variant, purify.PurifySettings(n=3, alpha=0.01, eps_r=0.01))
    w = tf.constant(np.random.default_rng(1).normal(size=x.shape))
    d = np.random.default_rng(2).normal(size=x.shape)

    def phi(z):
        return tf.reduce_sum(w * p.function(z, seed=1))

    xx = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xx)
        out = phi(xx)
    directional = float(tf.reduce_sum(tape.gradient(out, xx) * d))
    h = 1e-6
    fd = float(phi(x + h * d) - phi(x - h * d)) / (2 * h)
    assert abs(directional) > 1e-3  # the check is not vacuous
    assert directional == pytest.approx(fd, rel=1e-4)


def _setup():
    dae, stats, _ = _tiny_dae()
    clf = linear_classifier(SHAPE)
    x, y = half_images(6, SHAPE)
    return dae, stats, (lambda b: clf(b)), x, y


def test_counter_b_with_lambda_zero_is_pgd_with_the_same_seed():
    dae, stats, fn, x, y = _setup()
    p = purify.Purifier(dae, stats, "B", purify.PurifySettings(n=2))
    s = attacks.AttackSettings(eps=0.1, steps=5, step=0.03, seed=11, lam=0.0)
    ours = attacks.run_attack("weighted", fn, x, y, s, defence=p)
    theirs = attacks.run_attack("pgd", fn, x, y, s)  # cleverhans
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    # and λ matters: a large weight on r(x) changes the examples
    heavy = attacks.run_attack("weighted", fn, x, y, dataclasses.replace(s, lam=100.0), defence=p)
    assert np.abs(heavy - ours).max() > 0.01


def test_full_adaptive_on_the_direct_variant_is_counter_a():
    # the unrolled "direct" purifier is D itself, so the exact gradient is BPDA through D
    dae, stats, fn, x, y = _setup()
    p = purify.Purifier(dae, stats, "direct")
    s = attacks.AttackSettings(eps=0.1, steps=4, step=0.03, seed=2)
    np.testing.assert_allclose(attacks.run_attack("adaptive", fn, x, y, s, defence=p),
                               attacks.run_attack("bpda", fn, x, y, s, defence=p), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["bpda", "weighted", "adaptive", "bpda-eot"])
def test_attacks_on_the_defence_keep_the_budget_and_fool_an_undefended_linear_model(method):
    dae, stats, fn, x, y = _setup()
    p = purify.Purifier(dae, stats, "F", purify.PurifySettings(n=2, alpha=0.01, eps_r=0.01))
    s = attacks.AttackSettings(eps=0.25, steps=6, step=0.08, seed=0, lam=0.1, eot=2)
    x_adv = attacks.run_attack(method, fn, x, y, s, defence=p)
    assert np.abs(x_adv - x).max() <= 0.25 + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert np.abs(x_adv - x).max() > 0.2  # it moved to the budget's edge


def test_a_random_defence_draws_fresh_randomness_per_call_reproducibly_by_seed():
    dae, stats, fn, x, _ = _setup()
    p = purify.Purifier(dae, purify.DaeStats(-10.0, 1.0, 0.5, SHAPE, "mnist", {}), "F",
                        purify.PurifySettings(n=2, alpha=0.01, eps_r=0.05))  # μ far below r: every image gets noise
    model = attacks.DefendedModel(p, lambda b: tf.reshape(b, [len(x), -1]))
    first, second = model(tf.constant(x)).numpy(), model(tf.constant(x)).numpy()
    assert np.abs(first - second).max() > 1e-3  # EOT averages over different draws
    again = attacks.DefendedModel(p, lambda b: tf.reshape(b, [len(x), -1]))
    np.testing.assert_array_equal(again(tf.constant(x)).numpy(), first)  # the same seed, the same draws
    # a deterministic variant is one fixed function
    d = attacks.DefendedModel(purify.Purifier(dae, stats, "D", purify.PurifySettings(n=2)), fn)
    np.testing.assert_array_equal(d(tf.constant(x)).numpy(), d(tf.constant(x)).numpy())


def test_attacks_on_the_defence_need_the_defence():
    _, _, fn, x, y = _setup()
    with pytest.raises(ApudaeError, match="needs the defence"):
        attacks.run_attack("bpda", fn, x, y, attacks.AttackSettings(eps=0.1, steps=1, step=0.1))
