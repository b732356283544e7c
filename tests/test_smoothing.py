"""Randomized smoothing (apudae_tf/smoothing.py): the statistics, the noise, CERTIFY and PREDICT on
classifiers whose answer is known."""

import json
import math
import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from apudae_tf import smoothing


@pytest.mark.parametrize("n_a,n,alpha,sigma", [(10_000, 10_000, 0.001, 0.25), (9_500, 10_000, 0.001, 0.5),
                                               (70, 100, 0.01, 1.0), (61, 100, 0.05, 0.12)])
def test_radius_is_sigma_times_the_normal_quantile_of_the_clopper_pearson_bound(n_a, n, alpha, sigma):
    # the one-sided (1 - alpha) Clopper-Pearson lower bound is the alpha quantile of Beta(n_a, n - n_a + 1)
    bound = stats.beta.ppf(alpha, n_a, n - n_a + 1)
    assert smoothing.lower_confidence_bound(n_a, n, alpha) == pytest.approx(bound, rel=1e-9)
    assert smoothing.radius_from_counts(n_a, n, alpha, sigma) == pytest.approx(sigma * stats.norm.ppf(bound), rel=1e-9)


def test_no_radius_when_the_bound_is_at_most_one_half():
    assert math.isnan(smoothing.radius_from_counts(52, 100, 0.001, 0.5))
    # all 10,000 draws agree: the largest radius N = 10,000 can give at alpha = 0.001 is 3.2 sigma
    assert smoothing.radius_from_counts(10_000, 10_000, 0.001, 1.0) == pytest.approx(3.199, abs=1e-3)


def test_predict_thresholds_match_the_binomial_test():
    t = smoothing.predict_thresholds(60, 0.01)
    assert t[0] == 1  # no draws: no class passes
    for m in range(1, 61):
        for n_a in range((m + 1) // 2, m + 1):  # n_a is the top count of two: at least half of m
            assert (n_a >= t[m]) == (stats.binomtest(n_a, m, 0.5).pvalue <= 0.01)


def test_noise_is_gaussian_with_the_stated_sigma():
    x = tf.zeros([8, 8, 3])
    d = smoothing.gaussian_draws(x, 0.5, 2000, smoothing.noise_seed(0, 3, 1), 0).numpy().ravel()
    assert d.size == 2000 * 8 * 8 * 3
    assert abs(d.mean()) < 0.005
    assert d.std() == pytest.approx(0.5, rel=0.01)
    assert stats.kurtosis(d, fisher=False) == pytest.approx(3.0, abs=0.05)  # Gaussian, not uniform (1.8)
    assert stats.skew(d) == pytest.approx(0.0, abs=0.02)
    again = smoothing.gaussian_draws(x, 0.5, 2000, smoothing.noise_seed(0, 3, 1), 0).numpy().ravel()
    other = smoothing.gaussian_draws(x, 0.5, 2000, smoothing.noise_seed(0, 3, 1), 1).numpy().ravel()
    assert np.array_equal(d, again) and not np.array_equal(d, other)  # stateless: the same seed, the same draws


class Alternating:
    """A base classifier that answers class 0 and class 1 on alternate draws: an exact tie."""

    def __call__(self, x, training=False):
        return tf.one_hot(tf.range(tf.shape(x)[0]) % 2, 10)


def test_predict_abstains_on_a_tie():
    s = smoothing.Smoothed(Alternating(), 0.5, num_classes=10, batch_size=100)
    counts = s.sample_counts(np.zeros((4, 4, 1), np.float32), 400, smoothing.noise_seed(0, 0, 2))
    assert counts[0] == counts[1] == 200
    assert s.predict(np.zeros((4, 4, 1), np.float32), n=400, alpha=0.001) == smoothing.ABSTAIN
    assert s.certify(np.zeros((4, 4, 1), np.float32), n0=10, n=400, alpha=0.001).prediction == smoothing.ABSTAIN


def linear_classifier(w: np.ndarray, b: float) -> keras.Model:
    """Logits (0, w·x + b): class 1 where w·x + b > 0. Its decision boundary is a hyperplane, so the exact
    L2 distance of x to it is |w·x + b| / ‖w‖, and Gaussian smoothing keeps the same boundary."""
    x = keras.Input(shape=(2, 2, 1))
    flat = keras.layers.Flatten()(x)
    score = keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant(w.reshape(-1, 1)),
                               bias_initializer=keras.initializers.Constant(b))(flat)
    return keras.Model(x, keras.layers.Concatenate()([keras.ops.zeros_like(score), score]))


def test_certificate_of_a_linear_classifier_is_never_larger_than_its_exact_margin():
    w, b = np.array([1.0, -2.0, 0.5, 1.5]), -0.3
    model = linear_classifier(w, b)
    s = smoothing.Smoothed(model, 0.5, num_classes=2, batch_size=1000)
    rng = np.random.default_rng(0)
    for i in range(8):
        x = rng.uniform(0, 1, (2, 2, 1)).astype(np.float32)
        margin = float(x.ravel() @ w + b)
        truth = abs(margin) / np.linalg.norm(w)
        c = s.certify(x, n0=100, n=10_000, alpha=0.001, seed=1, index=i)
        if c.prediction == smoothing.ABSTAIN:
            assert truth < 0.5 * 0.5  # only points near the boundary may abstain at sigma 0.5
            continue
        assert c.prediction == int(margin > 0)
        assert c.radius <= truth
        # the bound is tight but for the Monte Carlo slack: p_A = Phi(truth / sigma) exactly
        assert c.radius >= truth - 0.5 * 0.25 or truth > 0.5 * 3.0


def test_saved_model_predict_agrees_with_the_library(tmp_path):
    """The TF Serving export runs PREDICT in its graph: the same draws, counts and decisions as
    ``SmoothingDefence.predict`` on the same images (an abstention included)."""
    import os

    from apudae_tf import data, export, store

    ds = data.load_dataset("mnist", test_only=True)
    clf = keras.models.load_model(os.path.join(store.SAVED_MODELS, "mnist", "classifier.keras"))
    s = smoothing.Smoothed(clf, 0.5, batch_size=128)
    blend = 0.5 * ds.x_test[4] + 0.5 * ds.x_test[9]  # a 4 over a 9: the vote is close
    x = np.concatenate([ds.x_test[:5], blend[None]])
    path = export.export_smoothed(s, (28, 28, 1), str(tmp_path / "served"), n=300, alpha=0.001, seed=7)
    served = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(x))
    defence = smoothing.SmoothingDefence(s, smoothing.SmoothingSettings(0.5, "none", predict_n=300, alpha=0.001,
                                                                         seed=7), "k")
    assert np.array_equal(served["classes"].numpy(), defence.predict(x))
    for i in range(len(x)):
        counts = s.sample_counts(x[i], 300, smoothing.noise_seed(7, i, smoothing.PREDICTION))
        assert np.array_equal(served["counts"].numpy()[i], counts)
    assert np.array_equal(served["abstain"].numpy(), served["classes"].numpy() == smoothing.ABSTAIN)
    assert served["abstain"].numpy().any() and not served["abstain"].numpy().all()
    with pytest.raises(Exception, match="values outside"):
        tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(x + 2.0))


def test_a_denoiser_in_mixed_precision_keeps_its_weights_and_nearly_its_votes():
    """certify --mixed-precision: the same weights computing in bfloat16 (float16 on a GPU); the base classifier
    changes a little, and each record says which one voted."""
    from apudae_tf import fitting, models

    keras.utils.set_random_seed(0)
    dae = models.build_residual_unet((8, 8, 1), 8, 2)
    mixed = models.with_policy(dae, fitting.mixed_policy())
    assert mixed.layers[1].compute_dtype in ("bfloat16", "float16")
    for a, b in zip(dae.get_weights(), mixed.get_weights()):
        assert a.dtype == b.dtype == np.float32 and np.array_equal(a, b)
    x = np.random.default_rng(0).random((16, 8, 8, 1)).astype(np.float32)
    assert np.abs(dae(x).numpy() - np.asarray(mixed(x), np.float32)).max() < 0.05


@pytest.mark.slow
def test_classify_smooth_shows_abstentions_and_export_smooth_serves(tmp_path):
    import json
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "APUDAE_DATA_DIR"}

    def run(*args, **kw):
        return subprocess.run([sys.executable, os.path.join(repo, "cli.py"), *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600, **kw)

    assert run("attack", "--dataset", "mnist", "--method", "none", "--n", "6", "-o", "x.npz").returncode == 0
    res = run("classify", "-i", "x.npz", "--smooth", "1.0", "--denoiser", "none", "--N", "100", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["smoothing"]["abstained"] >= 1  # the bare CNN under σ = 1 noise: its votes split
    assert out["accuracy"] <= 1 - out["smoothing"]["abstained"] / 6 + 1e-9  # abstentions count as wrong
    line = run("classify", "-i", "x.npz", "--smooth", "0.25", "--denoiser", "none", "--N", "100").stdout
    assert line.startswith("accuracy ") and "abstained on" in line
    res = run("export", "--dataset", "mnist", "--smooth", "0.25", "--denoiser", "none", "--N", "50", "--out", "served")
    assert res.returncode == 0, res.stderr
    served = tf.saved_model.load(res.stdout.strip()).signatures["serving_default"]
    assert set(served.structured_outputs) == {"classes", "abstain", "counts"}


def test_smoothing_denoiser_stages_keep_the_classifier_frozen_and_their_records(tmp_path):
    """`train --what smoothing-dae`'s two stages on a toy task: both files written, the classifier's weights
    untouched by the stability stage, a record handed over as each stage finishes, and a finished stage whose
    record was lost kept (not retrained) with its accuracy measured again."""
    import os

    from apudae_tf import data, denoisers
    from apudae_tf.train import TrainSettings
    from conftest import half_images, linear_classifier

    x, y = half_images(96)
    ds = data.Dataset("toy", x[:64], y[:64], x[64:], y[64:], x[64:], y[64:], "test")
    clf = linear_classifier()
    before = [w.copy() for w in clf.get_weights()]
    got = {}
    settings = TrainSettings(epochs=1, batch_size=32)
    denoisers.train_smoothing_denoiser(ds, str(tmp_path), 0.25, settings, clf, filters=4, stages=2,
                                       stability_epochs=2, on_record=got.__setitem__, recorded=got)
    files = {s: tmp_path / "smoothing" / denoisers.smoothing_denoiser_file(0.25, s) for s in ("mse", "stability")}
    assert all(f.is_file() for f in files.values())
    assert all(np.array_equal(a, b) for a, b in zip(before, clf.get_weights()))
    assert set(got) == {"mse", "stability"} and len(got["stability"]["history"]) == 2
    assert all(0.0 <= r["val_noisy_accuracy"] <= 1.0 for r in got.values())
    assert got["stability"]["recipe"]["from"] == "mse"

    mtime = os.path.getmtime(files["mse"])
    del got["mse"]
    denoisers.train_smoothing_denoiser(ds, str(tmp_path), 0.25, settings, clf, filters=4, stages=2,
                                       stability_epochs=2, on_record=got.__setitem__, recorded=got)
    assert os.path.getmtime(files["mse"]) == mtime
    assert "cut off" in got["mse"]["note"] and 0.0 <= got["mse"]["val_noisy_accuracy"] <= 1.0


def test_a_report_finished_again_on_a_busy_machine_keeps_the_best_matmul_rate(tmp_path, monkeypatch):
    """Cores shared with other jobs measure a lower matmul rate than the machine has; finishing a report again
    there must not shrink the rate (the cost's share of it would pass 100 %), but another machine's replaces it."""
    import json

    from apudae_tf import certify, machine

    env = machine.environment()
    record = {"sigma": 0.5, "denoiser": "none", "classifier": "c.keras", "classifier_digest": "c", "denoiser_digest": None,
              "n0": 100, "n": 1000, "alpha": 0.001, "seed": 0, "batch_size": 100, "precision": "float32", "index": 0,
              "label": 1, "prediction": 1, "correct": True, "n0_top": 100, "n_a": 1000, "radius": 1.0, "seconds": 2.0}
    monkeypatch.setattr(machine, "matmul_gflops", lambda dtype="float32", **_: 10.0)
    for processor, expected in ((env["processor"], 1000.0), ("another CPU", 10.0)):
        report = {"records": [record], "cost": {"matmul_gflops": {"float32": 1000.0},
                                                "environment": {**env, "processor": processor}}}
        (tmp_path / "certify.json").write_text(json.dumps(report))
        out = certify.finish(str(tmp_path), "mnist", flops={"c/None": 0.5})
        assert out["cost"]["matmul_gflops"] == {"float32": expected}
        assert out["rows"][0]["fraction_of_matmul"] == pytest.approx(0.5 * 1100 / 2.0 / expected)


def test_a_row_on_more_images_is_also_shown_on_the_images_the_others_have():
    """The targets' rows run on 500 images and the comparison rows on the first 100: the report gives the larger
    row's certified accuracy on those 100 too, computed from its records, not the 500's."""
    from apudae_tf import certify

    def rec(denoiser, index, radius):
        return {"sigma": 0.5, "denoiser": denoiser, "classifier": "c.keras", "classifier_digest": "c",
                "denoiser_digest": denoiser, "n0": 100, "n": 1000, "alpha": 0.001, "seed": 0, "batch_size": 100,
                "precision": "float32", "index": index, "label": 1, "prediction": 1 if radius else -1,
                "correct": bool(radius), "n0_top": 100, "n_a": 900, "radius": radius, "seconds": 1.0}

    # stability: 4 images, certified at r = 0.5 on images 0 and 1 only; mse: images 0 and 1
    records = [rec("stability", i, r) for i, r in enumerate((1.0, 0.6, 0.0, 0.0))] + \
              [rec("mse", i, 0.3) for i in (0, 1)]
    rows = {s["denoiser"]: s for s in certify.summarize(records)}
    assert rows["stability"]["certified"]["0.5"] == 0.5
    assert rows["stability"]["same_images"] == {"images": 2, "certified": {
        f"{r:g}": (1.0 if r <= 0.6 else 0.5 if r <= 1.0 else 0.0) for r in certify.RADII}}
    assert "same_images" not in rows["mse"]
    md = certify.markdown({"rows": certify.summarize(records), "dataset": "mnist"})
    assert "| c.keras | stability | 0.5 | 2 | 1000 | 100.0 | 100.0 | 100.0 |" in md


def test_shipping_denoisers_adds_new_ones_and_refuses_to_overwrite_a_shipped_one(tmp_path):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
    try:
        import ship_denoisers
    finally:
        sys.path.pop(0)
    head = {"arch": "residual-unet", "dataset": "cifar10", "filters": 32, "image_shape": [32, 32, 3], "stages": 4}

    def folder(name, files):
        path = tmp_path / name
        path.mkdir()
        for file in files:
            (path / file).write_bytes(f"{name}/{file}".encode())
        (path / "denoisers.json").write_text(json.dumps(dict(head, denoisers={f: {"file": f} for f in files})))
        return str(path)

    dst = folder("dst", ["sigma0.5-mse.keras"])
    clash = folder("clash", ["sigma0.5-mse.keras", "sigma1-mse.keras"])
    before = {p: open(os.path.join(dst, p), "rb").read() for p in os.listdir(dst)}
    assert ship_denoisers.main([clash, dst]) == 2
    assert {p: open(os.path.join(dst, p), "rb").read() for p in os.listdir(dst)} == before
    src = folder("src", ["sigma1-mse.keras", "sigma1-stability.keras"])
    assert ship_denoisers.main([src, dst]) == 0
    merged = json.load(open(os.path.join(dst, "denoisers.json")))
    assert sorted(merged["denoisers"]) == ["sigma0.5-mse.keras", "sigma1-mse.keras", "sigma1-stability.keras"]
    assert open(os.path.join(dst, "sigma0.5-mse.keras"), "rb").read() == b"dst/sigma0.5-mse.keras"
    assert open(os.path.join(dst, "sigma1-stability.keras"), "rb").read() == b"src/sigma1-stability.keras"
    other = folder("other", ["sigma2-mse.keras"])
    with open(os.path.join(other, "denoisers.json"), "w") as f:
        json.dump(dict(head, filters=48, denoisers={"sigma2-mse.keras": {}}), f)
    assert ship_denoisers.main([other, dst]) == 2
    assert not os.path.exists(os.path.join(dst, "sigma2-mse.keras"))
    assert ship_denoisers.main([str(tmp_path / "nowhere"), dst]) == 2
