"""Purify the same images with the code of another commit and with this checkout's, and compare
the outputs bitwise and the classifier's accuracy on them (docs/remake.md: whether a re-made cell moved
because the purification changed or because the run that made the committed number differs).

  APUDAE_DATA_DIR=../shared/data python scripts/purify_across_versions.py 70fde17 A:n=12 --dataset cifar10 --n 2000
  APUDAE_DATA_DIR=../shared/data python scripts/purify_across_versions.py 8fd971b B --dataset mnist \
      --split val --n 300 --pgd --settings n=10,alpha=0.05

With ``--pgd`` each version first makes the blind PGD examples of the dataset's preset (as ``tune``
does) with its own code, and purifies those; their difference is reported too. ``--settings`` replaces
the folder's tuned settings (a cell of a tune sweep).

The other commit runs from a temporary git worktree, in its own process; models from this checkout.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# run by each code version: purify the first N test images with the variant (``V`` or ``V:n=K``)
CHILD = """
import dataclasses, sys, numpy as np
from apudae_tf import data, store, purify
dataset, variant, n, models, split, pgd, settings, out = sys.argv[1:]
v, _, k = variant.partition(":n=")
ds = data.load_dataset(dataset)
m = store.load_models(models)
s = purify.default_settings(dataset, v, models)
s = dataclasses.replace(s, n=int(k)) if k else s
s = dataclasses.replace(s, **{a: type(getattr(s, a))(b) for a, b in (kv.split("=") for kv in settings.split(",") if kv)})
x, y = (ds.x_val, ds.y_val) if split == "val" else (ds.x_test, ds.y_test)
x = x[:int(n)]
if pgd == "1":
    from apudae_tf import attacks
    x = attacks.run_attack("pgd", m.classifier_fn(), x, y[:int(n)], attacks.preset(dataset, seed=0))
np.save(out + ".input.npy", x)
np.save(out, purify.Purifier(m.dae, m.stats, v, s).purify_array(x, 500))
"""


def run(code_dir, args, out):
    env = {**os.environ, "PYTHONPATH": code_dir}
    subprocess.run([sys.executable, "-c", CHILD, args.dataset, args.variant, str(args.n), args.models, args.split,
                    str(int(args.pgd)), args.settings, out], env=env, check=True, cwd=code_dir, stderr=subprocess.DEVNULL)
    return np.load(out + ".input.npy"), np.load(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("commit")
    ap.add_argument("variant")
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--models", default=None, help="default: saved_models/DATASET of this checkout")
    ap.add_argument("--split", choices=("test", "val"), default="test")
    ap.add_argument("--pgd", action="store_true", help="purify blind PGD examples made by each version's code")
    ap.add_argument("--settings", default="", help="e.g. n=10,alpha=0.05 (default: the folder's tuned settings)")
    args = ap.parse_args()
    args.models = os.path.abspath(args.models or os.path.join(ROOT, "saved_models", args.dataset))
    with tempfile.TemporaryDirectory() as tmp:
        old_dir = os.path.join(tmp, "old")
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "-q", "--detach", old_dir, args.commit], check=True)
        try:
            old_in, old = run(old_dir, args, os.path.join(tmp, "old.npy"))
        finally:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", old_dir], check=True)
        new_in, new = run(ROOT, args, os.path.join(tmp, "new.npy"))
    sys.path.insert(0, ROOT)
    from apudae_tf import data, models, store

    ds = data.load_dataset(args.dataset)
    fn = store.load_models(args.models).classifier_fn()
    y = (ds.y_val if args.split == "val" else ds.y_test)[: args.n]
    acc = {name: float(np.mean(np.argmax(models.predict_in_batches(fn, x, 500), 1) == y))
           for name, x in (("old", old), ("new", new))}
    differ = np.abs(old - new).reshape(len(old), -1).max(1)
    inputs_differ = np.abs(old_in - new_in).reshape(len(old), -1).max(1)
    print(json.dumps({"commit": args.commit, "variant": args.variant, "settings": args.settings or "tuned",
                      "dataset": args.dataset, "split": args.split, "n": args.n, "pgd": args.pgd,
                      "inputs_differing": int((inputs_differ > 0).sum()),
                      "images_differing": int((differ > 0).sum()), "max_difference": float(differ.max()),
                      "accuracy_old_code": acc["old"], "accuracy_this_code": acc["new"]}, indent=2))


if __name__ == "__main__":
    main()
