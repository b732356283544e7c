"""The command line as a careful user meets it: no lost data on a pipe, no write over shipped models or
existing outputs, checks before work, one `error:` line for a bad option, stdout for data only, a fast
`--help`, and the main job on the MNIST test images inside the package."""

import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from apudae_tf import data, pipeline, store

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = [sys.executable, os.path.join(REPO, "cli.py")]
COMMANDS = ("train", "info", "attack", "purify", "classify", "export", "tune", "evaluate", "certify")


# a user's npz dataset declares its threat model when it is trained
DECLARED = ["--eps", "0.3", "--steps", "10", "--step", "0.03", "--sigma-max", "0.5"]


def _cli(args, cwd, env=None, **kw):
    env = {k: v for k, v in os.environ.items() if k != data.DATA_DIR_ENV} | (env or {})
    return subprocess.run(CLI + list(args), cwd=cwd, env=env, capture_output=True, timeout=600, **kw)


def _one_error_line(res) -> str:
    text = res.stderr.decode() if isinstance(res.stderr, bytes) else res.stderr
    lines = [line for line in text.splitlines() if line.strip()]
    assert res.returncode == 2, text
    assert "Traceback" not in text and lines and lines[-1].startswith("error: "), text
    assert sum(line.startswith("error") for line in lines) == 1, text
    return lines[-1]


def _stops_early(args, cwd, stdin=None, read=100):
    """Run a command whose stdout reader takes ``read`` bytes and closes the pipe."""
    proc = subprocess.Popen(CLI + list(args), cwd=cwd, stdin=subprocess.PIPE if stdin else None,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if stdin:
        proc.stdin.write(stdin)
        proc.stdin.close()
    got = proc.stdout.read(read)
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=600)
    return got, proc.returncode, err.decode()


@pytest.mark.slow
def test_a_reader_that_stops_early_is_an_error_not_a_silent_cut(tiny_models, tiny_npz, tmp_path):
    # 50 images of 28x28 floats are 157 kB, more than a pipe holds
    args = ["attack", "--dataset", f"npz:{tiny_npz}", "--models", tiny_models, "--method", "none", "--n", "50",
            "--eps", "0.1", "--steps", "1"]
    got, code, err = _stops_early(args, tmp_path)
    assert len(got) == 100 and code == 2, err
    assert err.strip().splitlines()[-1].startswith("error: the reader closed the pipe after") and "Traceback" not in err
    # a middle stage of a pipeline whose own reader stops early: the same
    x = np.random.default_rng(0).random((50, 28, 28, 1), dtype=np.float32)
    batch = pipeline.dumps(pipeline.Batch(x=x, y=None, meta={"dataset": "mnist"}))
    got, code, err = _stops_early(["purify", "--variant", "direct", "--models", tiny_models], tmp_path, stdin=batch,
                                  read=10)
    assert code == 2 and "output lost" in err and "Traceback" not in err


@pytest.mark.slow
def test_unwritable_outputs_fail_before_any_work(tiny_models, tiny_npz, tmp_path):
    cases = [
        ["attack", "--dataset", f"npz:{tiny_npz}", "--models", tiny_models, "--n", "5", "-o", "/sys/apudae.npz"],
        ["train", f"npz:{tiny_npz}", "--out", "/sys/apudae"] + DECLARED,
        ["evaluate", "mnist", "--out", "/sys/apudae"],
        ["tune", "mnist", "--models", tiny_models, "--out", "/sys/apudae"],
        ["export", "--dataset", "mnist", "--models", tiny_models, "--out", "/sys/apudae"],
    ]
    for args in cases:
        t0 = time.time()
        res = _cli(args, tmp_path)
        line = _one_error_line(res)
        assert "/sys/apudae" in line and "cannot write" in line, line
        assert b"training" not in res.stderr and b"images" not in res.stderr  # no work was started
        assert time.time() - t0 < 60
    x = np.random.default_rng(0).random((2, 28, 28, 1), dtype=np.float32)
    res = _cli(["classify", "--models", tiny_models, "-o", "/sys/apudae.npz"], tmp_path,
               input=pipeline.dumps(pipeline.Batch(x=x, y=None, meta={})))
    assert "cannot write" in _one_error_line(res)
    res = _cli(["purify", "--models", tiny_models, "-o", str(tmp_path)], tmp_path,
               input=pipeline.dumps(pipeline.Batch(x=x, y=None, meta={})))
    assert "is a directory" in _one_error_line(res)


@pytest.mark.slow
def test_existing_outputs_are_kept_unless_forced(tiny_models, tiny_npz, tmp_path):
    # a model folder that already holds the DAE (tiny_models does)
    res = _cli(["train", f"npz:{tiny_npz}", "--what", "dae", "--out", tiny_models] + DECLARED, tmp_path)
    assert "already holds dae.keras" in _one_error_line(res) and "--force" in res.stderr.decode()
    # a report folder that holds the report
    report = tmp_path / "report"
    report.mkdir()
    (report / "table.json").write_text("{}")
    res = _cli(["evaluate", "mnist", "--models", tiny_models, "--out", str(report)], tmp_path)
    assert "already holds table.json" in _one_error_line(res)
    assert (report / "table.json").read_text() == "{}"
    # tuning in place over an earlier choice
    (open(os.path.join(tiny_models, store.PURIFY_SETTINGS), "w")).write('{"variants": {}}')
    res = _cli(["tune", "mnist", "--models", tiny_models, "--out", tiny_models], tmp_path)
    assert "already holds purify_settings.json" in _one_error_line(res)
    # tuning into a folder that holds another DAE (copies of the same files would be a resumed tune)
    other = tmp_path / "other"
    other.mkdir()
    (other / store.DAE).write_bytes(b"not the same DAE")
    res = _cli(["tune", "mnist", "--models", tiny_models, "--out", str(other)], tmp_path)
    assert "already holds dae.keras" in _one_error_line(res)
    assert (other / store.DAE).read_bytes() == b"not the same DAE"


@pytest.mark.slow
def test_shipped_models_are_read_only_to_every_command(tmp_path):
    shipped = store.default_model_dir("mnist")
    for args in (["train", "mnist", "--what", "dae", "--out", shipped],
                 ["tune", "mnist", "--out", shipped],
                 ["attack", "--dataset", "mnist", "--n", "2", "-o", os.path.join(shipped, "x.npz")]):
        line = _one_error_line(_cli(args, tmp_path))
        assert "shipped" in line or "already holds" in line, line


def _digests(folder: str) -> dict:
    """Every file under ``folder`` (subfolders included) by its SHA-256."""
    return {os.path.relpath(os.path.join(d, f), folder): hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest()
            for d, _, files in os.walk(folder) for f in files}


@pytest.mark.slow
def test_train_without_out_writes_under_the_working_folder_only(tiny_npz, tmp_path):
    before = _digests(os.path.join(store.SAVED_MODELS, "mnist"))
    res = _cli(["train", f"npz:{tiny_npz}", "--what", "dae", "--epochs", "1", *DECLARED], tmp_path)
    assert res.returncode == 0, res.stderr.decode()
    summary = json.loads(res.stdout)  # stdout is the JSON summary alone: Keras' lines went to stderr
    out = os.path.join("apudae-runs", "tiny", "models")
    assert summary["out"] == out and os.path.isfile(tmp_path / out / store.DAE)
    assert f"writing to {out}" in res.stderr.decode() and "training the dae" in res.stderr.decode()
    after = _digests(os.path.join(store.SAVED_MODELS, "mnist"))
    assert after == before
    # the same command again keeps what it made
    assert "already holds dae.keras" in _one_error_line(_cli(["train", f"npz:{tiny_npz}", "--what", "dae", *DECLARED],
                                                             tmp_path))


@pytest.mark.parametrize("args, option, value", [
    (["attack", "--dataset", "mnist", "--eps", "2"], "--eps", "2.0"),
    (["attack", "--dataset", "mnist", "--n", "0"], "--n", "0"),
    (["purify", "--alpha", "-1"], "--alpha", "-1.0"),
    (["purify", "--rho", "1.5"], "--rho", "1.5"),
    (["evaluate", "mnist", "--adaptive", "--apgd-steps", "0"], "--apgd-steps", "0"),
])
def test_a_bad_option_is_one_line_naming_option_value_and_range(args, option, value, tmp_path):
    t0 = time.time()
    line = _one_error_line(_cli(args, tmp_path))
    assert option in line and value in line and "range" in line, line
    assert time.time() - t0 < 10  # checked by the parser, before TensorFlow is even imported


@pytest.mark.slow
def test_uint8_input_gets_the_hint_to_scale(tiny_models, tmp_path):
    x = (np.random.default_rng(0).random((2, 28, 28, 1)) * 255).astype(np.uint8)
    import io

    buf = io.BytesIO()
    np.savez(buf, x=x)
    res = _cli(["classify", "--models", tiny_models], tmp_path, input=buf.getvalue())
    assert "/ 255" in _one_error_line(res)


def test_help_answers_fast_for_every_command(tmp_path):
    for command in COMMANDS:
        t0 = time.time()
        res = _cli([command, "--help"], tmp_path)
        seconds = time.time() - t0
        assert res.returncode == 0 and b"Usage:" in res.stdout
        assert seconds < 2.0, f"{command} --help took {seconds:.1f} s"  # ~0.4 s measured; TensorFlow is not imported


EMBEDDED_SHA256 = {"x_train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
                   "y_train": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
                   "x_test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
                   "y_test": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5"}


@pytest.mark.slow
def test_the_embedded_mnist_is_exact_and_serves_every_split_offline(tmp_path, monkeypatch):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)  # CI points it at ../shared/data
    raw = np.load(os.path.join(data.EMBEDDED, "mnist.npz"), allow_pickle=False)
    for key, digest in EMBEDDED_SHA256.items():
        assert hashlib.sha256(raw[key].tobytes()).hexdigest() == digest, key
    ds = data.load_dataset("mnist")
    assert ds.source == "embedded:mnist" and ds.x_test.shape == (10000, 28, 28, 1)
    assert len(ds.x_train) == 55000 and len(ds.x_val) == 5000  # the profile's validation split
    # no data folder configured: attack reads the test and the validation split, with no network
    for split, x in (("test", ds.x_test), ("val", ds.x_val)):
        out = tmp_path / f"{split}.npz"
        res = _cli(["attack", "--dataset", "mnist", "--method", "none", "--n", "3", "--split", split, "-o", str(out)],
                   tmp_path)
        assert res.returncode == 0, res.stderr.decode()
        np.testing.assert_array_equal(pipeline.read(str(out)).x, x[:3])


@pytest.mark.acceptance
def test_the_readmes_main_job_runs_offline_on_the_embedded_images(tmp_path):
    """README's first command, with no data folder: PGD (blind to the defence) breaks the classifier and
    F purifies most of it back. Blind: the adaptive report says what is left against an attacker who
    sees F."""
    env = {k: v for k, v in os.environ.items() if k != data.DATA_DIR_ENV}
    cli = " ".join(CLI)
    # the README's pipe, with a tee to keep the attacked images for the undefended score and the budget
    purified = subprocess.run(f"set -o pipefail; {cli} attack --dataset mnist --method pgd --n 500 | tee adv.npz | "
                              f"{cli} purify --variant F | {cli} classify --json", shell=True, executable="/bin/bash",
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert purified.returncode == 0, purified.stderr
    undefended = subprocess.run(CLI + ["classify", "--json", "-i", "adv.npz"], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=900)
    assert undefended.returncode == 0, undefended.stderr
    assert json.loads(undefended.stdout)["accuracy"] <= 0.05
    assert json.loads(purified.stdout)["accuracy"] >= 0.90
    x = data.load_dataset("mnist", test_only=True).x_test[:500]
    assert np.abs(pipeline.read(str(tmp_path / "adv.npz")).x - x).max() <= 0.3 + 1e-6


def _synthetic_npz(path, n_train=240, n_test=40, size=16, seed=0):
    """A learnable dataset no profile knows: 4 classes, each a bright quadrant on noise (16x16 grey)."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = np.arange(n) % 4
        x = rng.integers(0, 60, (n, size, size), dtype=np.uint8)
        h = size // 2
        for k in range(4):
            r, c = divmod(k, 2)
            x[y == k, r * h:(r + 1) * h, c * h:(c + 1) * h] += 150
        return x, y.astype(np.uint8)

    (xtr, ytr), (xte, yte) = make(n_train), make(n_test)
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    return str(path)


@pytest.mark.slow
def test_a_new_dataset_is_one_profile_and_every_command_runs_on_it(tmp_path):
    """A user's dataset declared by a small profile file: train -> tune -> attack -> purify -> classify ->
    evaluate (table and adaptive) run on it with no further flags, each reading the recorded profile."""
    data_file = _synthetic_npz(tmp_path / "quads.npz")
    profile = tmp_path / "quads-profile.json"
    profile.write_text(json.dumps({"name": "quads", "eps": 0.1, "steps": 5, "step": 0.03, "sigma_max": 0.2,
                                   "epochs": {"classifier": 3, "dae": 2}}))
    ds, models = f"npz:{data_file}", str(tmp_path / "models")

    def ok(args, **kw):
        res = _cli(args, tmp_path, **kw)
        assert res.returncode == 0, (args, res.stderr.decode()[-2000:])
        return res

    ok(["train", ds, "--profile", str(profile), "--out", models])
    recorded = json.load(open(os.path.join(models, "profile.json")))
    assert recorded["name"] == "quads" and recorded["threat"]["eps"] == 0.1 and recorded["epochs"]["dae"] == 2
    tuned = str(tmp_path / "tuned")
    ok(["tune", ds, "--models", models, "--variants", "D", "--n-val", "8", "--out", tuned])
    chosen = json.load(open(os.path.join(tuned, store.PURIFY_SETTINGS)))["variants"]["D"]["settings"]
    assert chosen["alpha"] in (0.1 / 8, 0.1 / 4, 0.1 / 2)  # the generic grid, scaled by this ε
    # the same tune run again after an interruption resumes: its copies are no conflict, and every scored
    # setting comes from ./apudae-runs/quads/tune-cache (its measured time too: nothing was re-run)
    first = json.load(open(os.path.join(tuned, "tune.json")))
    os.remove(os.path.join(tuned, store.PURIFY_SETTINGS))
    os.remove(os.path.join(tuned, "tune.json"))
    ok(["tune", ds, "--models", models, "--variants", "D", "--n-val", "8", "--out", tuned])
    assert json.load(open(os.path.join(tuned, "tune.json")))["variants"] == first["variants"]
    assert os.path.isfile(tmp_path / "apudae-runs" / "quads" / "tune-cache" / "cells.json")
    adv = tmp_path / "adv.npz"
    ok(["attack", "--dataset", ds, "--models", tuned, "--n", "20", "-o", str(adv)])
    batch = pipeline.read(str(adv))
    assert batch.meta["history"][0]["settings"]["eps"] == 0.1 and batch.meta["history"][0]["settings"]["steps"] == 5
    x_test = data.load_dataset(ds).x_test[:20]
    assert np.abs(batch.x - x_test).max() <= 0.1 + 1e-6
    purified = tmp_path / "purified.npz"
    ok(["purify", "--variant", "D", "--models", tuned, "-i", str(adv), "-o", str(purified)])
    out = json.loads(ok(["classify", "--models", tuned, "-i", str(purified), "--json"]).stdout)
    assert out["n"] == 20 and out["dataset"] == "quads"
    report = str(tmp_path / "report")
    ok(["evaluate", ds, "--models", tuned, "--n", "12", "--no-adv-training", "--variants", "direct,D",
        "--cw-l2-n", "0", "--out", report])
    table = json.load(open(os.path.join(report, "table.json")))
    assert {r["attack"] for r in table["records"]} == {"clean", "random", "fgsm", "r-fgsm", "pgd", "cw"}
    # every report records what computed it: a re-run under other library versions can move a cell
    import tensorflow as tf
    assert table["environment"]["tensorflow"] == tf.__version__ and first["environment"]["cpu_cores"] >= 1
    # and the memory the run took: TensorFlow alone holds more than 100 MB
    assert table["environment"]["peak_rss_gib"] > 0.1
    assert f"peak memory {table['environment']['peak_rss_gib']:.1f} GiB" in open(os.path.join(report, "table.md")).read()
    ok(["evaluate", ds, "--models", tuned, "--n", "6", "--no-adv-training", "--adaptive", "--apgd-steps", "2",
        "--apgd-targets", "1", "--square-queries", "3", "--out", report])
    adaptive = json.load(open(os.path.join(report, "adaptive.json")))
    assert {r["attack"] for r in adaptive["records"]} >= {"apgd-ce", "apgd-t", "square", "worst"}
    assert all(r["settings"]["attack"]["eps"] == 0.1 for r in adaptive["records"] if r["attack"] == "apgd-ce")


@pytest.mark.slow
def test_an_unknown_dataset_or_an_incomplete_profile_is_one_line(tmp_path):
    data_file = _synthetic_npz(tmp_path / "quads.npz", n_train=20, n_test=4)
    line = _one_error_line(_cli(["train", f"npz:{data_file}"], tmp_path))
    assert "no profile for dataset 'quads'" in line and "--eps" in line
    line = _one_error_line(_cli(["train", f"npz:{data_file}", "--eps", "0.1"], tmp_path))
    assert "lacks steps, step, sigma_max" in line
    (tmp_path / "p.json").write_text('{"name": "quads", "eps": 0.1, "steps": 0, "step": 0.01, "sigma_max": 0.2}')
    line = _one_error_line(_cli(["train", f"npz:{data_file}", "--profile", str(tmp_path / "p.json")], tmp_path))
    assert "steps >= 1" in line
    line = _one_error_line(_cli(["attack", "--dataset", "svhn", "-o", "a.npz"], tmp_path))
    assert "unknown dataset 'svhn'" in line and "npz:PATH" in line


@pytest.mark.slow
def test_the_readmes_python_quickstart_runs(monkeypatch, capsys):
    """The README's Python block as written, on 4 images with a tiny budget: the API, not the numbers
    (scripts/python_api.py records those)."""
    import re

    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    with open(os.path.join(REPO, "README.md")) as f:
        block = re.search(r"```python\n(.*?)```", f.read(), re.S).group(1)
    assert "[:100]" in block and block.count('budget="fast"') == 3
    tiny = 'budget=A.Budget(apgd_steps=2, targets=1, square_queries=5, eot=1)'
    block = block.replace("[:100]", "[:4]").replace('budget="fast"', tiny).replace("eps=0.3)", "eps=0.3, steps=2)")
    exec(compile(block, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(" ")[0] for line in printed] == ["bare", "quantized", "APuDAE"]
    assert "bpda" in printed[1] and "white box" in printed[0] and "exact" in printed[2]

def test_progress_in_a_log_prints_every_tenth_and_a_heartbeat(capsys):
    """stderr is not a terminal (CI, a log file): a line at the start, every 10 % of the work, a heartbeat while a
    long batch gives no update, and one at the end."""
    import cli

    with cli.LogProgress(100, "attack", every=0.2) as bar:
        for _ in range(20):
            bar.update(5)
        time.sleep(0.5)  # one batch that takes a while: the heartbeat speaks
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "attack: 0/100" and lines[-1].startswith("attack: 100/100 done in")
    assert sum("attack: " in line and "%" in line for line in lines) >= 9  # ~every 10 %
    assert len(lines) <= 14
