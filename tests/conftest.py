import os

import numpy as np
import pytest

SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


def data_dir():
    """The offline dataset folder, if this machine has one."""
    d = os.environ.get("APUDAE_DATA_DIR") or SHARED_DATA
    return d if os.path.isfile(os.path.join(d, "mnist.npz")) else None


needs_mnist = pytest.mark.skipif(data_dir() is None, reason="no offline mnist.npz (set APUDAE_DATA_DIR)")


@pytest.fixture
def tiny_npz(tmp_path):
    """A user's own dataset in the documented npz layout: 200 train, 50 test 28x28 images."""
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, (200, 28, 28), dtype=np.uint8),
        y_train=rng.integers(0, 10, 200).astype(np.uint8),
        x_test=rng.integers(0, 256, (50, 28, 28), dtype=np.uint8),
        y_test=rng.integers(0, 10, 50).astype(np.uint8),
    )
    return str(path)
