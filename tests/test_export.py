"""The TF Serving export: both signatures, agreement with the library, bad input, the REST body."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from conftest import data_dir

import cli
from apudae_tf import data, pipeline, purify, store

SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "saved_models", "mnist")


def _export(models_dir, variant, base, *extra):
    res = CliRunner().invoke(cli.main, ["export", "--dataset", "mnist", "--variant", variant, "--models", models_dir,
                                        "--out", str(base), *extra])
    assert res.exit_code == 0, res.output
    return res.stdout.strip().splitlines()[-1]


def _images(n, seed=0):
    return np.random.default_rng(seed).random((n, 28, 28, 1), dtype=np.float32)


def _cli_purify(models_dir, variant, x, batch_size=500):
    res = CliRunner().invoke(cli.main, ["purify", "--variant", variant, "--models", models_dir,
                                        "--batch-size", str(batch_size)],
                             input=pipeline.dumps(pipeline.Batch(x=x, y=None, meta={"dataset": "mnist"})))
    assert res.exit_code == 0, res.output
    return pipeline.loads(res.stdout_bytes, "purify output").x


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["B", "F"])
def test_export_matches_the_library_for_any_request_size(tiny_models, tmp_path, variant):
    path = _export(tiny_models, variant, tmp_path / "m")
    assert path.endswith(os.path.join("m", "1")) and os.path.isfile(os.path.join(path, "saved_model.pb"))
    loaded = tf.saved_model.load(path)
    m = store.load_models(tiny_models)
    p = purify.Purifier(m.dae, m.stats, variant, purify.default_settings("mnist", variant, tiny_models))
    for n in (1, 7):  # one trace in the SavedModel serves every request size
        x = _images(n, seed=n)
        np.testing.assert_allclose(loaded.signatures["serving_default"](images=tf.constant(x))["purified"].numpy(),
                                   p.purify_array(x), atol=1e-5)  # a request is purify's first batch
    x = _images(6)
    out = loaded.signatures["serving_default"](images=tf.constant(x))
    expected = p.purify_array(x)
    np.testing.assert_allclose(out["purified"].numpy(), expected, atol=1e-5)
    logits = m.classifier(expected, training=False).numpy()
    np.testing.assert_allclose(out["logits"].numpy(), logits, atol=1e-4)
    assert out["classes"].dtype == tf.int64
    np.testing.assert_array_equal(out["classes"].numpy(), np.argmax(logits, 1))
    np.testing.assert_allclose(out["probabilities"].numpy().sum(1), 1.0, atol=1e-5)
    r = lambda im: p.r(im).numpy()  # noqa: E731
    np.testing.assert_allclose(out["r_before"].numpy(), r(x), rtol=1e-4)
    np.testing.assert_allclose(out["r_after"].numpy(), r(expected), rtol=1e-4)


@pytest.mark.slow
def test_classify_only_skips_purification(tiny_models, tmp_path):
    loaded = tf.saved_model.load(_export(tiny_models, "B", tmp_path / "m"))
    x = _images(3)
    out = loaded.signatures["classify_only"](images=tf.constant(x))
    m = store.load_models(tiny_models)
    np.testing.assert_allclose(out["logits"].numpy(), m.classifier(x, training=False).numpy(), atol=1e-4)
    assert set(out) == {"logits", "probabilities", "classes", "r"}


BAD_INPUTS = [
    (np.zeros((2, 28, 28), np.float32), "got shape"),
    (np.zeros((2, 28, 28, 3), np.float32), "got shape"),
    (np.zeros((1, 1, 28, 28, 1), np.float32), "got shape"),
    (np.full((1, 28, 28, 1), 2.0, np.float32), "outside"),
    (np.full((1, 28, 28, 1), np.nan, np.float32), "NaN"),
]


@pytest.mark.slow
def test_bad_input_at_the_signature_names_the_expected_shape(tiny_models, tmp_path):
    loaded = tf.saved_model.load(_export(tiny_models, "B", tmp_path / "m"))
    for name in ("serving_default", "classify_only"):
        for bad, message in BAD_INPUTS:
            with pytest.raises(tf.errors.InvalidArgumentError) as e:
                loaded.signatures[name](images=tf.constant(bad))
            assert "images must be a float32 tensor of shape [N, 28, 28, 1]" in e.value.message
            assert message in e.value.message


def test_export_refuses_to_overwrite_a_version_and_a_missing_model_folder(tiny_models, tmp_path):
    _export(tiny_models, "direct", tmp_path / "m")
    res = CliRunner().invoke(cli.main, ["export", "--dataset", "mnist", "--models", tiny_models,
                                        "--out", str(tmp_path / "m")])
    assert res.exit_code == 2 and "exists" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli.main, ["export", "--dataset", "mnist", "--models", str(tmp_path / "none"),
                                        "--out", str(tmp_path / "n")])
    assert res.exit_code == 2 and "no such model folder" in res.output
    assert not os.path.exists(tmp_path / "n" / "1")


@pytest.mark.slow
def test_shipped_export_classifies_mnist_and_matches_apudae_purify(tmp_path):
    """Issue 6 acceptance, on 256 test images (the whole set is a command, not a test)."""
    ds = data.load_dataset("mnist", data_dir())
    x, y = ds.x_test[:256], ds.y_test[:256]
    base = tmp_path / "x" / "apudae_mnist"
    sig = tf.saved_model.load(_export(SHIPPED, "F", base)).signatures["serving_default"]
    assert np.mean(sig(images=tf.constant(x))["classes"].numpy() == y) >= 0.95
    # a deterministic variant gives what `apudae-tf purify` gives when a request is one of its batches
    # (other batchings differ by float rounding, which Adam's normalised steps carry along)
    sig_b = tf.saved_model.load(_export(SHIPPED, "B", base, "--version", "2")).signatures["serving_default"]
    np.testing.assert_allclose(sig_b(images=tf.constant(x[:64]))["purified"].numpy(),
                               _cli_purify(SHIPPED, "B", x[:64], batch_size=64), atol=1e-5)


@pytest.mark.slow
def test_rest_body_from_real_images_fits_the_signature(tiny_models, tmp_path):
    """The README's REST request: {"instances": [...]} of real MNIST images, as TF Serving decodes it."""
    ds = data.load_dataset("mnist", data_dir())
    x = ds.x_test[:3]
    body = json.dumps({"signature_name": "serving_default", "instances": x.tolist()})
    decoded = json.loads(body)
    loaded = tf.saved_model.load(_export(tiny_models, "B", tmp_path / "m"))
    sig = loaded.signatures[decoded["signature_name"]]
    spec = sig.structured_input_signature[1]["images"]
    instances = np.asarray(decoded["instances"], dtype=spec.dtype.as_numpy_dtype)
    assert spec.shape.is_compatible_with(instances.shape) and instances.shape == (3, 28, 28, 1)
    np.testing.assert_array_equal(instances, x)  # float32 survives the JSON round trip exactly
    out = sig(images=tf.constant(instances))
    m = store.load_models(tiny_models)
    p = purify.Purifier(m.dae, m.stats, "B", purify.default_settings("mnist", "B", tiny_models))
    expected = np.argmax(m.classifier(p.purify_array(x), training=False).numpy(), 1)
    np.testing.assert_array_equal(out["classes"].numpy(), expected)  # what the library answers for these images
