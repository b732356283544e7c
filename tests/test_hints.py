"""Every hint an error gives is a command that works when pasted: each test makes the error, takes the
command the hint names, and runs it."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = [sys.executable, os.path.join(REPO, "cli.py")]


def _run(args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "APUDAE_DATA_DIR"}
    return subprocess.run(CLI + list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def _error(res) -> str:
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and "Traceback" not in res.stderr and lines[-1].startswith("error: "), res.stderr
    return lines[-1]


@pytest.mark.slow
def test_existing_output_needs_force_and_force_replaces_it(tmp_path):
    out = tmp_path / "a.npz"
    assert _run(["attack", "--dataset", "mnist", "--method", "none", "--n", "2", "-o", str(out)], tmp_path).returncode == 0
    before = out.read_bytes()
    for command in (["attack", "--dataset", "mnist", "--method", "none", "--n", "3", "-o", str(out)],
                    ["purify", "--variant", "direct", "-i", str(out), "-o", str(out)]):
        line = _error(_run(command, tmp_path))
        assert "the file exists" in line and "pass --force" in line
        assert out.read_bytes() == before  # left as it was
        assert _run(command + ["--force"], tmp_path).returncode == 0  # the hint, followed
        assert out.read_bytes() != before
        before = out.read_bytes()


@pytest.mark.slow
def test_purify_n_names_steps_and_steps_works(tmp_path):
    src = tmp_path / "x.npz"
    assert _run(["attack", "--dataset", "mnist", "--method", "none", "--n", "2", "-o", str(src)], tmp_path).returncode == 0
    line = _error(_run(["purify", "--n", "5", "-i", str(src), "-o", str(tmp_path / "p.npz")], tmp_path))
    assert "--steps" in line
    hint = re.search(r"use (--steps \d+)", line).group(1).split()
    assert _run(["purify", *hint, "-i", str(src), "-o", str(tmp_path / "p.npz")], tmp_path).returncode == 0
    assert "--steps" in _error(_run(["purify", "--steps", "0", "-i", str(src)], tmp_path))


@pytest.mark.slow
def test_a_typo_in_a_dataset_suggests_the_name_and_the_name_works(tmp_path):
    line = _error(_run(["attack", "--dataset", "mnsit", "--method", "none", "--n", "2", "-o", str(tmp_path / "a.npz")],
                       tmp_path))
    name = re.search(r"did you mean (\w+)\?", line).group(1)
    assert name == "mnist"
    assert _run(["attack", "--dataset", name, "--method", "none", "--n", "2", "-o", str(tmp_path / "a.npz")],
                tmp_path).returncode == 0
    assert "did you mean mnist" in _error(_run(["train", "mnsit"], tmp_path))


@pytest.mark.slow
def test_evaluate_on_a_users_npz_names_a_train_command_that_runs(tmp_path, tiny_npz):
    models = tmp_path / "m"
    assert _run(["train", f"npz:{tiny_npz}", "--epochs", "1", "--eps", "0.3", "--steps", "2", "--step", "0.15",
                 "--sigma-max", "0.3", "--out", str(models)], tmp_path).returncode == 0
    line = _error(_run(["evaluate", f"npz:{tiny_npz}", "--models", str(models), "--n", "4"], tmp_path))
    hint = re.search(r"`apudae-tf ([^`]+)`", line).group(1).split()
    assert hint[:2] == ["train", f"npz:{tiny_npz}"] and "--out" in hint  # the dataset as given, the folder used
    assert _run(hint + ["--epochs", "1"], tmp_path).returncode == 0
    assert (models / "adv_classifier.keras").is_file()


@pytest.mark.slow
def test_a_default_output_that_holds_results_is_named_as_the_default(tmp_path):
    out = tmp_path / "apudae-runs" / "mnist" / "models"
    out.mkdir(parents=True)
    (out / "dae.keras").write_bytes(b"x")
    line = _error(_run(["train", "mnist", "--what", "dae", "--epochs", "1"], tmp_path))
    assert line.startswith("error: --out (default) apudae-runs/mnist/models: already holds dae.keras")
    assert "writing to" not in _run(["train", "mnist", "--what", "dae"], tmp_path).stderr  # said only after checks
    assert np.array_equal(np.frombuffer((out / "dae.keras").read_bytes(), np.uint8), np.frombuffer(b"x", np.uint8))
