"""Defense-GAN: the latent search and its choice of restart, on a tiny generator; the WGAN-GP
training's checkpoint."""

import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import data_dir

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


@pytest.mark.slow
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
    from apudae_tf import reports
    from apudae_tf.data import Dataset

    store.save_model(defensegan.build_generator((28, 28, 1), width=8), os.path.join(tiny_models, defensegan.GAN_FILE))
    gan = defensegan.DefenseGan(store.load_model(os.path.join(tiny_models, defensegan.GAN_FILE)),
                                defensegan.SearchSettings(restarts=2, steps=2))
    rng = np.random.default_rng(0)
    x = rng.random((4, 28, 28, 1), dtype=np.float32)
    y = np.arange(4, dtype=np.int64)
    ds = Dataset("mnist", x, y, x, y, x, y, source="test")
    out = str(tmp_path / "report")
    result = reports.table_report(store.load_models(tiny_models), ds, 4, ["direct"], out, command="test", steps=1,
                                   cw_l2_n=2, figures=False, gan=gan)
    rows = [r for r in result["records"] if r["defence"] == "Defense-GAN (L=2, R=2)"]
    direct = [r for r in result["records"] if r["defence"] == "APuDAE direct"]
    assert [(r["attack"], r["n"]) for r in rows] == [(r["attack"], r["n"]) for r in direct]
    assert next(r for r in rows if r["attack"] == "pgd")["paper"] == 0.939
    cost = result["cost_ms_per_image"]
    assert cost["Defense-GAN (L=2, R=2)"] > 0 and "APuDAE direct" in cost
    md = open(os.path.join(out, "table.md")).read()
    assert "Defense-GAN / APuDAE" in md
    # no search chosen on validation in this folder: the report must not claim one
    assert "2 steps of gradient descent" in md and "not chosen on validation" in md
    assert result["defense_gan"]["chosen_on_val"] is False


def test_defense_gan_in_the_adaptive_report_gets_bpda_with_the_attackers_forward(tiny_models, tmp_path):
    from apudae_tf import reports, table
    from apudae_tf.data import Dataset

    store.save_model(defensegan.build_generator((28, 28, 1), width=8), os.path.join(tiny_models, defensegan.GAN_FILE))
    gan = defensegan.DefenseGan(store.load_model(os.path.join(tiny_models, defensegan.GAN_FILE)),
                                defensegan.SearchSettings(restarts=3, steps=2))
    rng = np.random.default_rng(1)
    x = rng.random((4, 28, 28, 1), dtype=np.float32)
    y = np.arange(4, dtype=np.int64)
    ds = Dataset("mnist", x, y, x, y, x, y, source="test")
    out = str(tmp_path / "adaptive")
    budget = table.Budget(apgd_steps=2, targets=1, square_queries=2, eot=2)
    result = reports.adaptive_report(store.load_models(tiny_models), ds, 4, out, budget=budget, lambdas=(1.0,),
                                      command="test", steps=1, gan=gan, gan_attack_restarts=2)
    rows = [r for r in result["records"] if r["defence"] == "Defense-GAN (L=3, R=2)"]
    # the DAE's counter attacks do not apply: those cells stay empty
    assert [r["attack"] for r in rows] == ["clean", "pgd", "apgd-ce", "apgd-t", "square", "worst"]
    pgd, apgd = rows[1], rows[2]
    assert pgd["settings"]["attack"]["saw_defence"] is False
    assert apgd["settings"]["attack"]["saw_defence"] is True and apgd["settings"]["attack"]["gradient"] == "bpda"
    assert apgd["settings"]["attack"]["eot"] == 2  # the restarts are random: EOT applies
    assert apgd["settings"]["defence"]["attacker_forward"]["restarts"] == 2
    assert apgd["settings"]["defence"]["restarts"] == 3  # scored through the full defence
    # a random defence is scored with its own draws and with fresh ones; robust means right under both
    assert {"accuracy_fixed_draws", "accuracy_fresh_draws"} <= set(rows[0])
    assert rows[0]["accuracy"] <= min(rows[0]["accuracy_fixed_draws"], rows[0]["accuracy_fresh_draws"])
    assert "**Defense-GAN** has no counter A or B" in open(os.path.join(out, "adaptive.md")).read()


def test_evaluate_asks_for_a_generator_before_it_adds_the_defense_gan_row(tiny_models):
    from click.testing import CliRunner

    import cli

    r = CliRunner().invoke(cli.main, ["evaluate", "mnist", "--models", tiny_models, "--n", "4", "--no-adv-training",
                                      "--defense-gan", *(["--data-dir", data_dir()] if data_dir() else [])])
    assert r.exit_code == 2 and "--what gan" in r.output and "Traceback" not in r.output


def test_cw_l2_n_zero_leaves_the_dearest_column_out():
    from apudae_tf import table

    keys = [c.key for c in table.table_columns("mnist", 10, cw_l2_n=0)]
    assert "cw-l2" not in keys and "pgd" in keys
    assert [c.n for c in table.table_columns("mnist", 10, cw_l2_n=3) if c.key == "cw-l2"] == [3]


def test_search_settings_are_chosen_on_validation_and_read_back(tiny_models):
    import json

    from apudae_tf import attacks, tuning
    from apudae_tf.data import Dataset

    gen = defensegan.build_generator((28, 28, 1), width=8)
    store.save_model(gen, os.path.join(tiny_models, defensegan.GAN_FILE))
    store.write_json(os.path.join(tiny_models, defensegan.GAN_INFO), {"dataset": "mnist", "epochs": 1})
    assert defensegan.tuned_search(tiny_models) == defensegan.SearchSettings()  # nothing chosen yet: the defaults
    rng = np.random.default_rng(2)
    x_val = rng.random((6, 28, 28, 1), dtype=np.float32)
    y_val = np.arange(6, dtype=np.int64) % 10
    poison = np.full((1, 28, 28, 1), np.nan, np.float32)  # the test split must never be read
    ds = Dataset("mnist", x_val, y_val, x_val, y_val, poison, np.zeros(1, np.int64), source="test")
    s = attacks.AttackSettings(eps=0.3, steps=1, step=0.3)
    report = tuning.tune_gan(store.load_models(tiny_models), ds, gen, 6, s, restarts=2, steps_grid=(0, 3))
    sweep = report["defense_gan"]["sweep"]
    assert [r["settings"]["steps"] for r in sweep] == [0, 3] and report["split"] == "val" and report["n"] == 6
    best = max(sweep, key=lambda r: r["score"])
    assert report["defense_gan"]["settings"] == best["settings"]
    assert all(r["score"] == (r["clean"] + r["pgd"]) / 2 and r["ms_per_image"] > 0 for r in sweep)

    defensegan.save_search(tiny_models, report)
    got = defensegan.tuned_search(tiny_models)
    assert (got.restarts, got.steps) == (2, best["settings"]["steps"])
    with open(os.path.join(tiny_models, defensegan.GAN_INFO)) as f:
        info = json.load(f)
    assert info["epochs"] == 1 and info["search"]["chosen_on"] == "val"  # the training record is kept


@pytest.mark.slow
def test_the_purification_benchmark_times_defense_gan_beside_the_variants(tiny_models, tmp_path, monkeypatch):
    import importlib.util
    import json
    import sys

    store.save_model(defensegan.build_generator((28, 28, 1), width=8), os.path.join(tiny_models, defensegan.GAN_FILE))
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("bench_purify", os.path.join(here, "benchmarks", "bench_purify.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = str(tmp_path / "bench")
    monkeypatch.setattr(sys, "argv", ["bench", "--models", tiny_models, "--batches", "2", "--variants", "direct",
                                      "--xla", "off", "--steps", "1", "--min-seconds", "0", "--defense-gan",
                                      "--out", out])
    bench.main()
    with open(os.path.join(out, "purify.json")) as f:
        report = json.load(f)
    gan = [r for r in report["records"] if r["variant"] == "Defense-GAN L=10 R=200"]
    assert len(gan) == 1 and gan[0]["images_per_s"] > 0 and gan[0]["steps"] == 200
    assert report["settings"]["Defense-GAN L=10 R=200"]["restarts"] == 10
    assert "Defense-GAN L=10 R=200, batch 2: seconds per image =" in open(os.path.join(out, "purify.md")).read()
