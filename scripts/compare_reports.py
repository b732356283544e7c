"""Compare a re-made report with the committed one, cell by cell (no computation):

  python scripts/compare_reports.py results/mnist/table.json apudae-runs/remake/mnist/table.json

For table/adaptive reports: every (defence, attack, λ) cell's accuracy in both, and the cells that
differ; for tune reports: each variant's chosen settings and validation accuracies; for any other json
(the scripts' outputs): every leaf except timings and paths. Prints a Markdown
summary; with --json, writes the comparison as data. Exit status 0 whatever the differences: they are
listed, with their size, for a reader to judge (docs/remake.md).
"""

import argparse
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cells(report: dict) -> dict:
    out = {}
    for r in report.get("records", []):
        lam = (r.get("settings", {}).get("attack", {}) or {}).get("lam")
        key = (r["defence"], r["attack"]) + ((f"λ={lam:g}",) if lam else ())
        out[" × ".join(key)] = {"accuracy": r["accuracy"], "n": r.get("n")}
    return out


def tune_cells(report: dict) -> dict:
    """A tuning report: each variant's (and Defense-GAN's) choice, its validation scores, and every
    setting of its sweep, keyed by the setting."""
    out = {f"undefended {k}": {"accuracy": a} for k, a in report.get("undefended", {}).items()}
    groups = dict(report.get("variants", {}))
    if "defense_gan" in report:
        groups["Defense-GAN"] = report["defense_gan"]
    for name, v in groups.items():
        out[f"{name} settings"] = {"value": json.dumps(v.get("settings"), sort_keys=True)}
        for k in ("val_clean", "val_pgd"):
            if k in v:
                out[f"{name} {k}"] = {"accuracy": v[k]}
        for row in v.get("sweep", []):
            tag = ",".join(f"{k}={x:g}" for k, x in sorted(row["settings"].items()) if k != "seed")
            for k in ("clean", "pgd"):
                if k in row:
                    out[f"{name} [{tag}] {k}"] = {"accuracy": row[k]}
    return out


# leaves of any other json that say how long a run took or where it ran, not what it found: keys with
# a word that starts with one of these (seconds_per_image, ms, images_per_s, command, models, ...)
PROVENANCE = ("second", "time", "ms", "command", "model", "path", "host", "date", "environment")


def provenance(key) -> bool:
    words = re.split(r"[^a-z0-9]+", str(key).lower())
    return any(w.startswith(p) for w in words for p in PROVENANCE) or str(key).lower().endswith("per_s")


def leaf_cells(report, prefix: str = "") -> dict:
    """Any other json (scripts' outputs): every leaf by its key path, numbers compared as numbers."""
    if isinstance(report, (dict, list)):
        items = report.items() if isinstance(report, dict) else enumerate(report)
        out = {}
        for k, v in items:
            if not provenance(k):
                out.update(leaf_cells(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(report, (int, float)) and not isinstance(report, bool):
        return {prefix: {"accuracy": float(report)}}
    return {prefix: {"value": report}}


def compare(old: dict, new: dict, tolerance: float) -> dict:
    report = "records" in old and all("defence" in r for r in old["records"])
    kind = cells if report else tune_cells if "criterion" in old else leaf_cells
    a, b = kind(old), kind(new)
    rows, same = [], 0
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if x is None or y is None:
            rows.append({"cell": key, "committed": x, "remade": y, "note": "only in one report"})
        elif "accuracy" in x:
            d = y["accuracy"] - x["accuracy"]
            if abs(d) > tolerance or x.get("n") != y.get("n"):
                rows.append({"cell": key, "committed": x["accuracy"], "remade": y["accuracy"], "difference": d,
                             "n": [x.get("n"), y.get("n")]})
            else:
                same += 1
        elif x != y:
            rows.append({"cell": key, "committed": x["value"], "remade": y["value"]})
        else:
            same += 1
    return {"cells": len(set(a) | set(b)), "agree": same, "differ": rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("committed")
    ap.add_argument("remade")
    ap.add_argument("--tolerance", type=float, default=0.0, help="accuracy differences up to this count as agreeing")
    ap.add_argument("--json", dest="json_out", default=None, help="write the comparison here")
    args = ap.parse_args()
    with open(args.committed) as f:
        old = json.load(f)
    with open(args.remade) as f:
        new = json.load(f)
    result = {"committed": args.committed, "remade": args.remade, "committed_command": old.get("command"),
              "remade_command": new.get("command"), "tolerance": args.tolerance,
              **compare(old, new, args.tolerance)}
    print(f"{args.committed} vs {args.remade}: {result['agree']} of {result['cells']} cells agree"
          + (f" (within {args.tolerance:g})" if args.tolerance else " exactly"))
    for r in result["differ"]:
        if "difference" in r:
            print(f"- {r['cell']}: {r['committed']:.4f} -> {r['remade']:.4f} ({r['difference']:+.4f}, n {r['n']})")
        else:
            print(f"- {r['cell']}: {r['committed']} -> {r['remade']}" + (f" ({r['note']})" if "note" in r else ""))
    if args.json_out:
        sys.path.insert(0, ROOT)
        from apudae_tf import store

        store.write_json(args.json_out, result)


if __name__ == "__main__":
    main()
