"""The public Python API: ``apudae_tf.evaluate`` on any classifier behind any defence, the ``Defence``
protocol's adapters, the gradient check, and ``Evaluation`` as data."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import apudae_tf as A
from apudae_tf import defences
from apudae_tf.errors import ApudaeError

SHAPE = (8, 8, 1)


@pytest.fixture(scope="module")
def tiny():
    """A random 10-class MLP and 60 images labelled with its own answers (clean accuracy 1)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(10)])
    x = np.random.default_rng(0).random((60, *SHAPE), dtype=np.float32)
    y = np.argmax(model(x).numpy(), 1).astype(np.int64)
    return model, x, y


def quantize(t, seed=None):
    return tf.round(t * 255) / 255


def test_a_quantizer_is_no_more_robust_than_the_bare_classifier(tiny):
    model, x, y = tiny
    tm = A.ThreatModel(norm="linf", eps=0.03)
    bare = A.evaluate(model, x, y, threat_model=tm, budget="fast")
    quant = A.evaluate(model, x, y, defence=quantize, threat_model=tm, budget="fast")
    assert 0 < bare.worst_case < 1  # the budget leaves some images: the comparison means something
    assert quant.worst_case <= bare.worst_case + 0.03
    assert quant.gradient == "bpda" and bare.gradient == "white box"
    assert set(bare.columns) == {"clean", "pgd", "apgd-ce", "apgd-t", "square"}
    assert bare.robust.dtype == bool and bare.robust.mean() == pytest.approx(bare.worst_case)


@tf.custom_gradient
def nan_backward(t):
    """The identity forward, NaN backward: what a division by zero in a defence's gradient looks like."""
    return tf.identity(t), lambda dy: dy * float("nan")


def _as_keras(fn, name):
    inp = keras.Input(SHAPE)
    return keras.Model(inp, keras.layers.Lambda(fn)(inp), name=name)


@pytest.mark.parametrize("fn,status", [(lambda t: tf.round(t * 255) / 255, "zero"),
                                       (lambda t: nan_backward(t), "non-finite"),
                                       (lambda t: 0.5 * t + 0.25, "ok")])
def test_the_gradient_check_flags_zero_and_non_finite_gradients(tiny, fn, status):
    model, x, y = tiny
    d = defences.as_defence(_as_keras(fn, f"defence_{status.replace('-', '_')}"))
    assert d.function is not None  # a Keras model is differentiable ...
    check = defences.check_gradient(d, lambda b: model(b), x, y)
    assert check.status == status  # ... but its gradient is checked before an attack trusts it
    if status != "ok":
        e = A.evaluate(model, x[:20], y[:20], defence=d, threat_model=A.ThreatModel(eps=0.03), budget="fast")
        assert e.gradient_check["status"] == status and e.gradient.startswith("bpda")


def test_a_keras_defence_gets_the_exact_gradient(tiny):
    """The gradient an attack takes through a Keras-model defence equals a finite difference of the loss."""
    model, x, y = tiny
    keras.utils.set_random_seed(1)
    inp = keras.Input(SHAPE)
    smooth = keras.Model(inp, keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inp))
    d = defences.as_defence(smooth)
    attacked, _ = d.attack_model(lambda b: model(b), defences_settings())
    from apudae_tf import attacks

    value, _, grad = attacks.eot_gradient(attacked, attacks.ce_loss, x[:4], y[:4], y[:4])
    rng = np.random.default_rng(0)
    v = rng.standard_normal(x[:4].shape).astype(np.float32)
    h = 1e-3  # small beside the ReLU kinks, large beside float32 round-off on losses of ~1

    def loss(z):
        return float(np.sum(attacks.ce_loss(model(smooth(z)), y[:4]).numpy().astype(np.float64)))

    fd = (loss(x[:4] + h * v) - loss(x[:4] - h * v)) / (2 * h)
    assert np.sum(grad * v) == pytest.approx(fd, rel=2e-2)
    assert np.abs(grad).max() > 0


def defences_settings():
    from apudae_tf import attacks

    return attacks.AttackSettings(eps=0.03, steps=1, step=0.03)


def test_evaluation_round_trips_through_json(tiny):
    model, x, y = tiny
    e = A.evaluate(model, x[:12], y[:12], threat_model=A.ThreatModel(norm="l2", eps=0.5), budget="fast")
    again = A.Evaluation.from_json(json.loads(json.dumps(e.to_json())))
    assert again.worst_case == e.worst_case and again.columns == e.columns
    assert np.array_equal(again.robust, e.robust) and again.threat_model["norm"] == "l2"


def test_echo_hears_each_attack_start_and_finish(tiny):
    """A Python caller's ``echo`` gets the progress lines the command line prints in a log: each attack's start
    and end (and a heartbeat while one runs long), beside each cell's result."""
    model, x, y = tiny
    heard = []
    A.evaluate(model, x[:12], y[:12], threat_model=A.ThreatModel(eps=0.03, steps=2), echo=heard.append,
               budget=A.Budget(apgd_steps=2, targets=1, square_queries=5, eot=1))
    assert "pgd on classifier (12 images): 0/12" in heard
    assert any(m.startswith("pgd on classifier (12 images): 12/12 done in") for m in heard), heard
    assert sum(m.startswith("[") for m in heard) == 5  # the cells: clean, pgd, apgd-ce, apgd-t, square


def test_bad_inputs_are_one_clear_error(tiny):
    model, x, y = tiny
    with pytest.raises(ApudaeError, match="budget 'huge'"):
        A.evaluate(model, x, y, threat_model=A.ThreatModel(eps=0.1), budget="huge")
    with pytest.raises(ApudaeError, match=r"\[0, 1\]"):
        A.evaluate(model, x * 3, y, threat_model=A.ThreatModel(eps=0.1))
    with pytest.raises(ApudaeError, match="norm 'l3'"):
        A.evaluate(model, x, y, threat_model=A.ThreatModel(eps=0.1, norm="l3"))


def test_load_defence_gives_the_variant_chosen_on_validation():
    d = A.load_defence("mnist")
    assert isinstance(d, A.Purifier) and isinstance(d, A.Defence) and d.variant == "D"
    assert A.load_defence("mnist", variant="B").variant == "B"
    with pytest.raises(ApudaeError, match="no model folder"):
        A.load_defence("svhn")
