"""The Table-1 DAE, r(x), and model save/reload."""

import keras
import numpy as np
import pytest

from apudae_tf import models, store


@pytest.mark.parametrize(
    "shape, half",
    [((28, 28, 1), (14, 14)), ((32, 32, 3), (16, 16))],
)
def test_dae_layers_follow_table_1(shape, half):
    dae = models.build_dae(shape)
    # (kernel, stride, channels) per Table 1, in order
    convs = [l for l in dae.layers if isinstance(l, (keras.layers.Conv2D, keras.layers.Conv2DTranspose))]
    assert [(l.kernel_size, l.strides, l.filters) for l in convs] == [
        ((3, 3), (2, 2), 64),
        ((3, 3), (1, 1), 64),
        ((3, 3), (1, 1), 64),
        ((3, 3), (2, 2), shape[2]),
    ]
    assert [type(l).__name__ for l in convs] == ["Conv2D", "Conv2D", "Conv2DTranspose", "Conv2DTranspose"]
    outs = {l.name: tuple(l.output.shape[1:]) for l in dae.layers}
    assert outs["enc1_bn"] == (*half, 64)
    assert outs["enc2_bn"] == (*half, 64)
    assert outs["dec1_bn"] == (*half, 64)
    assert outs["sigmoid"] == shape
    # dropout in each of the four layers (eq. 6), and the additive skip e1 -> decoder
    assert sum(isinstance(l, keras.layers.Dropout) for l in dae.layers) == 4
    assert sum(isinstance(l, keras.layers.BatchNormalization) for l in dae.layers) == 3
    skip = dae.get_layer("skip_e1")
    assert {t.name for t in skip.input} >= {dae.get_layer("enc1_bn").output.name}


def test_dae_handles_odd_image_sizes():
    dae = models.build_dae((7, 9, 1))
    assert tuple(dae.output.shape[1:]) == (7, 9, 1)


def test_reconstruction_error_is_per_image():
    dae = models.build_dae((28, 28, 1))
    x = np.random.default_rng(1).random((6, 28, 28, 1), dtype=np.float32)
    r_batch = models.reconstruction_error(dae, x).numpy()
    r_alone = np.array([models.reconstruction_error(dae, x[i : i + 1]).numpy()[0] for i in range(6)])
    assert r_batch.shape == (6,)
    np.testing.assert_allclose(r_batch, r_alone, rtol=1e-5)
    # and it is the spec's sum of squares over pixels, not a mean
    rec = np.clip(dae(x, training=False).numpy(), 0, 1)
    np.testing.assert_allclose(r_batch, ((rec - x) ** 2).sum(axis=(1, 2, 3)), rtol=1e-5)


def test_save_reload_gives_identical_outputs(tmp_path):
    x = np.random.default_rng(2).random((4, 28, 28, 1), dtype=np.float32)
    for model in (models.build_dae((28, 28, 1)), models.build_mnist_classifier()):
        path = str(tmp_path / f"{model.name}.keras")
        store.save_model(model, path)
        again = keras.models.load_model(path)
        np.testing.assert_array_equal(model(x, training=False).numpy(), again(x, training=False).numpy())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_load_models_rejects_a_shape_mismatch(tmp_path):
    store.save_model(models.build_mnist_classifier(), str(tmp_path / store.CLASSIFIER))
    store.save_model(models.build_dae((32, 32, 3)), str(tmp_path / store.DAE))
    store.write_json(str(tmp_path / store.DAE_STATS), store.DaeStats(1.0, 0.5, 0.1, (28, 28, 1), "mnist", {}).to_json())
    with pytest.raises(store.ApudaeError, match="dae .* takes images of shape"):
        store.load_models(str(tmp_path))
