"""What the two foolbox scripts share: their options, the test images, foolbox's L∞ PGD in
batches and the pipeline npz they hand to apudae-tf. Budget: ε 0.3, steps of 0.01, random start."""

import json

import foolbox as fb
import numpy as np
import tensorflow as tf

from apudae_tf import data, store

EPS, STEP = 0.3, 0.01


def add_options(parser, n: int) -> None:
    parser.add_argument("--n", type=int, default=n)
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--models", default=None, help="model folder (default: saved_models/mnist)")


def first_test_images(args):
    """(x, y, model folder) for the first ``args.n`` MNIST test images."""
    ds = data.load_dataset("mnist", args.data_dir)
    return ds.x_test[: args.n], ds.y_test[: args.n], args.models or store.default_model_dir("mnist")


def linf_pgd(model, x, y, steps: int, batch: int) -> np.ndarray:
    """foolbox's LinfPGD (ε 0.3, ``steps`` of 0.01, random start) on ``model``, in batches."""
    attack = fb.attacks.LinfPGD(abs_stepsize=STEP, steps=steps, random_start=True)
    tf.random.set_seed(0)
    advs = []
    for i in range(0, len(x), batch):
        _, adv, _ = attack(model, tf.constant(x[i : i + batch]), tf.constant(y[i : i + batch]), epsilons=EPS)
        advs.append(adv.numpy())
    x_adv = np.clip(np.concatenate(advs), 0.0, 1.0).astype(np.float32)
    assert np.abs(x_adv - x).max() <= EPS + 1e-6
    return x_adv


def save(path: str, x_adv, y, step: dict) -> None:
    """The pipeline npz (x, y, meta) that `apudae-tf purify` and `classify` read."""
    meta = {"dataset": "mnist", "history": [{"eps": EPS, "step": STEP, "random_start": True,
                                             "foolbox": fb.__version__, **step}]}
    np.savez(path, x=x_adv, y=y.astype(np.int64), meta=np.array(json.dumps(meta)))
