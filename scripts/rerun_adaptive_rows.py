"""The committed adaptive report's rows re-run through ``apudae_tf.evaluate`` on the first N test images,
beside the committed report's per-image results on the same images, column by column.

    # the rows with the adversarially trained classifier under the stronger "autoattack" budget
    python scripts/rerun_adaptive_rows.py mnist --n 100 --out results/mnist/autoattack_adv_rows.json
    # the chosen purifier under the committed report's own budget: does apudae_tf.evaluate re-make its cells?
    python scripts/rerun_adaptive_rows.py mnist --rows chosen --budget standard --n 100 --out OUT.json
    # every row under the committed report's own budget ("standard")
    python scripts/rerun_adaptive_rows.py mnist --rows all --budget standard --n 100 --out OUT.json

(``results/mnist/autoattack_adv_rows.json`` was written by this script's first version,
``git show d2eac35:scripts/autoattack_adv_rows.py``, with the same arguments: the same evaluations, compared on
the worst case only.) Resumable: the evaluations cache their cells in OUT's folder (cache/), so a re-run
picks up where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

import apudae_tf as A  # noqa: E402
from apudae_tf import data, profiles, stats, store  # noqa: E402
from apudae_tf.errors import ApudaeError  # noqa: E402


def committed_report(dataset: str) -> dict:
    with open(os.path.join(ROOT, "results", dataset, "adaptive.json")) as f:
        return json.load(f)


def rows_to_run(which: str, names: list[str]) -> list[tuple[str, str, str | None]]:
    """(committed row name, classifier file, purification variant or None) of each row to re-run: the committed
    report's rows are told apart by their names (``Adversarial training …``, ``APuDAE V … [+ adversarially
    trained classifier]``)."""
    out = []
    for name in names:
        adv = name.startswith("Adversarial training") or "adversarially trained" in name
        if (which == "adv" and not adv) or (which == "chosen" and "(chosen on val)" not in name):
            continue
        variant = None if name.startswith("Adversarial training") else name.split()[1]
        out.append((name, store.ADV_CLASSIFIER if adv else store.CLASSIFIER, variant))
    return out


def compare(committed: dict, name: str, e, n: int) -> dict:
    """Each column both have (the worst case among them): committed and re-run accuracy on the same images,
    and which images differ."""
    before_by = {r["attack"]: r for r in committed["records"] if r["defence"] == name}
    out = {}
    for r in e.records:
        if r["attack"] not in before_by:
            continue
        b = before_by[r["attack"]]
        before, now = stats.unpack(b["robust"], b["n"])[:n], stats.unpack(r["robust"], r["n"])
        out[r["attack"]] = {"committed": float(before.mean()), "rerun": float(now.mean()),
                            "robust_in_committed_broken_now": np.flatnonzero(before & ~now).tolist(),
                            "broken_in_committed_robust_now": np.flatnonzero(~before & now).tolist()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", choices=("mnist", "cifar10"))
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--rows", choices=("adv", "chosen", "all"), default="adv",
                    help="adv: the rows with the adversarially trained classifier; chosen: the purifier chosen on "
                         "validation in front of the shipped classifier (what load_defence(DATASET) gives); all: "
                         "every row")
    ap.add_argument("--budget", default="autoattack", choices=("fast", "standard", "autoattack"))
    ap.add_argument("--out", required=True, help="JSON file to write (refused if it exists, unless --force)")
    ap.add_argument("--force", action="store_true", help="replace --out")
    args = ap.parse_args()
    try:
        store.check_output_file(args.out, "--out", args.force)
    except ApudaeError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    started = time.time()
    folder = store.default_model_dir(args.dataset)
    profile = profiles.get(args.dataset)
    ds = data.load_dataset(args.dataset, test_only=True)
    x, y = ds.x_test[: args.n], ds.y_test[: args.n]
    tm = A.ThreatModel(norm="linf", eps=profile.threat.eps)
    committed = committed_report(args.dataset)
    names = sorted({r["defence"] for r in committed["records"]})
    cache_root = os.path.join(os.path.dirname(os.path.abspath(args.out)), "cache", "rerun_adaptive_rows")
    rows = {}
    for name, classifier_file, variant in rows_to_run(args.rows, names):
        t0 = time.time()
        classifier = store.load_model(os.path.join(folder, classifier_file))
        defence = A.load_defence(args.dataset, variant=variant) if variant else None
        cache = os.path.join(cache_root, f"{classifier_file.split('.')[0]}-{variant or 'bare'}")
        e = A.evaluate(classifier, x, y, defence=defence, threat_model=tm, budget=args.budget, out_dir=cache,
                       echo=lambda m: print(m, file=sys.stderr, flush=True))
        cells = compare(committed, name, e, args.n)
        rows[name] = {"worst_case": e.worst_case, "clean": e.clean, "columns": e.columns, "budget": e.budget,
                      "gradient": e.gradient, "committed_worst_case_same_images": cells["worst"]["committed"],
                      "cells": cells, "seconds": round(time.time() - t0, 1)}
        moved = {k: len(c["robust_in_committed_broken_now"]) + len(c["broken_in_committed_robust_now"])
                 for k, c in cells.items()}
        print(f"{name}: {e.worst_case:.3f} under {args.budget!r} (committed {cells['worst']['committed']:.3f}); "
              f"images that differ per column: {moved}", file=sys.stderr, flush=True)
    out = {"dataset": args.dataset, "n": args.n, "budget": args.budget, "rows_run": args.rows,
           "committed_budget": committed.get("budget", {}), "threat_model": {"norm": "linf", "eps": profile.threat.eps},
           "rows": rows, "seconds": round(time.time() - started, 1),
           "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
           "command": "python scripts/rerun_adaptive_rows.py " + " ".join(sys.argv[1:])}
    store.write_json(args.out, out)
    print(f"wrote {args.out} in {out['seconds'] / 60:.1f} min", file=sys.stderr)


if __name__ == "__main__":
    main()
