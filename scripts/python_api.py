"""The README's Python example, run as written on 100 MNIST test images, with what it cost: writes
results/api/example.json (each evaluation's numbers, seconds and the process's peak memory).

  python scripts/python_api.py [--n 100] [--budget fast] [--out results/api/example.json] [--force]

An existing --out is refused unless --force: the default names the committed result.
"""

import argparse
import json
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up lines: set before it is imported

parser = argparse.ArgumentParser()
parser.add_argument("--n", type=int, default=100)
parser.add_argument("--budget", default="fast")
parser.add_argument("--out", default="results/api/example.json")
parser.add_argument("--force", action="store_true", help="replace --out")
args = parser.parse_args()

from apudae_tf import store  # noqa: E402  (no TensorFlow yet: the check below comes before it loads)
from apudae_tf.errors import ApudaeError  # noqa: E402

try:
    store.check_output_file(args.out, "--out", args.force)
except ApudaeError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import apudae_tf as A  # noqa: E402
from apudae_tf import data, io  # noqa: E402

started = time.time()
ds = data.load_dataset("mnist", test_only=True)  # inside the package: no data folder, no network
x, y = ds.x_test[: args.n], ds.y_test[: args.n]
clf = keras.models.load_model(os.path.join(store.SAVED_MODELS, "mnist", "classifier.keras"))
tm = A.ThreatModel(norm="linf", eps=0.3)
runs = {
    "bare classifier": None,
    "your own defence: 8-bit quantization": lambda t, seed=None: tf.round(t * 255) / 255,
    "shipped purifier (load_defence('mnist'))": A.load_defence("mnist"),
}
out = {"n": args.n, "budget": args.budget, "threat_model": {"norm": "linf", "eps": 0.3}, "evaluations": {}}
for name, defence in runs.items():
    t0 = time.time()
    e = A.evaluate(clf, x, y, defence=defence, threat_model=tm, budget=args.budget)
    out["evaluations"][name] = {"worst_case": e.worst_case, "clean": e.clean, "columns": e.columns,
                                "gradient": e.gradient, "gradient_check": e.gradient_check["status"],
                                "seconds": round(time.time() - t0, 1)}
    print(f"{name}: {e}", flush=True)
# the committed adaptive report (results/mnist/adaptive.json: 1000 images, APGD 100 iterations, 3 targets, Square
# 1000 queries, the same cascade) on the same images, for the purifier's row
committed = {}
report = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results", "mnist", "adaptive.json")
if os.path.isfile(report):
    from apudae_tf import stats

    with open(report) as f:
        saved = json.load(f)
    for r in saved["records"]:
        if r["attack"] == "worst" and r["defence"].startswith("APuDAE D (adv-dae DAE) (chosen on val)"):
            committed = {"defence": r["defence"], "budget": saved["budget"],
                         "worst_case_same_images": float(stats.unpack(r["robust"], r["n"])[: args.n].mean())}
out["committed_report"] = committed
out["seconds"] = round(time.time() - started, 1)
out["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
out["command"] = "python scripts/python_api.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items() if k != "force")
io.write_json(args.out, out)
print(f"{out['seconds']:.0f} s, peak memory {out['peak_rss_gib']} GiB -> {args.out}")
