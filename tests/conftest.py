import os

import numpy as np
import pytest

SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


def data_dir():
    """The offline dataset folder, if this machine has one (MNIST needs none: it is inside the package)."""
    d = os.environ.get("APUDAE_DATA_DIR") or SHARED_DATA
    return d if os.path.isfile(os.path.join(d, "mnist.npz")) else None


needs_cifar10 = pytest.mark.skipif(data_dir() is None or not os.path.isfile(os.path.join(data_dir(), "cifar10.npz")),
                                   reason="no offline cifar10.npz (set APUDAE_DATA_DIR)")


@pytest.fixture(autouse=True)
def _work_in_a_temporary_folder(tmp_path, monkeypatch):
    """Every test runs in its own folder: a command's default outputs (./apudae-runs) never land in the
    repository. Profiles a test declares are forgotten after it."""
    from apudae_tf import profiles

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(profiles, "REGISTRY", dict(profiles.REGISTRY))


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


def linear_classifier(shape=(8, 8, 1)):
    """A hand-set 2-class linear model: class 1 when the left half is brighter than the right.

    Gradient attacks must be able to flip it within a small budget, so tests can assert they do.
    """
    import keras

    h, w, c = shape
    weights = np.zeros((h, w, c, 2), np.float32)
    weights[:, : w // 2, :, 1] = 1.0
    weights[:, w // 2 :, :, 0] = 1.0
    model = keras.Sequential([keras.Input(shape), keras.layers.Flatten(), keras.layers.Dense(2, use_bias=False)])
    model.layers[-1].set_weights([weights.reshape(-1, 2) * (10.0 / (h * w * c))])
    return model


def half_images(n, shape=(8, 8, 1), seed=0):
    """Images the linear classifier gets right: label 1 = bright left half, 0 = bright right half."""
    rng = np.random.default_rng(seed)
    h, w, c = shape
    x = rng.uniform(0.2, 0.4, (n, h, w, c)).astype(np.float32)
    y = np.arange(n) % 2
    x[y == 1, :, : w // 2] += 0.3
    x[y == 0, :, w // 2 :] += 0.3
    return x, y.astype(np.int64)


def _untrained_models(folder, dataset, shape, arch, sigma_max):
    """A model folder with an untrained classifier and DAE, and statistics measured on noise."""
    from apudae_tf import denoisers, models, store

    x = np.random.default_rng(0).random((64, *shape), dtype=np.float32)
    dae = models.build_dae(shape)
    mu, sigma = denoisers.clean_error_stats(dae, x)
    store.save_model(models.build_classifier(arch, shape, 10), str(folder / store.CLASSIFIER))
    store.save_model(dae, str(folder / store.DAE))
    store.write_json(str(folder / store.DAE_STATS), store.DaeStats(mu, sigma, sigma_max, shape, dataset, {}).to_json())
    return str(folder)


@pytest.fixture
def tiny_models(tmp_path):
    """Untrained MNIST-shaped models (28x28x1, the small CNN)."""
    return _untrained_models(tmp_path / "models", "mnist", (28, 28, 1), "cnn", 0.5)


@pytest.fixture
def tiny_cifar_models(tmp_path):
    """Untrained CIFAR-10-shaped models (32x32x3, ResNet-20)."""
    return _untrained_models(tmp_path / "cifar_models", "cifar10", (32, 32, 3), "resnet20", 0.1)


def saved_accuracy(path, x, y) -> float:
    """The accuracy of the model saved at ``path`` on (x, y), computed afresh: what a summary must report."""
    from apudae_tf import models, store

    fn = models.inference_fn(store.load_model(path))
    return float(np.mean(np.argmax(models.predict_in_batches(fn, x), 1) == y))
