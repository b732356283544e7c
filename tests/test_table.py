"""The paper's table: scoring rules, MagNet's threshold, the end-to-end builder and its cache,
and the adversarial-training baseline's checkpoint/resume."""

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import data_dir

from apudae_tf import cache, machine, stats, table
from apudae_tf.data import Dataset
from apudae_tf.errors import ApudaeError


def test_wilson_interval_holds_the_proportion_and_narrows_with_n():
    lo, hi = stats.wilson(50, 100)
    assert lo < 0.5 < hi and 0.18 < hi - lo < 0.21
    lo2, hi2 = stats.wilson(5000, 10000)
    assert hi2 - lo2 < (hi - lo) / 5
    assert stats.wilson(0, 40)[0] == 0.0 and stats.wilson(40, 40)[1] == 1.0


def test_refused_inputs_count_as_defended_only_under_magnets_rule_and_never_when_clean():
    pred = np.array([3, table.REJECTED, table.REJECTED, 1])
    y = np.array([3, 2, 2, 0])
    assert table.score(pred, y, "pgd", rejected_counts_as_defended=True).tolist() == [True, True, True, False]
    assert table.score(pred, y, "pgd", rejected_counts_as_defended=False).tolist() == [True, False, False, False]
    assert table.score(pred, y, "clean", rejected_counts_as_defended=True).tolist() == [True, False, False, False]


def test_per_image_results_survive_the_json_round_trip():
    mask = np.random.default_rng(0).random(1003) > 0.5
    assert np.array_equal(stats.unpack(stats.pack(mask), 1003), mask)


def test_magnet_threshold_refuses_one_percent_of_clean_validation_images(tiny_models):
    from apudae_tf import models, store

    m = store.load_models(tiny_models)
    x_val = np.random.default_rng(1).random((400, 28, 28, 1), dtype=np.float32)
    t = table.magnet_threshold(m.dae, x_val)
    r = models.predict_in_batches(lambda b: models.reconstruction_error(m.dae, b), x_val)
    assert 0.0 < np.mean(r > t) <= 0.0125
    # inputs far off the clean images are refused
    pred = table.magnet_fn(m.dae, m.classifier_fn(), t)(np.ones((3, 28, 28, 1), np.float32))
    assert (pred == table.REJECTED).all()


def test_chosen_variant_is_the_best_iterative_variant_on_validation():
    tuned = {"variants": {"direct": {"val_clean": 1.0, "val_pgd": 1.0}, "B": {"val_clean": 0.9, "val_pgd": 0.8},
                          "F": {"val_clean": 0.95, "val_pgd": 0.8}}}
    assert table.chosen_variant(tuned) == "F"
    assert table.chosen_variant({}) is None


def _tiny_mnist(n=12):
    rng = np.random.default_rng(0)
    x = rng.random((n, 28, 28, 1), dtype=np.float32)
    y = (np.arange(n) % 10).astype(np.int64)
    return Dataset("mnist", x, y, x, y, x, y, source="test")


@pytest.mark.slow
def test_table_builder_end_to_end_on_a_tiny_case_and_resumes_from_its_cache(tiny_models, tmp_path, monkeypatch):
    from apudae_tf import attacks, reports, store
    from apudae_tf.store import load_models

    ds = _tiny_mnist()
    m = load_models(tiny_models)
    store.save_model(m.classifier, os.path.join(tiny_models, store.ADV_CLASSIFIER))
    store.write_json(os.path.join(tiny_models, store.ADV_CLASSIFIER_INFO),
                     {"method": "Madry PGD adversarial training", "attack": {"eps": 0.3, "steps": 1, "step": 0.3},
                      "training": {"epochs": 1, "learning_rate": 5e-4}, "init": "random"})
    adv = store.load_adv_classifier(tiny_models)
    out = str(tmp_path / "report")
    result = reports.table_report(m, ds, 6, ["direct", "B"], out, adv=adv, cw_l2_n=3, command="test", steps=1)

    with open(os.path.join(out, "table.json")) as f:
        saved = json.load(f)
    records = saved["records"]
    columns = {"clean", "fgsm", "r-fgsm", "pgd", "cw", "cw-l2"}
    defences = {r["defence"] for r in records}
    assert {r["attack"] for r in records} == columns
    assert len(records) == len(columns) * len(defences) == len(columns) * 6
    assert {"No defence", "Adversarial training (Madry PGD)", "APuDAE direct", "APuDAE B"} <= defences
    for r in records:
        assert set(r) >= {"defence", "attack", "accuracy", "n", "settings"}
        assert r["n"] == (3 if r["attack"] == "cw-l2" else 6)
        blind = r["defence"] != "Adversarial training (Madry PGD)"
        assert r["settings"]["attack"]["saw_defence"] is not blind
    pgd = next(r for r in records if r["defence"] == "No defence" and r["attack"] == "pgd")
    assert pgd["settings"]["attack"]["steps"] == 1 and pgd["settings"]["attack"]["eps"] == 0.3
    magnet = {r["defence"]: r["accuracy"] for r in records if r["attack"] == "fgsm" and "MagNet" in r["defence"]}
    assert magnet["MagNet, refused = defended"] >= magnet["MagNet, refused = error"]
    md = open(os.path.join(out, "table.md")).read()
    assert "| APuDAE direct |" in md and "(0.973," in md and "blind" in md
    for name in ("fig3_r_hist.png", "examples.png"):
        with open(os.path.join(out, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert result["records"] == records
    # the time of every set of attacked images, once per target: the classifier and the adv model
    timed = {(a["target"], a["column"]) for a in saved["attack_seconds"]}
    assert ("classifier", "pgd") in timed and ("adv-classifier", "cw-l2") in timed
    assert all(a["seconds"] >= 0 for a in saved["attack_seconds"])

    # a second run takes every attack and every cell from the cache: no attack runs again
    def no_attacks(*a, **k):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(attacks, "run_attack", no_attacks)
    again = reports.table_report(m, ds, 6, ["direct", "B"], out, adv=adv, cw_l2_n=3, command="test", steps=1,
                                  figures=False)
    assert [r["accuracy"] for r in again["records"]] == [r["accuracy"] for r in records]
    # other settings are not served from the cache
    with pytest.raises(AssertionError, match="cache should have answered"):
        reports.table_report(m, ds, 6, ["direct"], out, adv=None, cw_l2_n=3, command="test", steps=2)

    # a retrained DAE misses the cache for every row that uses it, and only for those
    dae_digest = store.file_digest(os.path.join(tiny_models, store.DAE))
    assert next(r for r in records if r["defence"] == "APuDAE B")["settings"]["defence"]["dae"] == dae_digest
    m.dae.get_layer("enc1_conv").kernel.assign(m.dae.get_layer("enc1_conv").kernel * 1.01)
    store.save_model(m.dae, os.path.join(tiny_models, store.DAE))
    rescored = set()
    put_cell = cache.Cache.put_cell
    monkeypatch.setattr(cache.Cache, "put_cell", lambda self, k, r: (rescored.add(r["defence"]), put_cell(self, k, r)))
    reports.table_report(store.load_models(tiny_models), ds, 6, ["direct", "B"], out, adv=adv, cw_l2_n=3,
                          command="test", steps=1, figures=False)
    assert rescored == defences - {"No defence", "Adversarial training (Madry PGD)"}


@pytest.mark.slow
def test_counter_attacks_make_one_set_of_examples_for_every_variant_of_a_dae(tiny_models, tmp_path):
    from apudae_tf import reports, store

    ds = _tiny_mnist()
    m = store.load_models(tiny_models)
    defences, targets, files, _ = reports.table_defences(m, ds, ["direct", "B"])
    defences = [d for d in defences if d.purifier is not None]
    budget = table.Budget(apgd_steps=1, targets=1, square_queries=2)
    columns = [c for c in table.adaptive_columns("mnist", 4, lambdas=(1.0,), steps=1, budget=budget)
               if c.key in ("bpda", "weighted", "apgd-ce")]
    out = str(tmp_path / "shared")
    _, kept = table.build(ds, defences, targets, files, columns, out)
    made = sorted(f.split("-")[1] for f in os.listdir(os.path.join(out, "cache")) if f.endswith(".npz"))
    assert made == ["apgd", "apgd", "bpda", "weighted"]  # the attack through the purifier differs per variant


@pytest.mark.slow
def test_adv_training_checkpoints_and_resumes_after_an_interruption(tmp_path, monkeypatch):
    import dataclasses

    from apudae_tf import adversarial, store, train

    rng = np.random.default_rng(0)
    x = rng.random((64, 28, 28, 1), dtype=np.float32)
    y = (np.arange(64) % 10).astype(np.int64)
    ds = Dataset("mnist", x, y, x[:16], y[:16], x[:16], y[:16], source="test")
    out = str(tmp_path / "m")
    os.makedirs(out)
    settings = train.TrainSettings(epochs=1, batch_size=32)
    real_save = store.save_model

    def interrupted(model, path):
        raise KeyboardInterrupt  # the session ends after the epoch's checkpoint

    monkeypatch.setattr(store, "save_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        adversarial.train_adv_classifier(ds, out, settings, steps=1)
    assert os.path.isdir(os.path.join(out, adversarial.ADV_BACKUP))
    monkeypatch.setattr(store, "save_model", real_save)
    # a checkpoint is continued only when asked, and only with the settings it was started with
    with pytest.raises(ApudaeError, match="pass --resume"):
        adversarial.train_adv_classifier(ds, out, settings, steps=1)
    with pytest.raises(ApudaeError, match="batch_size: 32 -> 16"):
        adversarial.train_adv_classifier(ds, out, dataclasses.replace(settings, batch_size=16), steps=1, resume=True)
    said = []
    summary = adversarial.train_adv_classifier(ds, out, dataclasses.replace(settings, epochs=2), echo=said.append, steps=1,
                                         resume=True)
    assert any("resuming after epoch 1" in s for s in said)
    assert sum("epoch 2/2" in s for s in said) == 1 and not any("epoch 1/2" in s for s in said)
    info = json.load(open(os.path.join(out, store.ADV_CLASSIFIER_INFO)))
    assert info["attack"]["eps"] == 0.3 and info["attack"]["steps"] == 1 and [h["epoch"] for h in info["history"]] == [1, 2]
    assert os.path.isfile(os.path.join(out, store.ADV_CLASSIFIER))
    assert not os.path.exists(os.path.join(out, adversarial.ADV_BACKUP))
    from conftest import saved_accuracy

    assert summary["adv_classifier_test_accuracy"] == pytest.approx(
        saved_accuracy(os.path.join(out, store.ADV_CLASSIFIER), ds.x_test, ds.y_test))


def test_evaluate_without_an_adversarially_trained_classifier_says_how_to_get_one(tiny_models):
    import cli

    r = CliRunner().invoke(cli.main, ["evaluate", "mnist", "--models", tiny_models, "--n", "4",
                                      *(["--data-dir", data_dir()] if data_dir() else [])])
    assert r.exit_code == 2
    assert "--what adv-classifier" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli.main, ["evaluate", "mnist", "--models", tiny_models, "--variants", "Z",
                                      "--no-adv-training", *(["--data-dir", data_dir()] if data_dir() else [])])
    assert r.exit_code == 2 and "unknown variant 'Z'" in r.output


def test_roc_auc_is_the_probability_that_an_adversarial_input_scores_higher():
    clean, adv = np.array([0.1, 0.2, 0.3]), np.array([0.5, 0.6])
    assert stats.roc(clean, adv)["auc"] == 1.0
    assert stats.roc(adv, clean)["auc"] == 0.0
    assert stats.roc(np.array([1.0, 1.0]), np.array([1.0, 1.0]))["auc"] == 0.5  # ties count half
    assert stats.roc(np.array([0.1, 0.4]), np.array([0.3, 0.5]))["auc"] == 0.75
    c = stats.roc(clean, adv)
    assert c["fpr"][0] == c["tpr"][0] == 0.0 and c["fpr"][-1] == c["tpr"][-1] == 1.0


@pytest.mark.slow
def test_adaptive_report_end_to_end_cascades_and_keeps_each_rows_worst_case(tiny_models, tmp_path):
    from apudae_tf import report_text, reports, store

    ds = _tiny_mnist()
    m = store.load_models(tiny_models)
    out = str(tmp_path / "adaptive")
    store.save_model(m.classifier, os.path.join(tiny_models, store.ADV_CLASSIFIER))
    store.write_json(os.path.join(tiny_models, store.ADV_CLASSIFIER_INFO), {"method": "test", "attack": {}})
    store.write_json(os.path.join(tiny_models, store.PURIFY_SETTINGS),
                     {"variants": {"B": {"settings": {"n": 2}, "val_clean": 0.9, "val_pgd": 0.5}}})
    adv = store.load_adv_classifier(tiny_models)
    budget = table.Budget(apgd_steps=2, targets=2, square_queries=3, eot=2)
    result = reports.adaptive_report(m, ds, 6, out, adv=adv, budget=budget, lambdas=(0.0, 10.0), command="test",
                                      steps=1)
    saved = json.load(open(os.path.join(out, "adaptive.json")))
    columns = ["clean", "pgd", "bpda", "weighted", "apgd-ce", "apgd-t", "square", "worst"]
    rows = list(dict.fromkeys(r["defence"] for r in saved["records"]))
    assert rows == ["Adversarial training (Madry PGD)", "APuDAE direct", "APuDAE B (chosen on val)",
                    "APuDAE B + adversarially trained classifier"]
    for row in rows:
        recs = [r for r in saved["records"] if r["defence"] == row]
        assert [r["attack"] for r in recs] == columns
        robust = {r["attack"]: stats.unpack(r["robust"], 6) for r in recs}
        assert all(r["accuracy"] == robust[r["attack"]].mean() for r in recs)
        # the worst case is the images robust in every column: never above any single column
        every = np.logical_and.reduce([robust[a] for a in columns[:-1]])
        assert np.array_equal(robust["worst"], every)
        assert all(robust["worst"].mean() <= r["accuracy"] for r in recs)
        # the cascade attacks only what every column to its left left standing
        standing = np.logical_and.reduce([robust[a] for a in columns[:4]])
        for a in ("apgd-ce", "apgd-t", "square"):
            cell = next(r for r in recs if r["attack"] == a)
            assert cell["attacked"] == standing.sum() and not (robust[a] & ~standing).any()
            standing &= robust[a]
    at = [r for r in saved["records"] if r["kind"] == "adversarial training"]
    # adversarial training has no purifier: its counter columns are its white-box PGD, one draw
    assert all(r["settings"]["attack"]["method"] == "pgd" and r["settings"]["attack"]["eot"] == 1
               for r in at if r["attack"] in ("pgd", "bpda", "weighted"))
    assert next(r for r in at if r["attack"] == "apgd-ce")["settings"]["attack"]["gradient"] == "white box"
    pipeline = [r for r in saved["records"] if r["defence"].endswith("+ adversarially trained classifier")]
    assert all(r["settings"]["attack"]["target"] == "adv-classifier" for r in pipeline if r["attack"] != "worst")
    assert next(r for r in pipeline if r["attack"] == "apgd-ce")["settings"]["attack"]["gradient"] == "exact"
    for r in saved["records"]:
        if r["attack"] == "weighted" and r["kind"] == "purifier":
            sweep = r["settings"]["lambda_sweep"]
            assert set(sweep) == {"0.0", "10.0"} and r["accuracy"] == min(sweep.values())
        if r["attack"] in ("apgd-ce", "apgd-t"):
            a = r["settings"]["attack"]
            assert (a["steps"], a["restarts"], a["eot"]) == (2, 1, 1)  # B is deterministic: one draw is exact
        if r["attack"] == "square":
            assert r["settings"]["attack"]["steps"] == 3 and r["settings"]["attack"]["gradient"].startswith("none")
    roc = json.load(open(os.path.join(out, "roc.json")))
    assert "pgd (blind)" in roc["curves"] and all(c["fpr"][-1] == c["tpr"][-1] == 1.0 for c in roc["curves"].values())
    with open(os.path.join(out, "roc.png"), "rb") as f:
        assert f.read(4) == b"\x89PNG"
    md = open(os.path.join(out, "adaptive.md")).read()
    assert "**worst case**" in md and "counter A" in md and "+ APGD-CE" in md
    assert result["budget"]["square_queries"] == 3
    # the Markdown is rendered from the records alone: re-rendering the JSON gives it again
    os.remove(os.path.join(out, "adaptive.md"))
    assert report_text.render(os.path.join(out, "adaptive.json")) == os.path.join(out, "adaptive.md")
    assert open(os.path.join(out, "adaptive.md")).read() == md


@pytest.mark.slow
def test_chunked_cells_attack_as_whole_ones_and_resume_from_cells_json_alone(tiny_models, tmp_path, monkeypatch):
    from apudae_tf import attacks, models, report_text, reports, store

    m = store.load_models(tiny_models)
    ds = _tiny_mnist()
    # labels the direct row gets right clean, so that the cascade has images to attack
    y = np.argmax(m.classifier(models.denoise(m.dae, ds.x_test)), -1).astype(np.int64)
    ds = Dataset("mnist", ds.x_train, y, ds.x_val, y, ds.x_test, y, source="test, labelled by the model")
    defences, targets, files, _ = reports.table_defences(m, ds, reports.parse_variants("mnist", "direct,F:n=2"))
    defences = [d for d in defences if d.purifier is not None]
    budget = table.Budget(apgd_steps=2, targets=1, square_queries=2, eot=2)
    before = ("bpda", "weighted", "pgd", "bpda-eot")
    r_fn = lambda x: models.reconstruction_errors(m.dae, x)  # noqa: E731
    # chunks of whole batches continue the cell's seeds: the same adversarial images as the whole cell
    plain = table.adaptive_columns("mnist", 6, lambdas=(1.0,), steps=1, budget=budget, before=before)
    _, whole = table.build(ds, defences, targets, files, plain, str(tmp_path / "whole"), batch_size=2,
                           per_image=True)
    _, chunked = table.build(ds, defences, targets, files, plain, str(tmp_path / "chunks"), batch_size=2,
                             per_image=True, chunk=2)
    assert set(chunked) == set(whole)
    first = [k for k in whole if len(k) == 3 and k[1] in before]  # the ensemble's images hang on the scoring
    assert {k[1] for k in first} == set(before)
    for k in first:
        assert np.array_equal(chunked[k][1], whole[k][1]) and np.allclose(chunked[k][0], whole[k][0], atol=1e-6), k
    # every column after clean a cascade: each attacks only the images still standing in its row
    columns = table.adaptive_columns("mnist", 6, lambdas=(1.0,), steps=1, budget=budget, before=before,
                                     cascade_all=True, purifier_chunk=1)
    out = str(tmp_path / "cascade")
    result, _ = table.build(ds, defences, targets, files, columns, out, batch_size=2, per_image=True, chunk=2,
                            detector=r_fn)
    for d in defences:
        recs = [r for r in result["records"] if r["defence"] == d.name and r["attack"] != "worst"]
        standing = stats.unpack(recs[0]["robust"], 6)
        for r in recs[1:]:
            robust = stats.unpack(r["robust"], 6)
            assert r["attacked"] == standing.sum() and not (robust & ~standing).any()
            assert r["r_adv"]["idx"] == np.flatnonzero(standing).tolist() and len(r["r_adv"]["r"]) == r["attacked"]
            standing &= robust
    assert 0 < sum(r["attacked"] for r in result["records"] if r["attack"] not in ("clean", "worst"))
    # attacks that run the purification at every step keep each image as it finishes: a cached chunk per image
    cells = cache.Cache(os.path.join(out, "cache")).cells.values()
    for r in result["records"]:
        if r["attack"] in ("bpda-eot", "apgd-ce", "square"):
            assert sum(q["defence"] == r["defence"] and q["attack"] == r["attack"] for q in cells) == max(r["attacked"], 1)
    # a new checkout keeps cells.json only: the report comes back without attacking anything
    for f in os.listdir(os.path.join(out, "cache")):
        if f.endswith(".npz"):
            os.remove(os.path.join(out, "cache", f))
    monkeypatch.setattr(attacks, "run_attack", lambda *a, **k: pytest.fail("attacked again"))
    again, _ = table.build(ds, defences, targets, files, columns, out, batch_size=2, per_image=True, chunk=2,
                           detector=r_fn)
    assert again["records"] == result["records"]
    # each chunk keeps the memory of the run that made it: a report resumed by a lighter run still names the
    # peak of the runs that filled its cache, in its data and its text
    assert all(r["peak_rss_gib"] > 0.1 for r in result["records"] if r["attack"] != "worst")
    cached = cache.Cache(os.path.join(out, "cache"))
    heavy = next(k for k, r in cached.cells.items() if r["attack"] == "bpda-eot")
    cached.put_cell(heavy, dict(cached.cells[heavy], peak_rss_gib=99.0))
    resumed, _ = table.build(ds, defences, targets, files, columns, out, batch_size=2, per_image=True, chunk=2)
    assert resumed["peak_rss_gib"] == 99.0 and result["peak_rss_gib"] < 99.0
    assert "peak memory 99.0 GiB" in report_text.run_cost(dict(resumed, environment=machine.environment()))


def test_a_profile_file_with_an_unknown_adaptive_attack_or_a_bad_chunk_is_one_error():
    from apudae_tf import profiles
    from apudae_tf.errors import ApudaeError

    base = {"name": "mine", "eps": 0.1, "steps": 5, "step": 0.02, "sigma_max": 0.2}
    assert profiles.from_json(dict(base, adaptive_attacks=["bpda", "bpda-eot"]), "p.json").adaptive_attacks == (
        "bpda", "bpda-eot")
    with pytest.raises(ApudaeError, match="adaptive_attacks .*'deepfool'.* may hold only pgd, bpda"):
        profiles.from_json(dict(base, adaptive_attacks=["deepfool"]), "p.json")
    with pytest.raises(ApudaeError, match="adaptive_chunk must be an integer >= 0"):
        profiles.from_json(dict(base, adaptive_chunk=-3), "p.json")
    with pytest.raises(ApudaeError, match="adaptive_purifier_chunk must be an integer >= 0"):
        profiles.from_json(dict(base, adaptive_purifier_chunk=2.5), "p.json")


def test_two_reports_sharing_a_cache_folder_keep_each_others_cells(tmp_path):
    folder = str(tmp_path / "cache")
    table_run, adaptive_run = cache.Cache(folder), cache.Cache(folder)  # both opened before either writes
    table_run.put_cell("a", {"accuracy": 0.5})
    adaptive_run.put_cell("b", {"accuracy": 0.25})
    table_run.put_cell("c", {"accuracy": 0.75})
    assert set(cache.Cache(folder).cells) == {"a", "b", "c"}


def test_report_names_every_apudae_cell_below_the_paper_and_only_those():
    from apudae_tf import report_text

    def rec(defence, attack, acc, paper, ci):
        kind = "purifier" if defence.startswith("APuDAE") else "undefended"
        return {"defence": defence, "kind": kind, "attack": attack, "accuracy": acc, "paper": paper, "ci95": ci}

    result = {"records": [rec("APuDAE D", "fgsm", 0.915, 0.964, [0.909, 0.920]),
                          rec("APuDAE D", "pgd", 0.948, 0.951, [0.944, 0.952]),
                          rec("APuDAE D", "cw", 0.991, 0.953, [0.989, 0.993]),
                          rec("No defence", "pgd", 0.0, 0.129, [0.0, 0.001])]}
    text = "\n".join(report_text._below_paper(result))
    assert "APuDAE D × fgsm: 0.915 vs 0.964" in text and "× cw" not in text and "No defence" not in text
    assert "APuDAE D × pgd: 0.948 vs 0.951 (the paper's value is inside our 95% interval)" in text
    assert "fgsm: 0.915 vs 0.964 (the paper" not in text
    result["records"] = result["records"][2:]
    assert report_text._below_paper(result) == []



def test_an_interrupted_attack_resumes_from_its_finished_batches(tmp_path, monkeypatch):
    from apudae_tf import attacks

    firsts, stop_at = [], [None]

    def fake(model_fn, x, y, settings):  # an attack whose output shows which batch (seed) made it
        if len(firsts) == stop_at[0]:
            raise KeyboardInterrupt  # the session ends mid-cell
        firsts.append(settings.seed)
        return x.numpy() + settings.seed / 1000

    monkeypatch.setitem(attacks.ATTACKS, "fake", fake)
    x = np.zeros((10, 4, 4, 1), np.float32)
    s = attacks.AttackSettings(eps=0.1, steps=1, step=0.1, seed=7)
    whole = attacks.run_attack("fake", None, x, np.zeros(10), s, batch_size=4)
    firsts.clear()
    cached = cache.Cache(str(tmp_path))
    stop_at[0] = 2
    with pytest.raises(KeyboardInterrupt):
        attacks.run_attack("fake", None, x, np.zeros(10), s, batch_size=4, done=cached.batches("k"))
    assert firsts == [7, 11]
    firsts.clear()
    stop_at[0] = None
    done = cached.batches("k")
    again = attacks.run_attack("fake", None, x, np.zeros(10), s, batch_size=4, done=done)
    assert firsts == [15] and np.array_equal(again, whole)  # only the last batch was run again
    assert len(cached._batch_paths("k")) == 3 and done.reused_seconds >= 0
    cached.put_examples("k", again, {})
    assert cached._batch_paths("k") == [] and np.array_equal(cached.examples("k")[0], whole)
