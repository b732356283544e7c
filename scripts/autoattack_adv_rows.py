"""The committed adaptive report's rows with the adversarially trained classifier, re-run through
``apudae_tf.evaluate`` under the ``"autoattack"`` budget (APGD-CE 100 iterations, APGD-T 9 targets × 100,
Square 5000 queries), on the first N test images, beside the committed report's per-image worst case on the
same images: which images the stronger budget breaks that the report counted robust.

    python scripts/autoattack_adv_rows.py mnist --n 100 --out results/mnist/autoattack_adv_rows.json

Resumable: the evaluations cache their cells in OUT's folder (cache/), so a re-run picks up where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

import apudae_tf as A  # noqa: E402
from apudae_tf import data, profiles, stats, store  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def committed_rows(dataset: str) -> tuple[dict, dict]:
    """(the committed adaptive report's worst-case records by defence, its budget)."""
    with open(os.path.join(ROOT, "results", dataset, "adaptive.json")) as f:
        report = json.load(f)
    return {r["defence"]: r for r in report["records"] if r["attack"] == "worst"}, report.get("budget", {})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", choices=("mnist", "cifar10"))
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--budget", default="autoattack")
    ap.add_argument("--out", required=True, help="JSON file to write (refused if it exists, unless --force)")
    ap.add_argument("--force", action="store_true", help="replace --out")
    args = ap.parse_args()
    if os.path.exists(args.out) and not args.force:
        print(f"error: --out {args.out} already exists; name another file, or pass --force to replace it",
              file=sys.stderr)
        sys.exit(2)
    started = time.time()
    folder = store.default_model_dir(args.dataset)
    profile = profiles.get(args.dataset)
    ds = data.load_dataset(args.dataset, test_only=True)
    x, y = ds.x_test[: args.n], ds.y_test[: args.n]
    adv = store.load_model(os.path.join(folder, store.ADV_CLASSIFIER))
    purifier = A.load_defence(args.dataset)
    tm = A.ThreatModel(norm="linf", eps=profile.threat.eps)
    committed, committed_budget = committed_rows(args.dataset)
    cache_root = os.path.join(os.path.dirname(os.path.abspath(args.out)), "cache", "autoattack_adv_rows")
    rows = {}
    for key, defence, match in (("adversarially trained classifier", None, "Adversarial training"),
                                (f"APuDAE {purifier.variant} + adversarially trained classifier", purifier,
                                 f"APuDAE {purifier.variant}")):
        t0 = time.time()
        e = A.evaluate(adv, x, y, defence=defence, threat_model=tm, budget=args.budget,
                       out_dir=os.path.join(cache_root, "purifier" if defence else "bare"),
                       echo=lambda m: print(m, file=sys.stderr, flush=True))
        name = next(d for d in committed if d.startswith(match) and ("adversarially trained" in d) == bool(defence))
        before = stats.unpack(committed[name]["robust"], committed[name]["n"])[: args.n]
        rows[key] = {"worst_case": e.worst_case, "clean": e.clean, "columns": e.columns, "budget": e.budget,
                     "gradient": e.gradient,
                     "committed_row": name, "committed_worst_case_same_images": float(before.mean()),
                     "robust_in_committed_broken_now": np.flatnonzero(before & ~e.robust).tolist(),
                     "broken_in_committed_robust_now": np.flatnonzero(~before & e.robust).tolist(),
                     "worst_case_of_both": float((before & e.robust).mean()),
                     "seconds": round(time.time() - t0, 1)}
        print(f"{key}: {e.worst_case:.3f} under {args.budget!r} (committed {before.mean():.3f}); "
              f"{len(rows[key]['robust_in_committed_broken_now'])} images robust in the committed report broken now",
              file=sys.stderr, flush=True)
    out = {"dataset": args.dataset, "n": args.n, "budget": args.budget,
           "committed_budget": committed_budget, "threat_model": {"norm": "linf", "eps": profile.threat.eps},
           "rows": rows, "seconds": round(time.time() - started, 1),
           "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
           "command": "python scripts/autoattack_adv_rows.py " + " ".join(sys.argv[1:])}
    store.write_json(args.out, out)
    print(f"wrote {args.out} in {out['seconds'] / 60:.1f} min", file=sys.stderr)


if __name__ == "__main__":
    main()
