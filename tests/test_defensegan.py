"""Defense-GAN: the latent search and its choice of restart, on a tiny generator; the WGAN-GP
training's checkpoint."""

import os

import numpy as np
import tensorflow as tf

from apudae_tf import defensegan, store


def _tiny_generator():
    import keras

    keras.utils.set_random_seed(3)
    return defensegan.build_generator((8, 8, 1), latent_dim=defensegan.LATENT_DIM, width=8)


def _errors(gen, x, z):
    return np.mean((gen(z, training=False).numpy() - x) ** 2, axis=(1, 2, 3))


def test_latent_search_lowers_the_reconstruction_error_and_keeps_the_best_restart():
    gen = _tiny_generator()
    rng = np.random.default_rng(0)
    # targets inside G's range, from latents the search does not start at
    x = gen(tf.constant(rng.normal(size=(3, defensegan.LATENT_DIM)), tf.float32), training=False).numpy()
    s = defensegan.SearchSettings(restarts=4, steps=50, lr=200.0, momentum=0.7, seed=5)
    z0 = tf.random.stateless_normal([3 * s.restarts, defensegan.LATENT_DIM], [s.seed, 7])
    x_rep = np.repeat(x, s.restarts, axis=0)
    before = _errors(gen, x_rep, z0)
    z, after = defensegan._search(gen, tf.constant(x_rep), z0, s.steps, s.lr, s.momentum)
    after = after.numpy()
    assert (after < before).all() and np.median(after / before) < 0.5
    assert np.allclose(after, _errors(gen, x_rep, z), rtol=1e-4, atol=1e-7)

    out = defensegan.DefenseGan(gen, s).purify(x).numpy()
    got = np.mean((out - x) ** 2, axis=(1, 2, 3))
    best = after.reshape(3, s.restarts).min(axis=1)
    assert np.allclose(got, best, rtol=1e-4, atol=1e-7)  # each image's best restart, not another's
    assert out.shape == x.shape and out.min() >= 0.0 and out.max() <= 1.0


def test_gan_training_checkpoints_and_writes_a_generator(tmp_path):
    x = np.random.default_rng(0).random((64, 8, 8, 1), dtype=np.float32)
    out = str(tmp_path / "g")
    os.makedirs(out)
    said = []
    summary = defensegan.train_gan(x, out, epochs=1, batch_size=4, echo=said.append)
    gen = store.load_model(os.path.join(out, defensegan.GAN_FILE))
    assert gen.output_shape[1:] == (8, 8, 1) and summary["generator_epochs"] == 1
    assert any("epoch 1/1" in s for s in said)
    assert not os.path.exists(os.path.join(out, defensegan.GAN_CHECKPOINTS))


def test_defense_gan_row_joins_the_table_on_the_same_images_with_its_cost(tiny_models, tmp_path):
    from apudae_tf import evaluate
    from apudae_tf.data import Dataset

    store.save_model(defensegan.build_generator((28, 28, 1), width=8), os.path.join(tiny_models, defensegan.GAN_FILE))
    gan = defensegan.DefenseGan(store.load_model(os.path.join(tiny_models, defensegan.GAN_FILE)),
                                defensegan.SearchSettings(restarts=2, steps=2))
    rng = np.random.default_rng(0)
    x = rng.random((4, 28, 28, 1), dtype=np.float32)
    y = np.arange(4, dtype=np.int64)
    ds = Dataset("mnist", x, y, x, y, x, y, source="test")
    out = str(tmp_path / "report")
    result = evaluate.table_report(store.load_models(tiny_models), ds, 4, ["direct"], out, command="test", steps=1,
                                   cw_l2_n=2, figures=False, gan=gan)
    rows = [r for r in result["records"] if r["defence"] == "Defense-GAN (L=2, R=2)"]
    direct = [r for r in result["records"] if r["defence"] == "APuDAE direct"]
    assert [(r["attack"], r["n"]) for r in rows] == [(r["attack"], r["n"]) for r in direct]
    assert next(r for r in rows if r["attack"] == "pgd")["paper"] == 0.939
    cost = result["cost_ms_per_image"]
    assert cost["Defense-GAN (L=2, R=2)"] > 0 and "APuDAE direct" in cost
    assert "Defense-GAN / APuDAE" in open(os.path.join(out, "table.md")).read()
