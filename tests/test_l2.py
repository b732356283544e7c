"""The L2 threat model: PGD-L2, APGD in L2 and Square-L2 keep the budget and attack; the smoothed
classifier under SmoothAdv's attack never loses an image it certified; the L2 adaptive report's flow."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from apudae_tf import attacks, data, report_text, smoothing, store
from apudae_tf.errors import ApudaeError

SHAPE = (8, 8, 1)


@pytest.fixture(scope="module")
def tiny():
    """A random 10-class MLP and 120 images labelled with its own answers (clean accuracy 1)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(10)])
    fn = lambda z: model(z, training=False)  # noqa: E731
    x = np.random.default_rng(0).random((120, *SHAPE), dtype=np.float32)
    y = np.argmax(fn(x).numpy(), 1).astype(np.int64)
    return fn, x, y


@pytest.mark.parametrize("method", ["pgd", "apgd-ce", "apgd-dlr", "apgd-t", "square"])
def test_l2_attacks_keep_the_l2_budget_and_the_range_and_attack(tiny, method):
    fn, x, y = tiny
    eps = 0.5
    s = attacks.AttackSettings(eps=eps, steps=500 if method == "square" else 20, step=eps / 8 if method == "pgd" else eps,
                               targets=2, norm="l2")
    x_adv = attacks.run_attack(method, fn, x, y, s, batch_size=50)
    norms = np.sqrt(((x_adv - x) ** 2).sum(axis=(1, 2, 3)))
    assert norms.max() <= eps + 1e-4
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert np.mean(np.argmax(fn(x_adv).numpy(), 1) == y) < 0.5  # most of these images fall at 0.5
    if method != "pgd":  # an L2 attack is not an L∞ one: the perturbation concentrates on some pixels
        assert np.abs(x_adv - x).max() > eps / np.sqrt(np.prod(SHAPE)) * 1.5


def test_l2_is_refused_by_attacks_that_are_linf_only(tiny):
    fn, x, y = tiny
    with pytest.raises(ApudaeError, match="L∞ only"):
        attacks.run_attack("fgsm", fn, x[:4], y[:4], attacks.AttackSettings(eps=0.5, steps=1, step=0.5, norm="l2"))
    with pytest.raises(ApudaeError, match="L∞ only"):
        attacks.settings_for("cw", "mnist", norm="l2")


def test_profile_l2_presets():
    s = attacks.preset("mnist", norm="l2")
    assert (s.eps, s.steps, s.norm) == (2.0, 40, "l2")
    assert attacks.preset("cifar10", norm="l2").eps == 0.5
    with pytest.raises(ApudaeError, match=r"\(0, 100\]"):
        attacks.preset("mnist", eps=500, norm="l2")


@pytest.fixture(scope="module")
def mnist_smoothed():
    ds = data.load_dataset("mnist", test_only=True)
    clf = keras.models.load_model(os.path.join(store.SAVED_MODELS, "mnist", "classifier.keras"))
    return ds, clf, smoothing.Smoothed(clf, 0.25, batch_size=500)


@pytest.mark.slow
def test_smoothadv_never_turns_a_certified_image_into_another_class(mnist_smoothed):
    """Certificates at radius ≥ ε (N = 2000, α = 0.001) against APGD-CE at ε through the soft smoothed
    classifier (8 draws a gradient), scored by PREDICT: a certified image may abstain near the edge of its
    ball, never answer another class; and certified accuracy never exceeds what the attack leaves right."""
    ds, clf, s = mnist_smoothed
    x, y, eps = ds.x_test[:8], ds.y_test[:8], 0.3
    certs = [s.certify(x[i], n0=100, n=2000, alpha=0.001, index=i) for i in range(len(x))]
    certified = np.array([c.prediction == y[i] and c.radius >= eps for i, c in enumerate(certs)])
    assert certified.sum() >= 4  # the bare CNN is stable at σ = 0.25 on most digits
    defence = smoothing.SmoothingDefence(s, smoothing.SmoothingSettings(0.25, "none", predict_n=1000), "k")
    settings = attacks.AttackSettings(eps=eps, steps=20, step=eps, eot=8, norm="l2")
    x_adv = attacks.run_attack("apgd-ce", lambda b: clf(b, training=False), x, y, settings, defence=defence)
    assert np.sqrt(((x_adv - x) ** 2).sum(axis=(1, 2, 3))).max() <= eps + 1e-4
    pred = defence.predict(x_adv)
    assert not np.any(certified & (pred != y) & (pred != smoothing.ABSTAIN))
    robust = pred == y
    assert certified.mean() <= robust.mean() + 1e-9 or np.all(pred[certified & ~robust] == smoothing.ABSTAIN)
    # the same attack at a radius no certificate reaches does change answers: it is a real attack
    big = attacks.run_attack("apgd-ce", lambda b: clf(b, training=False), x, y,
                             attacks.AttackSettings(eps=3.0, steps=20, step=3.0, eot=8, norm="l2"), defence=defence)
    assert np.mean(defence.predict(big) == y) < robust.mean()


@pytest.mark.slow
def test_l2_report_puts_certificates_beside_the_attacks(tmp_path):
    out = tmp_path / "r"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "cli", *a], capture_output=True, text=True, env=env,  # noqa: E731
                                    cwd=os.path.dirname(os.path.dirname(__file__)))
    c = run("certify", "mnist", "--sigma", "0.25", "--denoisers", "none", "--n", "3", "--every", "20", "--N", "500",
            "--out", str(out / "cert"))
    assert c.returncode == 0, c.stderr
    r = run("evaluate", "mnist", "--adaptive", "--norm", "l2", "--sigma", "0.25", "--denoisers", "none", "--n", "3",
            "--every", "20", "--apgd-steps", "3", "--apgd-targets", "1", "--square-queries", "10", "--eot", "2",
            "--predict-n", "100", "--no-purifier", "--certify-report", str(out / "cert" / "certify.json"),
            "--out", str(out / "l2"))
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "l2" / "adaptive_l2.json").read_text())
    assert report["test_indices"] == [0, 20, 40] and report["norm"] == "l2" and report["eps"] == 2.0
    check = report["certified_vs_empirical"]
    assert len(check) == 1 and check[0]["images"] == 3 and check[0]["holds"]
    md = (out / "l2" / "adaptive_l2.md").read_text()
    assert "Certified vs empirical" in md
    # the Markdown is rendered from the JSON alone: re-rendering it gives the same report
    (out / "l2" / "adaptive_l2.md").unlink()
    assert report_text.render(str(out / "l2" / "adaptive_l2.json")) == str(out / "l2" / "adaptive_l2.md")
    assert (out / "l2" / "adaptive_l2.md").read_text() == md
    worst = [q for q in report["records"] if q["attack"] == "worst"]
    assert {q["defence"] for q in worst} == {"No defence", "Smoothing σ=0.25, no denoiser"}
    bad = run("evaluate", "mnist", "--norm", "l2", "--out", str(out / "x"))
    assert bad.returncode == 2 and bad.stderr.startswith("error: --norm l2") and "Traceback" not in bad.stderr
