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
print(json.dumps(out))
"""


@pytest.mark.slow
def test_mirrored_training_on_two_devices_matches_one_device():
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": REPO}, cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["one"]["replicas"] == 1 and out["two"]["replicas"] == 2  # the second run really is mirrored
    assert out["one"]["loss"] == pytest.approx(out["two"]["loss"], rel=1e-5)  # two steps, the same losses
    for a, b in zip(out["one"]["weights"], out["two"]["weights"]):
        assert max(abs(p - q) for p, q in zip(_flat(a), _flat(b))) < 1e-5


def _flat(v):
    return [x for e in v for x in _flat(e)] if isinstance(v, list) else [v]
