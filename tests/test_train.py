"""DAE training (eq. 5) on a small subset, the clean error statistics (spec §2), and the training parts' dispatch."""

import os

import numpy as np
import pytest
import tensorflow as tf

from apudae_tf import denoisers, models, train
from apudae_tf.errors import ApudaeError


def _digits(n, seed):
    """Synthetic 'digits': blurred random strokes, structured enough for a DAE to learn."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 28, 28, 1), np.float32)
    for i in range(n):
        r, c = rng.integers(4, 24, 2)
        x[i, r - 3 : r + 3, 4:24] = 1.0 if i % 2 else 0.0
        x[i, 4:24, c - 2 : c + 2] = 1.0
    return x


@pytest.mark.slow
def test_dae_training_lowers_the_loss():
    x_train, x_val = _digits(512, 0), _digits(128, 1)
    noisy = next(iter(denoisers.noisy_pairs(x_val, 0.5, 128, seed=3)))  # one fixed noisy batch

    def loss(dae):
        return float(tf.reduce_mean(tf.square(dae(noisy[0], training=False) - noisy[1])))

    tf.keras.utils.set_random_seed(0)
    before = loss(models.build_dae((28, 28, 1)))
    dae = denoisers.train_dae(x_train, x_val, 0.5, train.TrainSettings(epochs=3, batch_size=64, learning_rate=3e-3))
    after = loss(dae)
    assert after < 0.5 * before, (before, after)


def test_mixed_precision_trains_the_dae_and_saves_it_in_float32():
    import keras

    x_train, x_val = _digits(128, 0), _digits(32, 1)
    settings = train.TrainSettings(epochs=2, batch_size=32, learning_rate=3e-3, mixed_precision=True)
    dae = denoisers.train_dae(x_train, x_val, 0.5, settings, filters=8)
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    assert {layer.dtype_policy.name for layer in dae.layers} == {"float32"}  # a float32 model ...
    out = dae(x_val[:8], training=False)
    assert out.dtype == tf.float32
    # ... that learned: better than the untrained model of the same width
    tf.keras.utils.set_random_seed(0)
    untrained = models.build_dae((28, 28, 1), filters=8)
    err = float(tf.reduce_mean(tf.square(out - x_val[:8])))
    assert err < float(tf.reduce_mean(tf.square(untrained(x_val[:8], training=False) - x_val[:8])))


def test_noise_is_per_image_and_bounded():
    x = np.full((64, 28, 28, 1), 0.5, np.float32)
    noisy, clean = next(iter(denoisers.noisy_pairs(x, 0.5, 64, seed=0)))
    assert float(tf.reduce_min(noisy)) >= 0.0 and float(tf.reduce_max(noisy)) <= 1.0
    np.testing.assert_array_equal(clean.numpy(), x)
    spread = tf.math.reduce_std(noisy - clean, axis=[1, 2, 3]).numpy()
    # σ ~ U(0, 0.5) per image: the images' noise levels differ widely
    assert spread.min() < 0.1 and spread.max() > 0.3


def test_clean_error_stats_are_mean_and_std_of_r():
    dae = models.build_dae((28, 28, 1))
    x = _digits(40, 5)
    mu, sigma = denoisers.clean_error_stats(dae, x)
    r = models.reconstruction_error(dae, x).numpy()
    assert np.isclose(mu, r.mean(), rtol=1e-5) and np.isclose(sigma, r.std(), rtol=1e-5)


def test_plus_noise_puts_half_the_images_on_linf_ball_corners():
    tf.keras.utils.set_random_seed(0)
    x = np.full((200, 28, 28, 1), 0.5, np.float32)
    delta = (denoisers.add_noise(tf.constant(x), 0.5, linf_max=0.4) - x).numpy().reshape(200, -1)
    corners = np.array([np.allclose(np.abs(d), np.abs(d[0]), atol=1e-6) for d in delta])  # |δ| = ε everywhere
    assert 0.3 < corners.mean() < 0.7
    assert np.abs(delta[corners]).max() <= 0.4 + 1e-6
    paper = (denoisers.add_noise(tf.constant(x), 0.5) - x).numpy().reshape(200, -1)
    assert not any(np.allclose(np.abs(d), np.abs(d[0]), atol=1e-6) for d in paper)


@pytest.mark.slow
def test_plus_recipe_trains_the_dae_first_and_the_classifier_on_its_outputs(tiny_npz, tmp_path):
    from apudae_tf import data, profiles, store

    ds = data.load_dataset(f"npz:{tiny_npz}")
    profiles.declare(ds.name, 0.3, 40, 0.01, 0.5)
    out = str(tmp_path / "m")
    s = train.TrainSettings(epochs=1, batch_size=64)
    train.train(ds, "dae", out, s, echo=lambda m: None, recipe="plus")
    stats = store.load_stats(out)
    assert stats.training["recipe"] == "plus" and stats.training["linf_max"] == 0.0  # a declared profile: none
    summary = train.train(ds, "classifier", out, s, echo=lambda m: None, recipe="plus")
    from conftest import saved_accuracy

    assert summary["classifier_test_accuracy"] == pytest.approx(
        saved_accuracy(os.path.join(out, store.CLASSIFIER), ds.x_test, ds.y_test))
    with pytest.raises(ApudaeError, match="no model folder"):  # plus needs the DAE trained first
        train.train(ds, "classifier", str(tmp_path / "empty"), s, echo=lambda m: None, recipe="plus")


def test_given_pairs_join_the_noisy_pairs_unchanged():
    x = np.full((10, 28, 28, 1), 0.5, np.float32)
    adv, clean = np.zeros((4, 28, 28, 1), np.float32), np.ones((4, 28, 28, 1), np.float32)
    inputs, targets = next(iter(denoisers.noisy_pairs(x, 0.5, 14, seed=0, given=(adv, clean))))
    fixed = targets.numpy().reshape(14, -1).mean(1) == 1.0
    assert fixed.sum() == 4
    np.testing.assert_array_equal(inputs.numpy()[fixed], adv)


@pytest.mark.slow
def test_adv_dae_recipe_trains_on_pgd_examples_of_the_classifier(tiny_npz, tmp_path, monkeypatch):
    from apudae_tf import attacks, data, profiles, store

    monkeypatch.setattr(denoisers, "ADV_DAE_IMAGES", 32)
    ds = data.load_dataset(f"npz:{tiny_npz}")
    # user data declares its threat model (the CLI's --eps, --steps, --step, --sigma-max)
    profiles.declare(ds.name, 0.3, 40, 0.01, 0.5)
    out = str(tmp_path / "m")
    s = train.TrainSettings(epochs=1, batch_size=64)
    assert train.train_order("adv-dae") == ["classifier", "dae"]
    with pytest.raises(ApudaeError, match="no model folder"):  # needs the classifier first
        train.train(ds, "dae", out, s, echo=lambda m: None, recipe="adv-dae")
    train.train(ds, "classifier", out, s, echo=lambda m: None, recipe="adv-dae")
    clf = store.load_models(out, need=("classifier",)).classifier
    x_adv, x = denoisers.adversarial_pairs(clf, ds, 32, seed=1)
    eps = attacks.preset(ds.name).eps
    assert x_adv.shape == x.shape == (32, 28, 28, 1)
    assert np.abs(x_adv - x).max() <= eps + 1e-6 and np.abs(x_adv - x).max() > 0
    import click

    seen = []

    def bar(length, label):
        seen.append(length)
        return click.progressbar(length=length, label=label, file=open(os.devnull, "w"))

    train.train(ds, "dae", out, s, echo=lambda m: None, recipe="adv-dae", progress_bar=bar)
    assert store.load_stats(out).training["adversarial_images"] == 32 and seen == [32]
    # `all` trains the parts in the recipe's order: the classifier the DAE's PGD examples need first
    both = str(tmp_path / "all")
    train.train(ds, "all", both, s, echo=lambda m: None, recipe="adv-dae")
    assert store.load_stats(both).training["adversarial_images"] == 32
    # adv-mix adds one-step FGSM examples of the next training images: exactly ε from the clean image
    monkeypatch.setattr(denoisers, "ADV_MIX_FGSM_IMAGES", 16)
    x_fgsm, x_next = denoisers.adversarial_pairs(clf, ds, 16, seed=1, method="fgsm", start=32)
    np.testing.assert_array_equal(x_next, ds.x_train[32:48])
    d = np.abs(x_fgsm - x_next)
    assert d.max() <= eps + 1e-6 and np.mean(np.isclose(d, eps, atol=1e-5) | (x_fgsm == 0) | (x_fgsm == 1)) > 0.99
    train.train(ds, "dae", out, s, echo=lambda m: None, recipe="adv-mix")
    assert store.load_stats(out).training["adversarial_images"] == 48


def test_a_dataset_without_a_profile_is_one_clear_error_never_another_datasets_values(tiny_npz, tmp_path):
    from apudae_tf import data

    ds = data.load_dataset(f"npz:{tiny_npz}")
    out = str(tmp_path / "m")
    s = train.TrainSettings(epochs=1, batch_size=64)
    for part in ("classifier", "dae"):
        with pytest.raises(ApudaeError, match="no profile for dataset 'tiny': declare its threat model"):
            train.train(ds, part, out, s, echo=lambda m: None, recipe="adv-dae")


@pytest.mark.slow
def test_a_wider_dae_is_built_trained_and_recorded_with_its_width(tiny_npz, tmp_path):
    from apudae_tf import data, profiles, store

    ds = data.load_dataset(f"npz:{tiny_npz}")
    profiles.declare(ds.name, 0.3, 40, 0.01, 0.5)
    out = str(tmp_path / "w")
    train.train(ds, "dae", out, train.TrainSettings(epochs=1, batch_size=64, dae_filters=16), echo=lambda m: None)
    assert store.load_stats(out).training["filters"] == 16
    dae = store.load_model(os.path.join(out, store.DAE))
    assert dae.get_layer("enc1_conv").kernel.shape[-1] == 16 and dae.output_shape[1:] == (28, 28, 1)
