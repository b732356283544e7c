"""Attacks (spec §4): budgets, [0, 1], and that they actually fool a model they should fool."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import half_images, linear_classifier

from apudae_tf import attacks

EPS = 0.2


@pytest.fixture(scope="module")
def setup():
    model = linear_classifier()
    x, y = half_images(12)
    fn = lambda z: model(z, training=False)  # noqa: E731
    assert np.mean(np.argmax(fn(x).numpy(), 1) == y) == 1.0
    return fn, x, y


@pytest.mark.parametrize("method", ["random", "fgsm", "r-fgsm", "pgd", "cw"])
def test_attack_respects_budget_and_range(setup, method):
    fn, x, y = setup
    s = attacks.AttackSettings(eps=EPS, steps=10, step=0.05)
    x_adv = attacks.run_attack(method, fn, x, y, s, batch_size=5)
    assert x_adv.shape == x.shape and x_adv.dtype == np.float32
    assert np.abs(x_adv - x).max() <= EPS + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert np.abs(x_adv - x).max() > 0.5 * EPS  # it moved


@pytest.mark.parametrize("method", ["fgsm", "pgd", "cw"])
def test_gradient_attacks_fool_the_linear_model(setup, method):
    fn, x, y = setup
    s = attacks.AttackSettings(eps=EPS, steps=10, step=0.05)
    x_adv = attacks.run_attack(method, fn, x, y, s)
    assert np.mean(np.argmax(fn(x_adv).numpy(), 1) == y) == 0.0


@pytest.mark.slow
def test_cw_l2_works_on_keras3_across_batch_sizes_and_rgb():
    # batches of 5 then 2 images: cleverhans' optimizer would only know the first batch's variable
    for shape in ((8, 8, 1), (8, 8, 3)):
        model = linear_classifier(shape)
        x, y = half_images(7, shape)
        s = attacks.AttackSettings(eps=1.0, steps=60, step=0.0)
        x_adv = attacks.run_attack("cw-l2", lambda z: model(z), x, y, s, batch_size=5)
        assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
        assert np.mean(np.argmax(model(x_adv).numpy(), 1) == y) <= 0.15
        l2 = np.sqrt(((x_adv - x) ** 2).sum(axis=(1, 2, 3)))
        # the smallest flip moves every pixel by about 0.15 (half the 0.3 contrast): L2 = 0.15·√pixels;
        # CW must stay within twice that, far below a saturating change
        assert l2.max() < 2 * 0.15 * np.sqrt(np.prod(shape))


def test_random_attacks_are_seeded(setup):
    fn, x, y = setup
    for method in ("random", "r-fgsm", "pgd"):
        a = attacks.run_attack(method, fn, x, y, attacks.AttackSettings(EPS, 3, 0.05, seed=1))
        b = attacks.run_attack(method, fn, x, y, attacks.AttackSettings(EPS, 3, 0.05, seed=1))
        c = attacks.run_attack(method, fn, x, y, attacks.AttackSettings(EPS, 3, 0.05, seed=2))
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c), method


def test_presets_and_overrides():
    assert attacks.preset("mnist") == attacks.AttackSettings(eps=0.3, steps=40, step=0.01)
    c = attacks.preset("cifar10")
    assert np.isclose(c.eps, 8 / 255) and c.steps == 7 and np.isclose(c.step, 2 / 255)
    assert attacks.preset("mnist", eps=0.1).step == pytest.approx(0.01 / 3)
    with pytest.raises(attacks.ApudaeError, match=r"--eps -1 is outside \(0, 1\]"):
        attacks.preset("mnist", eps=-1)
    with pytest.raises(attacks.ApudaeError, match="no profile for dataset 'svhn'"):
        attacks.preset("svhn")


def test_project_is_the_linf_ball_and_box():
    x = tf.constant([[0.0, 0.5, 1.0]])
    out = attacks.project(tf.constant([[-0.5, 0.9, 0.8]]), x, 0.25).numpy()
    np.testing.assert_allclose(out, [[0.0, 0.75, 0.8]])


def test_none_returns_the_clean_images(setup):
    fn, x, y = setup
    np.testing.assert_array_equal(attacks.run_attack("none", fn, x, y, attacks.AttackSettings(EPS, 1, 0.1)), x)
    with pytest.raises(attacks.ApudaeError, match="unknown attack"):
        attacks.run_attack("deepfool", fn, x, y, attacks.AttackSettings(EPS, 1, 0.1))
