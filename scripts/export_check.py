"""Issue-6 check: export the shipped MNIST defence, reload it with plain TensorFlow, measure it.

  python scripts/export_check.py [--n 10000]

Exports variant F (the default) and the deterministic variant B with `apudae-tf export`,
loads each with `tf.saved_model.load(...).signatures[...]`, and records the clean test
accuracy of serving_default and classify_only (requests of 500 images), and the largest
difference between B's served `purified` output and `apudae-tf purify --variant B` (batches of
500) on the same images. Writes results/mnist/export.json.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import tensorflow as tf

from apudae_tf import data, pipeline, store

ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, default=10000)
ap.add_argument("--out", default="results/mnist/export.json")
ap.add_argument("--models", default=None, help="model folder (default: the shipped saved_models/mnist)")
args = ap.parse_args()

ds = data.load_dataset("mnist")
x, y = ds.x_test[: args.n], ds.y_test[: args.n]
models = ["--models", args.models] if args.models else []
report = {"command": "python scripts/export_check.py " + " ".join(sys.argv[1:]), "n": int(len(x)), "split": "test",
          "models": args.models or "saved_models/mnist",
          "tensorflow": tf.__version__, "variants": {}}
with tempfile.TemporaryDirectory() as tmp:
    clean = os.path.join(tmp, "clean.npz")
    pipeline.write(pipeline.Batch(x=x, y=y, meta={"dataset": "mnist"}), clean)
    for variant in ("F", "B"):
        base = os.path.join(tmp, f"apudae_mnist_{variant}")
        subprocess.run(["apudae-tf", "export", "--dataset", "mnist", "--variant", variant, "--out", base, *models],
                       check=True, stdout=subprocess.DEVNULL)
        loaded = tf.saved_model.load(os.path.join(base, "1"))
        # B, deterministic, must give what `apudae-tf purify` gives when batched alike: requests of
        # 500 images against purify's batches of 500. (Other batchings differ by float rounding, which
        # 20 normalised Adam steps carry along.)
        request = 500
        row = {"request_size": request}
        for name in ("serving_default", "classify_only"):
            sig = loaded.signatures[name]
            outs = [sig(images=tf.constant(x[i : i + request])) for i in range(0, len(x), request)]
            row[f"{name}_accuracy"] = float(np.mean(np.concatenate([o["classes"].numpy() for o in outs]) == y))
            if name == "serving_default":
                served = np.concatenate([o["purified"].numpy() for o in outs])
        if variant == "B":
            purified = os.path.join(tmp, "purified.npz")
            subprocess.run(["apudae-tf", "purify", "--variant", "B", "--batch-size", str(request), "-i", clean, *models,
                            "-o", purified], check=True, stderr=subprocess.DEVNULL)
            diff = np.abs(served - pipeline.read(purified).x).reshape(len(x), -1).max(axis=1)
            row["max_abs_diff_vs_apudae_tf_purify"] = float(diff.max())
            row["images_within_1e-5"] = int(np.sum(diff <= 1e-5))
        report["variants"][variant] = row
        print(variant, row, file=sys.stderr)
store.write_json(args.out, report)
print(json.dumps(report, indent=2))
