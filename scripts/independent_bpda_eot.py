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
import tensorflow as tf
from foolbox_common import add_options, first_test_images, linf_pgd, save

from apudae_tf import store
from apudae_tf.purify import Purifier, default_settings

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
add_options(parser, n=200)
parser.add_argument("--variant", default="F")
parser.add_argument("--eot", type=int, default=8)
parser.add_argument("--steps", type=int, default=40)
args = parser.parse_args()

x, y, folder = first_test_images(args)
m = store.load_models(folder, x.shape[1:])
purifier = Purifier(m.dae, m.stats, args.variant, default_settings("mnist", args.variant, folder))
calls = [0]


def purify_bpda(images):
    calls[0] += 1  # a fresh draw of the defence's randomness on every call
    out = purifier.purify(images, seed=100_000 + calls[0])
    return images + tf.stop_gradient(out - images)  # BPDA: forward P(x), backward the identity


model = fb.TensorFlowModel(lambda b: m.classifier(purify_bpda(b), training=False), bounds=(0, 1))
x_adv = linf_pgd(fb.models.ExpectationOverTransformationWrapper(model, n_steps=args.eot), x, y, args.steps, 100)
save(args.output, x_adv, y, {"command": "foolbox LinfPGD + EOT wrapper, BPDA through apudae purify",
                             "steps": args.steps, "eot": args.eot, "variant": args.variant, "saw_defence": True})
print(json.dumps({"n": len(x), "variant": args.variant, "eot": args.eot, "output": os.path.abspath(args.output)}))
