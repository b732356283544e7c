"""Each purification variant, at its tuned settings, against blind FGSM, R-FGSM and PGD on
validation images: which attacks the iterative variants handle worse than direct purification.

  python scripts/mnist_val_attacks.py [N_VAL] -> results/mnist/val_attacks.json
  python scripts/mnist_val_attacks.py 500 --sweep-d -> adds D at n in {20, 40, 80} x alpha in {0.05, 0.1, 0.2}
  python scripts/mnist_val_attacks.py 500 --models DIR --out FILE -> the same for another model folder

Validation split only (a diagnostic for choosing settings and DAE recipes, never the test set).
"""

import argparse
import dataclasses
import itertools
import sys

import numpy as np

from apudae_tf import attacks, data, models, names, store
from apudae_tf.purify import Purifier, default_settings

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("n_val", nargs="?", type=int, default=500)
parser.add_argument("--models", default=store.default_model_dir("mnist"))
parser.add_argument("--out", default="results/mnist/val_attacks.json")
parser.add_argument("--sweep-d", action="store_true", help="also sweep variant D's n and alpha")
args = parser.parse_args()

ds = data.load_dataset("mnist", data.resolve_data_dir(None))
x, y = ds.x_val[:args.n_val], ds.y_val[:args.n_val]
m = store.load_models(args.models, ds.image_shape)
fn = m.classifier_fn()
s = attacks.preset("mnist")
inputs = {"clean": x, **{k: attacks.run_attack(k, fn, x, y, s) for k in ("fgsm", "r-fgsm", "pgd")}}


def acc(images):
    return float(np.mean(np.argmax(models.predict_in_batches(fn, images), 1) == y))


def scores(variant, settings, keys=tuple(inputs)):
    p = Purifier(m.dae, m.stats, variant, settings)
    return {k: acc(p.purify_array(inputs[k])) for k in keys}


report = {"split": "val", "n": int(len(x)), "models": args.models, "dae_recipe": m.stats.training.get("recipe"),
          "attack": {"eps": s.eps, "steps": s.steps, "step": s.step, "saw_defence": False},
          "undefended": {k: acc(v) for k, v in inputs.items()},
          "mean_r": {k: float(models.reconstruction_errors(m.dae, v).mean()) for k, v in inputs.items()},
          "variants": {}}
for v in names.PURIFY_VARIANTS:
    report["variants"][v] = scores(v, default_settings("mnist", v, args.models))
    print(v, {k: round(a, 3) for k, a in report["variants"][v].items()}, file=sys.stderr)
if args.sweep_d:
    # more and larger steps do not rescue FGSM for variant D: the sweep that shows it
    base = default_settings("mnist", "D", args.models)
    report["sweep_d"] = []
    for n, alpha in itertools.product((20, 40, 80), (0.05, 0.1, 0.2)):
        row = {"n": n, "alpha": alpha, **scores("D", dataclasses.replace(base, n=n, alpha=alpha),
                                                 ("clean", "fgsm", "pgd"))}
        report["sweep_d"].append(row)
        print("D", row, file=sys.stderr)
store.write_json(args.out, report)
