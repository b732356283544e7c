"""The attack | purify | classify pipeline: schema, foreign producers, bad input."""

import io
import json

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from apudae_tf import pipeline


def _npz_bytes(**arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _run(args, stdin: bytes):
    result = CliRunner().invoke(cli.main, args, input=stdin)
    return result


def _good(n=4):
    x = np.random.default_rng(0).random((n, 28, 28, 1), dtype=np.float32)
    return x, np.arange(n) % 10


def test_foreign_npz_flows_through_purify_and_classify(tiny_models):
    # written by plain numpy, not apudae-tf: no meta at all
    x, y = _good()
    data = _npz_bytes(x=x, y=y)
    res = _run(["purify", "--variant", "B", "--steps", "3", "--models", tiny_models], data)
    assert res.exit_code == 0, res.output
    batch = pipeline.loads(res.stdout_bytes, "purify output")
    assert batch.x.shape == x.shape and batch.x.dtype == np.float32
    np.testing.assert_array_equal(batch.y, y)
    assert batch.meta["history"][-1]["variant"] == "B"
    res = _run(["classify", "--json", "--models", tiny_models], res.stdout_bytes)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    from apudae_tf import models, store

    m = store.load_models(tiny_models)
    expected = np.mean(np.argmax(models.predict_in_batches(m.classifier_fn(), batch.x), 1) == y)
    assert out["n"] == 4 and out["accuracy"] == pytest.approx(expected)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: _npz_bytes(x=_good()[0])[:200], "not a readable npz"),
        (lambda: b"hello, not an archive", "not an npz archive"),
        (lambda: b"", "empty"),
        (lambda: _npz_bytes(x=_good()[0][:, :, :, 0]), "NHWC"),
        (lambda: _npz_bytes(x=np.full((2, 28, 28, 1), np.nan, np.float32)), "NaN"),
        (lambda: _npz_bytes(x=_good()[0] * 3), r"\[0, 1\]"),
        (lambda: _npz_bytes(x=(_good()[0] * 255).astype(np.uint8)), "float32"),
        (lambda: _npz_bytes(x=_good()[0], meta=np.array(json.dumps({"dataset": "svhn"}))), "svhn"),
        (lambda: _npz_bytes(x=_good()[0], y=np.arange(3)), "one integer label per image"),
        (lambda: _npz_bytes(x=np.zeros((2, 32, 32, 3), np.float32), meta=np.array('{"dataset": "mnist"}')),
         "shape"),
        (lambda: _npz_bytes(y=np.arange(3)), "no 'x'"),
    ],
)
@pytest.mark.parametrize("command", ["purify", "classify"])
def test_bad_input_is_one_line_and_nonzero(tiny_models, make, message, command):
    args = [command] + (["--models", tiny_models] if "svhn" not in message and message != "shape" else [])
    if message == "shape":
        args += ["--models", tiny_models]
    res = _run(args, make())
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert __import__("re").search(message, lines[0]), lines[0]


def test_missing_model_folder_is_one_line(tmp_path):
    x, y = _good()
    res = _run(["classify", "--models", str(tmp_path / "nope")], _npz_bytes(x=x, y=y))
    assert res.exit_code == 2 and res.stderr.startswith("error: --models ") and "no such model folder" in res.stderr


def test_classify_needs_only_a_classifier(tmp_path):
    from apudae_tf import models, store

    store.save_model(models.build_mnist_classifier(), str(tmp_path / store.CLASSIFIER))
    x, y = _good()
    res = _run(["classify", "--json", "--models", str(tmp_path)], _npz_bytes(x=x, y=y))
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["n"] == 4
    res = _run(["purify", "--models", str(tmp_path)], _npz_bytes(x=x, y=y))
    assert res.exit_code == 2 and "no dae_stats.json" in res.stderr
