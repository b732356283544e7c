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
from foolbox_common import add_options, first_test_images, linf_pgd, save

from apudae_tf import store

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
add_options(parser, n=500)
args = parser.parse_args()

x, y, folder = first_test_images(args)
clf = store.load_models(folder, x.shape[1:], need=("classifier",)).classifier
x_adv = linf_pgd(fb.TensorFlowModel(clf, bounds=(0, 1)), x, y, steps=40, batch=250)
save(args.output, x_adv, y, {"command": "foolbox LinfPGD", "steps": 40, "saw_defence": False})
acc = float(np.mean(np.argmax(clf.predict(x_adv, verbose=0), 1) == y))
print(json.dumps({"n": len(x), "undefended_accuracy": acc, "output": os.path.abspath(args.output)}))
