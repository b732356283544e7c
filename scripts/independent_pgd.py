"""PGD from an independent implementation (foolbox 3's LinfPGD), handed to apudae-tf in the pipeline schema.

Checks two things the project's own attack cannot: that our PGD is not weaker than a reference
implementation on the same images, and that `apudae-tf purify | apudae-tf classify` accept a
foreign producer's npz. foolbox is not a dependency of apudae-tf: `pip install foolbox` first.

    python scripts/independent_pgd.py --n 500 -o /tmp/foolbox_pgd.npz
    apudae-tf purify --variant F -i /tmp/foolbox_pgd.npz | apudae-tf classify --json

Attack: L∞ PGD, ε = 0.3, 40 steps of 0.01 (abs_stepsize), random start, white box on the
classifier, blind to the defence: the same budget as `apudae-tf attack --method pgd`.
"""

import argparse
import json
import os

import foolbox as fb
import numpy as np
import tensorflow as tf

from apudae_tf import data, store

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--n", type=int, default=500)
parser.add_argument("-o", "--output", required=True)
parser.add_argument("--data-dir", default=None)
parser.add_argument("--models", default=None, help="model folder (default: saved_models/mnist)")
args = parser.parse_args()

ds = data.load_dataset("mnist", args.data_dir)
x, y = ds.x_test[: args.n], ds.y_test[: args.n]
clf = store.load_models(args.models or store.default_model_dir("mnist"), ds.image_shape, need=("classifier",)).classifier
model = fb.TensorFlowModel(clf, bounds=(0, 1))
attack = fb.attacks.LinfPGD(abs_stepsize=0.01, steps=40, random_start=True)
tf.random.set_seed(0)
advs = []
for i in range(0, len(x), 250):
    _, adv, _ = attack(model, tf.constant(x[i : i + 250]), tf.constant(y[i : i + 250]), epsilons=0.3)
    advs.append(adv.numpy())
x_adv = np.clip(np.concatenate(advs), 0.0, 1.0).astype(np.float32)
assert np.abs(x_adv - x).max() <= 0.3 + 1e-6
meta = {"dataset": "mnist", "history": [{"command": "foolbox LinfPGD", "eps": 0.3, "steps": 40, "step": 0.01,
                                         "random_start": True, "foolbox": fb.__version__, "saw_defence": False}]}
np.savez(args.output, x=x_adv, y=y.astype(np.int64), meta=np.array(json.dumps(meta)))
acc = float(np.mean(np.argmax(clf.predict(x_adv, verbose=0), 1) == y))
print(json.dumps({"n": len(x), "undefended_accuracy": acc, "output": os.path.abspath(args.output)}))
