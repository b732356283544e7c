"""Training under a tf.distribute strategy: two logical CPU devices stand in for two GPUs."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Logical devices must be made before TensorFlow starts, hence a fresh interpreter. The DAE trains with
# the package's own strategy (fitting.strategy, from $APUDAE_DEVICES) and fit (fitting.fit); dropout off,
# since a replica draws its own dropout masks.
SCRIPT = r"""
import json, os, numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from apudae_tf import fitting, models

x = np.random.default_rng(0).random((64, 8, 8, 1)).astype("float32")
target = np.clip(x * 0.8 + 0.1, 0, 1)
out = {}
for name, devices in (("one", ""), ("two", "/cpu:0,/cpu:1")):
    os.environ[fitting.DEVICES_ENV] = devices
    strategy = fitting.strategy()
    keras.utils.set_random_seed(0)
    with strategy.scope():
        dae = models.build_dae((8, 8, 1), filters=8, dropout=0.0)
        dae.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    data = tf.data.Dataset.from_tensor_slices((x, target)).batch(64)
    history = fitting.fit(dae, data, 2, None, {}, "dae", echo=lambda m: None)
    out[name] = {"replicas": strategy.num_replicas_in_sync, "loss": [h["loss"] for h in history],
                 "weights": [np.asarray(w).tolist() for w in dae.get_weights()]}
trained = out
"""


@pytest.fixture(scope="module")
def mirrored():
    """Both scripts in one fresh interpreter (TensorFlow starts once)."""
    res = subprocess.run([sys.executable, "-c", SCRIPT + SCRIPT_PURIFY], capture_output=True, text=True,
                         timeout=900, env={**os.environ, "PYTHONPATH": REPO}, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_mirrored_training_on_two_devices_matches_one_device(mirrored):
    out = mirrored["train"]
    assert out["one"]["replicas"] == 1 and out["two"]["replicas"] == 2  # the second run really is mirrored
    assert out["one"]["loss"] == pytest.approx(out["two"]["loss"], rel=1e-5)  # two steps, the same losses
    for a, b in zip(out["one"]["weights"], out["two"]["weights"]):
        assert max(abs(p - q) for p, q in zip(_flat(a), _flat(b))) < 1e-5


def _flat(v):
    return [x for e in v for x in _flat(e)] if isinstance(v, list) else [v]


# Purification and the attacks' gradients over two logical CPU devices: the batch is split over the
# replicas and put back in order; a deterministic variant gives one device's numbers.
SCRIPT_PURIFY = r"""
from apudae_tf import attacks, purify, store

rng = np.random.default_rng(0)
x = rng.random((7, 8, 8, 1)).astype("float32")  # odd: the replicas get 3 and 4 images
y = np.arange(7) % 3
keras.utils.set_random_seed(0)
dae = models.build_dae((8, 8, 1), filters=8, dropout=0.0)
clf = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
out = {}
for name, devices in (("one", ""), ("two", "/cpu:0,/cpu:1")):
    os.environ[fitting.DEVICES_ENV] = devices
    with fitting.strategy().scope():
        d, c = keras.models.clone_model(dae), keras.models.clone_model(clf)
    d.set_weights(dae.get_weights()); c.set_weights(clf.get_weights())
    stats = store.DaeStats(0.5, 0.1, 0.1, (8, 8, 1), "toy", {})
    res = {"replicas": fitting.strategy().num_replicas_in_sync}
    for v in ("D", "F"):
        p = purify.Purifier(d, stats, v, purify.PurifySettings(n=3, alpha=0.05, eps_r=0.02))
        res[v] = p.purify_array(x, batch_size=7).tolist()
        model = attacks.DefendedModel(p, lambda b: c(b), "exact", seed=1)
        res[v + "_grad"] = attacks.eot_gradient(model, attacks.ce_loss, x, y, y, eot=2)[2].tolist()
    out[name] = res

# randomized smoothing: each batch of noise draws split over the replicas, counted in order
from apudae_tf import smoothing

smoothed = {}
for name, devices in (("one", ""), ("two", "/cpu:0,/cpu:1")):
    os.environ[fitting.DEVICES_ENV] = devices
    with fitting.strategy().scope():
        c = keras.models.clone_model(clf)
    c.set_weights(clf.get_weights())
    s = smoothing.Smoothed(c, 0.5, num_classes=3, batch_size=64)
    cert = s.certify(x[0], n0=50, n=301, alpha=0.01, seed=3, index=0)
    smoothed[name] = {"replicas": fitting.strategy().num_replicas_in_sync,
                      "counts": s.sample_counts(x[1], 301, smoothing.noise_seed(3, 1, 1)).tolist(),
                      "certificate": [cert.prediction, cert.radius, cert.n_a]}
print(json.dumps({"train": trained, "purify": out, "smoothing": smoothed}))
"""


@pytest.mark.slow
def test_purification_and_attack_gradients_over_two_devices(mirrored):
    import numpy as np

    one, two = mirrored["purify"]["one"], mirrored["purify"]["two"]
    assert (one["replicas"], two["replicas"]) == (1, 2)
    np.testing.assert_allclose(two["D"], one["D"], atol=1e-5)
    grad = np.asarray(one["D_grad"])
    assert np.abs(grad).max() > 0
    np.testing.assert_allclose(two["D_grad"], grad, atol=1e-5 * np.abs(grad).max())
    # F draws its noise per replica: purified, and attacked through, but not one device's draws
    f1, f2 = np.asarray(one["F"]), np.asarray(two["F"])
    assert f2.shape == f1.shape and 0 <= f2.min() and f2.max() <= 1 and np.abs(np.asarray(two["F_grad"])).max() > 0


@pytest.mark.slow
def test_certification_over_two_devices_draws_and_counts_as_one(mirrored):
    one, two = mirrored["smoothing"]["one"], mirrored["smoothing"]["two"]
    assert (one["replicas"], two["replicas"]) == (1, 2)
    assert sum(one["counts"]) == 301 and one["counts"] == two["counts"]  # the same draws, the same votes
    assert one["certificate"] == two["certificate"]
