"""Dataset loading: layouts, the validation split, and errors for bad files."""

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import data_dir

from apudae_tf import data
from apudae_tf.errors import ApudaeError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_user_npz_loads_as_float_nhwc_with_a_fixed_val_split(tiny_npz):
    ds = data.load_dataset(f"npz:{tiny_npz}")
    assert ds.x_train.dtype == np.float32 and ds.x_train.shape[1:] == (28, 28, 1)
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    assert len(ds.x_train) + len(ds.x_val) == 200 and len(ds.x_val) == 20 and len(ds.x_test) == 50
    again = data.load_dataset(f"npz:{tiny_npz}")
    np.testing.assert_array_equal(ds.x_val, again.x_val)
    # val images are carved out of train, not shared with it
    train_rows = {row.tobytes() for row in ds.x_train}
    assert not any(row.tobytes() in train_rows for row in ds.x_val)


def test_nhwc_rgb_npz(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "rgb.npz"
    np.savez(p, x_train=rng.integers(0, 256, (30, 8, 8, 3), dtype=np.uint8), y_train=np.arange(30) % 3,
             x_test=rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8), y_test=np.arange(5) % 3)
    ds = data.load_dataset(f"npz:{p}")
    assert ds.image_shape == (8, 8, 3) and ds.num_classes == 3


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("truncated", "not a readable npz"),
        ("missing_key", "lacks the key"),
        ("float_images", "must be uint8"),
        ("pickled", "not a readable npz"),
        ("bad_labels", "one per image"),
    ],
)
def test_malformed_npz_is_a_clear_error(tmp_path, tiny_npz, case, pattern):
    p = tmp_path / f"{case}.npz"
    arrays = dict(np.load(tiny_npz))
    if case == "truncated":
        p.write_bytes(open(tiny_npz, "rb").read()[:1000])
    else:
        if case == "missing_key":
            del arrays["y_test"]
        elif case == "float_images":
            arrays["x_train"] = arrays["x_train"].astype(np.float32)
        elif case == "pickled":
            arrays["y_train"] = np.array([{"a": 1}] * 200, dtype=object)
        elif case == "bad_labels":
            arrays["y_test"] = arrays["y_test"][:10]
        np.savez(p, **arrays)
    with pytest.raises(ApudaeError, match=pattern):
        data.load_dataset(f"npz:{p}")


def test_unknown_dataset_and_missing_folder(tmp_path):
    with pytest.raises(ApudaeError, match="unknown dataset"):
        data.load_dataset("svhn")
    with pytest.raises(ApudaeError, match=r"no mnist.npz in .*APUDAE_DATA_DIR"):
        data.load_dataset("mnist", data_dir=str(tmp_path))


def _cli(*args, env=None):
    return subprocess.run([sys.executable, os.path.join(REPO, "cli.py"), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


@pytest.mark.parametrize(
    "args, env",
    [
        (["train", "mnist", "--data-dir", "/nonexistent-apudae"], {}),
        (["train", "npz:/nonexistent-apudae/x.npz"], {}),
        (["info", "mnist"], {"APUDAE_DATA_DIR": "/nonexistent-apudae"}),
    ],
)
@pytest.mark.slow
def test_cli_missing_data_is_one_line_and_nonzero(args, env):
    res = _cli(*args, env=env)
    assert res.returncode == 2
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert lines[-1].startswith("error: ") and "Traceback" not in res.stderr, res.stderr
    assert len([l for l in lines if l.startswith("error")]) == 1


@pytest.mark.slow
def test_cli_malformed_npz_is_one_line_and_nonzero(tmp_path):
    p = tmp_path / "broken.npz"
    p.write_bytes(b"PK\x03\x04 this is not a zip archive")
    res = _cli("train", f"npz:{p}", "--eps", "0.1", "--steps", "10", "--step", "0.01", "--sigma-max", "0.2")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith(f"error: {p} is not a readable npz file")


def test_offline_mnist_is_the_exact_dataset():
    ds = data.load_dataset("mnist", data_dir())
    assert ds.x_test.shape == (10000, 28, 28, 1) and len(ds.x_train) == 55000 and len(ds.x_val) == 5000
    assert np.bincount(ds.y_test).tolist()[:3] == [980, 1135, 1032]
