"""The CIFAR-10 classifier's recipe: ResNet shapes, the augmentation, the one-cycle rate and a
training that survives an interruption."""

import dataclasses
import json
import os

import numpy as np
import pytest
from conftest import saved_accuracy

from apudae_tf import adversarial, classifiers, fitting, models, profiles, store, train
from apudae_tf.data import Dataset
from apudae_tf.errors import ApudaeError


def test_resnet20_and_resnet18_have_their_published_sizes_and_take_0_1_images():
    r20 = models.build_classifier("resnet20", (32, 32, 3), 10)
    assert 0.26e6 < r20.count_params() < 0.28e6  # He et al.: 0.27M
    assert 11.1e6 < models.build_classifier("resnet18", (32, 32, 3), 10).count_params() < 11.3e6
    # standardising inside the model: a mid-grey image becomes near-zero input to the stem
    grey = np.full((1, 32, 32, 3), models.CIFAR10_MEAN, np.float32)
    std = r20.get_layer("standardise")(grey).numpy()
    assert np.abs(std).max() < 1e-5 and r20(grey).shape == (1, 10)


def test_crop_flip_keeps_shape_and_moves_pixels_only_by_the_pad():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.random((64, 32, 32, 3), dtype=np.float32)
    tf.random.set_seed(1)
    out = classifiers.crop_flip(tf.constant(x)).numpy()
    assert out.shape == x.shape and out.dtype == x.dtype
    changed = np.mean([not np.array_equal(a, b) for a, b in zip(out, x)])
    assert changed > 0.5  # most images are shifted or flipped
    # every output image is a shifted (≤ 4 px), possibly mirrored window of its padded input
    padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
    for k in range(8):
        windows = [padded[k, i : i + 32, j : j + 32] for i in range(9) for j in range(9)]
        assert any(np.array_equal(out[k], w) or np.array_equal(out[k], w[:, ::-1]) for w in windows)


def test_one_cycle_climbs_to_its_peak_then_falls_to_zero():
    s = classifiers.OneCycle(0.2, 100, warmup=0.3)
    lr = np.array([float(s(k)) for k in range(100)])
    assert lr.argmax() in (29, 30) and abs(lr.max() - 0.2) < 1e-6
    assert (np.diff(lr[:29]) > 0).all() and (np.diff(lr[31:]) < 0).all() and lr[-1] < 0.01


def _interrupt_after_first_epoch(monkeypatch):
    """The session ends after epoch 1's backup, as a cut-off session would: the next run must resume."""
    real = fitting.EpochLog.on_epoch_end
    calls = []

    def end(self, epoch, logs=None):
        real(self, epoch, logs)
        calls.append(epoch)
        if len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(fitting.EpochLog, "on_epoch_end", end)
    return calls


@pytest.mark.slow
def test_resnet_training_checkpoints_and_resumes_after_an_interruption(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.random((48, 32, 32, 3), dtype=np.float32)
    y = (np.arange(48) % 10).astype(np.int64)
    ds = Dataset("cifar10", x, y, x[:16], y[:16], x[:16], y[:16], source="test")
    out = str(tmp_path / "c")
    os.makedirs(out)
    settings = train.TrainSettings(epochs=2, batch_size=16, arch="resnet20")
    calls = _interrupt_after_first_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train.train(ds, "classifier", out, settings, echo=lambda m: None)
    backup = os.path.join(out, classifiers.CLASSIFIER_BACKUP)
    assert os.path.isfile(os.path.join(backup, "latest.weights.h5"))
    with pytest.raises(ApudaeError, match="pass --resume"):
        train.train(ds, "classifier", out, settings, echo=lambda m: None)
    with pytest.raises(ApudaeError, match="batch_size: 16 -> 8"):
        train.train(ds, "classifier", out, dataclasses.replace(settings, batch_size=8), echo=lambda m: None,
                    resume=True)
    said = []
    summary = train.train(ds, "classifier", out, settings, echo=said.append, resume=True)
    assert calls == [0, 1] and any("resuming after epoch 1" in s for s in said)  # epoch 2 only, once
    info = json.load(open(os.path.join(out, store.CLASSIFIER_INFO)))
    assert [h["epoch"] for h in info["history"]] == [1, 2] and info["recipe"]["arch"] == "resnet20"
    assert "val_accuracy" in info["history"][0]
    assert store.load_model(os.path.join(out, store.CLASSIFIER)).count_params() == \
        models.build_classifier("resnet20", (32, 32, 3), 10).count_params()
    assert not os.path.exists(backup)
    assert summary["classifier_test_accuracy"] == pytest.approx(
        saved_accuracy(os.path.join(out, store.CLASSIFIER), ds.x_test, ds.y_test))


@pytest.mark.slow
def test_cifar10_table_runs_every_variant_and_attack_on_colour_images(tiny_cifar_models, tmp_path):
    from apudae_tf import reports

    rng = np.random.default_rng(0)
    x = rng.random((6, 32, 32, 3), dtype=np.float32)
    y = (np.arange(6) % 10).astype(np.int64)
    ds = Dataset("cifar10", x, y, x, y, x, y, source="test")
    m = store.load_models(tiny_cifar_models)
    variants = reports.parse_variants("cifar10", "all")
    assert variants[:4] == ["direct", "A:n=12", "A:n=15", "A:n=18"] and len(variants) == 10
    out = str(tmp_path / "report")
    result = reports.table_report(m, ds, 3, variants, out, adv=None, command="test", steps=1)
    records = result["records"]
    # CIFAR-10 has no "pgd" column: the figures show the paper's BIM examples
    assert result["figures"]["attack"] == "BIM"
    for name in ("fig3_r_hist.png", "examples.png"):
        assert open(os.path.join(out, name), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert {r["attack"] for r in records} == set(profiles.get("cifar10").columns)
    rows = {r["defence"] for r in records}
    assert {"APuDAE A (n=12)", "APuDAE A (n=18)", "APuDAE G", "APuDAE direct"} <= rows
    a12 = next(r for r in records if r["defence"] == "APuDAE A (n=12)" and r["attack"] == "bim")
    assert a12["settings"]["defence"]["n"] == 12 and a12["paper"] == 0.632
    bim = next(r for r in records if r["defence"] == "No defence" and r["attack"] == "bim")
    assert bim["settings"]["attack"]["rand_init"] is False and bim["settings"]["attack"]["eps"] == 8 / 255
    assert all(r["n"] == 3 and r["accuracy"] * 3 == round(r["accuracy"] * 3) for r in records)
    with pytest.raises(ApudaeError, match="unknown variant 'A:n=x'"):
        reports.parse_variants("cifar10", "A:n=x")


def _tiny_cifar(n=32):
    rng = np.random.default_rng(0)
    x = rng.random((n, 32, 32, 3), dtype=np.float32)
    y = (np.arange(n) % 10).astype(np.int64)
    return Dataset("cifar10", x, y, x[:16], y[:16], x[:16], y[:16], source="test")


@pytest.mark.slow
def test_cifar10_fast_adversarial_training_starts_from_scratch_with_the_one_cycle_rate(tiny_cifar_models):
    ds = _tiny_cifar()
    # a clean classifier in the folder is not the starting point (Wong et al. train from scratch)
    before = store.load_model(os.path.join(tiny_cifar_models, store.CLASSIFIER)).get_weights()[0]
    adversarial.train_adv_classifier(ds, tiny_cifar_models,
                                     train.TrainSettings(epochs=1, batch_size=16, arch="resnet20"), echo=lambda m: None)
    info = json.load(open(os.path.join(tiny_cifar_models, store.ADV_CLASSIFIER_INFO)))
    assert info["init"] == "random" and info["eps_ramp_epochs"] == 0 and "N-FGSM" in info["method"]
    assert info["training"]["noise"] == adversarial.FAST_AT_NOISE == 2.0 and info["training"]["projected"] is False
    assert info["training"]["optimizer"] == "SGD one-cycle"
    assert info["training"]["peak_lr"] == classifiers.RESNET_PEAK_LR
    assert info["attack"]["steps"] == 1 and info["attack"]["step"] == pytest.approx(info["attack"]["eps"])
    assert info["attack"]["eps"] == pytest.approx(8 / 255) and info["attack"]["rand_init"]
    adv = store.load_model(os.path.join(tiny_cifar_models, store.ADV_CLASSIFIER))
    assert adv.get_weights()[0].shape == before.shape and not np.allclose(adv.get_weights()[0], before)


@pytest.mark.slow
def test_adapted_classifier_learns_purified_images_into_its_own_folder_and_reuses_them(tiny_cifar_models, tmp_path,
                                                                                       monkeypatch):
    from apudae_tf import purify

    ds = _tiny_cifar()
    settings = train.TrainSettings(epochs=1, batch_size=16)
    with pytest.raises(ApudaeError, match="its own --out folder"):
        classifiers.train_adapted_classifier(ds, tiny_cifar_models, tiny_cifar_models, ["B"], settings)
    out = str(tmp_path / "adapted")
    purified = []
    real = purify.Purifier.purify_array

    def counting(self, x, *a, **k):
        purified.append(len(x))
        return real(self, x, *a, **k)

    monkeypatch.setattr(purify.Purifier, "purify_array", counting)
    said = []
    with pytest.raises(ApudaeError, match="bad --adapt-to item 'm=3'"):
        classifiers.train_adapted_classifier(ds, tiny_cifar_models, out, ["B:m=3"], settings)
    tokens = ["B:n=2:alpha=2/255", "direct"]
    summary = classifiers.train_adapted_classifier(ds, tiny_cifar_models, out, tokens, settings, echo=said.append)
    # each variant purifies the 32 training images once, then the 16 validation images
    assert purified == [32, 32, 16, 16]
    cached = np.load(os.path.join(out, classifiers.ADAPT_CACHE, "train_purified_B_n2_alpha2-255.npy"), allow_pickle=False)
    assert cached.shape == ds.x_train.shape and not np.allclose(cached, ds.x_train)
    info = json.load(open(os.path.join(out, store.CLASSIFIER_INFO)))
    assert info["recipe"]["adapted_to"] == tokens and info["recipe"]["learning_rate"] == classifiers.ADAPT_LEARNING_RATE
    assert classifiers.adapt_purifier("cifar10", store.load_models(tiny_cifar_models), tokens[0]).settings.alpha == 2 / 255
    assert info["recipe"]["base_digest"] == store.file_digest(os.path.join(tiny_cifar_models, store.CLASSIFIER))
    assert set(info["history"][0]) == {"epoch", "loss", "val_clean", "val_B:n=2:alpha=2/255", "val_direct"}
    for name in (store.CLASSIFIER, store.DAE, store.DAE_STATS):
        assert os.path.isfile(os.path.join(out, name))
    base = store.load_model(os.path.join(tiny_cifar_models, store.CLASSIFIER)).get_weights()[0]
    assert not np.allclose(store.load_model(os.path.join(out, store.CLASSIFIER)).get_weights()[0], base)
    assert summary["adapted_classifier_test_accuracy"] == pytest.approx(
        saved_accuracy(os.path.join(out, store.CLASSIFIER), ds.x_test, ds.y_test))
    assert any("epoch 1/1" in s for s in said)
    # its reports name the rows and say what the classifier learnt
    from apudae_tf import report_text, reports

    defences, _, _, facts = reports.table_defences(store.load_models(out), ds, ["direct"])
    assert {"No defence (adapted classifier)", "APuDAE direct + adapted classifier"} <= {d.name for d in defences}
    assert "fine-tuned on the purifier's outputs (B:n=2:alpha=2/255, direct)" in report_text._models_text(
        {"models": out, "dae_recipe": "paper", "classifier_adapted_to": facts["classifier_adapted_to"]})
    # a second run takes the purified training images from the cache
    purified.clear()
    classifiers.train_adapted_classifier(ds, tiny_cifar_models, out, tokens, settings, echo=lambda m: None)
    assert purified == [16, 16]
    # a cache from other images is refused, not silently used
    np.save(os.path.join(out, classifiers.ADAPT_CACHE, "train_purified_direct.npy"), cached[:8], allow_pickle=False)
    with pytest.raises(ApudaeError, match="does not match the training images"):
        classifiers.train_adapted_classifier(ds, tiny_cifar_models, out, ["direct"], settings, echo=lambda m: None)


def test_train_adapted_classifier_cli_refuses_an_unknown_variant_in_one_line(tmp_path):
    from click.testing import CliRunner

    import cli

    r = CliRunner().invoke(cli.main, ["train", "cifar10", "--what", "adapted-classifier", "--adapt-to", "B,Z",
                                      "--out", str(tmp_path / "o"), "--data-dir", str(tmp_path)])
    assert r.exit_code == 2 and "unknown variant(s) Z" in r.output and "Traceback" not in r.output


def test_n_fgsm_steps_eps_from_wide_noise_and_is_not_projected_back_to_eps():
    import tensorflow as tf
    from conftest import half_images, linear_classifier

    model = linear_classifier()
    x, y = half_images(64)
    eps = 8 / 255
    loss = lambda b: tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=model(b))  # noqa: E731
    x_adv = adversarial.n_fgsm(loss, tf.constant(x), eps, tf.constant(3)).numpy()
    d = np.abs(x_adv - x)
    assert d.max() <= 3 * eps + 1e-6 and d.max() > 2 * eps  # beyond the eval ball: noise 2ε plus the step ε
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    again = adversarial.n_fgsm(loss, tf.constant(x), eps, tf.constant(3)).numpy()
    assert np.array_equal(x_adv, again)  # seeded
    # the step climbs the loss
    assert float(tf.reduce_mean(loss(tf.constant(x_adv)))) > float(tf.reduce_mean(loss(tf.constant(x))))


@pytest.mark.slow
def test_cifar10_adaptive_report_attacks_the_chosen_variant_beside_the_papers_counter_attacks(tiny_cifar_models,
                                                                                              tmp_path):
    from apudae_tf import reports

    # the paper reports every CIFAR-10 variant; the chosen one must still get the counter attacks
    store.write_json(os.path.join(tiny_cifar_models, store.PURIFY_SETTINGS),
                     {"chosen_on": "val", "variants": {
                         "B": {"settings": {"n": 1, "alpha": 0.01}, "val_clean": 0.5, "val_pgd": 0.1},
                         "C": {"settings": {"n": 2, "alpha": 0.01}, "val_clean": 0.6, "val_pgd": 0.2}}})
    ds = _tiny_cifar(8)
    from apudae_tf import table

    budget = table.Budget(apgd_steps=1, targets=1, square_queries=2, eot=1)
    result = reports.adaptive_report(store.load_models(tiny_cifar_models), ds, 3, str(tmp_path / "a"),
                                      budget=budget, lambdas=(1.0,), command="test", steps=1)
    rows = {r["defence"] for r in result["records"]}
    assert rows == {"APuDAE direct", "APuDAE C (chosen on val)"}
    chosen = {r["attack"]: r for r in result["records"] if r["defence"] == "APuDAE C (chosen on val)"}
    assert set(chosen) == {"clean", "pgd", "bpda", "weighted", "apgd-ce", "apgd-t", "square", "worst"}
    assert chosen["bpda"]["paper"] == 0.680 and chosen["weighted"]["paper"] == 0.507
    assert chosen["apgd-ce"]["settings"]["defence"]["n"] == 2


def test_a_resume_refuses_changed_settings_but_not_a_later_version_s_new_setting_left_off(tmp_path):
    backup = tmp_path / ".dae_backup"
    backup.mkdir()
    store.write_json(str(backup / "settings.json"), {"epochs": 60, "patch": 128})
    fitting._check_resume(str(backup), {"epochs": 60, "patch": 128, "mixed_precision": False}, True, "dae")
    with pytest.raises(ApudaeError, match=r"mixed_precision: None -> True"):
        fitting._check_resume(str(backup), {"epochs": 60, "patch": 128, "mixed_precision": True}, True, "dae")
    with pytest.raises(ApudaeError, match=r"patch: 128 -> 64"):
        fitting._check_resume(str(backup), {"epochs": 60, "patch": 64}, True, "dae")
