"""The AutoAttack-grade attacks: APGD (CE, DLR, targeted DLR) and Square. Budgets and range, APGD's
step-size schedule, Square's independence from gradients, and APGD against PGD on one tiny model."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from apudae_tf import attacks
from apudae_tf.errors import ApudaeError

SHAPE = (8, 8, 1)


@pytest.fixture(scope="module")
def tiny():
    """A random 10-class MLP and 200 images labelled with its own answers (clean accuracy 1)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(10)])
    fn = lambda z: model(z, training=False)  # noqa: E731
    x = np.random.default_rng(0).random((200, *SHAPE), dtype=np.float32)
    y = np.argmax(fn(x).numpy(), 1).astype(np.int64)
    return model, fn, x, y


def _accuracy(fn, x, y):
    return float(np.mean(np.argmax(fn(x).numpy(), 1) == y))


@pytest.mark.parametrize("method", ["apgd-ce", "apgd-dlr", "apgd-t", "square"])
def test_the_attacks_keep_the_budget_and_the_range(tiny, method):
    _, fn, x, y = tiny
    eps = 0.05
    s = attacks.AttackSettings(eps=eps, steps=300 if method == "square" else 20, step=eps, targets=2)
    x_adv = attacks.run_attack(method, fn, x[:60], y[:60], s, batch_size=25)
    assert x_adv.shape == x[:60].shape and x_adv.dtype == np.float32
    assert np.abs(x_adv - x[:60]).max() <= eps + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert _accuracy(fn, x_adv, y[:60]) < 0.5  # and they attack: at ε = 0.05 most of these images fall


def test_apgd_checkpoints_are_the_papers():
    # Croce & Hein 2020, §3.2: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06), w_j = ⌈p_j N⌉
    assert attacks.apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert attacks.apgd_checkpoints(50) == [11, 21, 29, 35, 40, 44, 47]


def test_apgd_halves_its_step_at_the_checkpoints_and_only_there():
    # a model whose loss never changes: condition 1 (too few increases) holds at every checkpoint
    flat = lambda z: tf.zeros([tf.shape(z)[0], 10]) + 0.0 * tf.reduce_sum(z)  # noqa: E731
    x = np.random.default_rng(1).random((3, *SHAPE), dtype=np.float32)
    y = np.zeros(3, np.int64)
    trace = {}
    attacks.apgd_run(flat, attacks.ce_loss, x, y, y, x.copy(), eps=0.1, n_iter=100, trace=trace, early_stop=False)
    eta = np.array(trace["eta"])[:, 0]  # per iteration, image 0
    changed = [k for k in range(1, len(eta)) if eta[k] != eta[k - 1]]
    assert changed == attacks.apgd_checkpoints(100)
    assert eta[0] == pytest.approx(0.2) and np.allclose(eta[changed], 0.2 / 2 ** np.arange(1, len(changed) + 1))


def test_apgd_halves_on_either_of_the_papers_two_conditions_and_not_otherwise():
    interval = 20  # 0.75 · 20 = 15 increases are enough
    increases = np.array([15, 14, 20, 20])
    halved_last = np.array([False, False, False, True])
    f_max_checked = np.array([1.0, 1.0, 1.0, 1.0])
    f_max = np.array([1.5, 1.5, 1.0, 1.0])  # images 2 and 3 have not improved since the last checkpoint
    halve = attacks.apgd_halve(increases, interval, halved_last, f_max, f_max_checked)
    # 0: enough increases and improved: keep; 1: too few increases (condition 1); 2: no improvement and
    # not halved last time (condition 2); 3: no improvement, but halved last time: keep
    assert halve.tolist() == [False, True, True, False]


def test_square_needs_no_gradient(tiny):
    model, _, x, y = tiny
    masked = lambda z: model(tf.stop_gradient(z), training=False)  # noqa: E731  the gradient is zero everywhere
    x, y = x[:100], y[:100]
    s = attacks.AttackSettings(eps=0.05, steps=300, step=0.05)
    with tf.GradientTape() as tape:
        z = tf.constant(x)
        tape.watch(z)
        out = tf.reduce_sum(masked(z))
    assert tape.gradient(out, z, unconnected_gradients=tf.UnconnectedGradients.ZERO).numpy().max() == 0.0
    apgd = _accuracy(masked, attacks.run_attack("apgd-ce", masked, x, y, s), y)
    square = _accuracy(masked, attacks.run_attack("square", masked, x, y, s), y)
    assert apgd >= 0.9  # a gradient attack is blind here (it moves only by its random start)
    assert square <= 0.3 and square < apgd - 0.5


class _Coin:
    """A random model that ignores its input: right with margin +1 for 80 % of draws, wrong with
    margin −1 for the rest (independent per image and call). Its expected margin is +0.6, so an honest
    score says "not fooled" forever; a single draw says "fooled" within a few queries."""

    is_random = True

    def __init__(self):
        self.scored, self.rng = 0, np.random.default_rng(1)  # image-draws scored

    def __call__(self, x):
        self.scored += len(x)
        sign = np.where(self.rng.random(len(x)) < 0.8, 1.0, -1.0).astype(np.float32)
        return tf.constant(np.stack([sign, np.zeros_like(sign)], 1))


def test_square_averages_the_scores_of_a_random_model_over_its_eot_draws():
    x, y = np.full((4, *SHAPE), 0.5, np.float32), np.zeros(4, np.int64)
    one, many = _Coin(), _Coin()
    attacks.square(one, x, y, attacks.AttackSettings(eps=0.1, steps=50, step=0.1, eot=1))
    attacks.square(many, x, y, attacks.AttackSettings(eps=0.1, steps=50, step=0.1, eot=64))
    assert one.scored < 50 * 4  # one draw: every image "fell" to a lucky sample and its search stopped early
    assert many.scored == 50 * 4 * 64  # the mean of 64 draws (+0.6 ± 0.1) never says fooled: every query is spent


def test_apgd_is_at_least_as_strong_as_pgd_with_the_same_budget(tiny):
    _, fn, x, y = tiny
    eps, steps = 0.02, 20
    pgd = attacks.run_attack("pgd", fn, x, y, attacks.AttackSettings(eps, steps, eps / 4, seed=0))
    apgd = attacks.run_attack("apgd-ce", fn, x, y, attacks.AttackSettings(eps, steps, eps, seed=0))
    targeted = attacks.run_attack("apgd-t", fn, x, y, attacks.AttackSettings(eps, steps, eps, seed=0, targets=3))
    assert 0.3 < _accuracy(fn, pgd, y) < 0.9  # the comparison is not decided by a trivial budget
    assert _accuracy(fn, apgd, y) <= _accuracy(fn, pgd, y)
    assert _accuracy(fn, targeted, y) < _accuracy(fn, apgd, y)  # the DLR loss reaches images CE does not


def test_dlr_losses_need_enough_classes_and_are_scale_invariant():
    logits = tf.constant([[3.0, 1.0, 0.5, -1.0], [0.0, 2.0, 1.0, 0.5]])
    y, t = tf.constant([0, 0]), tf.constant([1, 2])
    np.testing.assert_allclose(attacks.dlr_loss(10 * logits + 4, y).numpy(), attacks.dlr_loss(logits, y).numpy(),
                               rtol=1e-5)
    np.testing.assert_allclose(attacks.dlr_targeted_loss(10 * logits - 2, y, t).numpy(),
                               attacks.dlr_targeted_loss(logits, y, t).numpy(), rtol=1e-5)
    assert attacks.dlr_loss(logits, y).numpy()[0] == pytest.approx(-(3.0 - 1.0) / (3.0 - 0.5))
    two = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(2)])
    x = np.zeros((2, *SHAPE), np.float32)
    with pytest.raises(ApudaeError, match="at least 4 classes"):
        attacks.run_attack("apgd-t", lambda z: two(z), x, np.zeros(2), attacks.AttackSettings(0.1, 2, 0.1))


def test_the_square_schedule_halves_p_at_the_papers_queries():
    p = [attacks.square_p(0.8, i, 10000) for i in (0, 10, 11, 50, 51, 8000, 8001)]
    assert p == [0.8, 0.8, 0.4, 0.4, 0.2, 0.8 / 2**8, 0.8 / 2**9]
    assert attacks.square_p(0.8, 100, 1000) == attacks.square_p(0.8, 1000, 10000)  # rescaled to the budget
