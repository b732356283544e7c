"""Each purification variant, at its tuned settings, against blind FGSM, R-FGSM and PGD on
validation images: which attacks the iterative variants handle worse than direct purification.

  python scripts/mnist_val_attacks.py [N_VAL] -> results/mnist/val_attacks.json

Validation split only (a diagnostic for choosing settings and DAE recipes, never the test set).
"""

import sys

import numpy as np

from apudae_tf import attacks, data, models, names, store
from apudae_tf.purify import Purifier, default_settings

n_val = int(sys.argv[1]) if len(sys.argv) > 1 else 500
ds = data.load_dataset("mnist", data.resolve_data_dir(None))
x, y = ds.x_val[:n_val], ds.y_val[:n_val]
folder = store.default_model_dir("mnist")
m = store.load_models(folder, ds.image_shape)
fn = m.classifier_fn()
s = attacks.preset("mnist")
inputs = {"clean": x, **{k: attacks.run_attack(k, fn, x, y, s) for k in ("fgsm", "r-fgsm", "pgd")}}


def acc(images):
    return float(np.mean(np.argmax(models.predict_in_batches(fn, images), 1) == y))


report = {"split": "val", "n": int(len(x)), "attack": {"eps": s.eps, "steps": s.steps, "step": s.step,
                                                      "saw_defence": False},
          "undefended": {k: acc(v) for k, v in inputs.items()},
          "mean_r": {k: float(models.reconstruction_errors(m.dae, v).mean()) for k, v in inputs.items()},
          "variants": {}}
for v in names.PURIFY_VARIANTS:
    p = Purifier(m.dae, m.stats, v, default_settings("mnist", v, folder))
    report["variants"][v] = {k: acc(p.purify_array(z)) for k, z in inputs.items()}
    print(v, {k: round(a, 3) for k, a in report["variants"][v].items()}, file=sys.stderr)
store.write_json("results/mnist/val_attacks.json", report)
