"""BPDA + EOT from an independent implementation (foolbox 3), handed to apudae-tf in the pipeline schema.

The check issue 5 asks for: the attack loop, the expectation over the defence's randomness and
the projection are foolbox's (``LinfPGD`` on ``ExpectationOverTransformationWrapper``); the only
code of ours on the attacker's side is the defence itself, called forward, with the identity as
its backward pass (BPDA). The examples are then scored through `apudae-tf purify | classify`
(scripts/mnist_independent_bpda_eot.sh). foolbox is not a dependency: `pip install foolbox`.

    python scripts/independent_bpda_eot.py --variant F --n 200 --eot 8 -o /tmp/bpda_eot.npz
    apudae-tf purify --variant F -i /tmp/bpda_eot.npz | apudae-tf classify --json

foolbox's EOT averages the logits over the draws (ours averages the loss gradients): a second,
different estimator of the same attack.
"""

import argparse
import json
import os

import foolbox as fb
import numpy as np
import tensorflow as tf

from apudae_tf import data, store
from apudae_tf.purify import Purifier, default_settings

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--variant", default="F")
parser.add_argument("--n", type=int, default=200)
parser.add_argument("--eot", type=int, default=8)
parser.add_argument("--steps", type=int, default=40)
parser.add_argument("-o", "--output", required=True)
parser.add_argument("--data-dir", default=None)
parser.add_argument("--models", default=None, help="model folder (default: saved_models/mnist)")
args = parser.parse_args()

ds = data.load_dataset("mnist", args.data_dir)
x, y = ds.x_test[: args.n], ds.y_test[: args.n]
folder = args.models or store.default_model_dir("mnist")
m = store.load_models(folder, ds.image_shape)
purifier = Purifier(m.dae, m.stats, args.variant, default_settings("mnist", args.variant, folder))
calls = [0]


def purify_bpda(images):
    calls[0] += 1  # a fresh draw of the defence's randomness on every call
    out = purifier.purify(images, seed=100_000 + calls[0])
    return images + tf.stop_gradient(out - images)  # BPDA: forward P(x), backward the identity


model = fb.TensorFlowModel(lambda b: m.classifier(purify_bpda(b), training=False), bounds=(0, 1))
model = fb.models.ExpectationOverTransformationWrapper(model, n_steps=args.eot)
attack = fb.attacks.LinfPGD(abs_stepsize=0.01, steps=args.steps, random_start=True)
tf.random.set_seed(0)
advs = []
for i in range(0, len(x), 100):
    _, adv, _ = attack(model, tf.constant(x[i : i + 100]), tf.constant(y[i : i + 100]), epsilons=0.3)
    advs.append(adv.numpy())
x_adv = np.clip(np.concatenate(advs), 0.0, 1.0).astype(np.float32)
assert np.abs(x_adv - x).max() <= 0.3 + 1e-6
meta = {"dataset": "mnist", "history": [{"command": "foolbox LinfPGD + EOT wrapper, BPDA through apudae purify",
                                         "eps": 0.3, "steps": args.steps, "step": 0.01, "random_start": True,
                                         "eot": args.eot, "variant": args.variant, "foolbox": fb.__version__,
                                         "saw_defence": True}]}
np.savez(args.output, x=x_adv, y=y.astype(np.int64), meta=np.array(json.dumps(meta)))
print(json.dumps({"n": len(x), "variant": args.variant, "eot": args.eot, "output": os.path.abspath(args.output)}))
