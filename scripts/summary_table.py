"""The README's results summary, read from the committed reports (no computation):

  python scripts/summary_table.py

For every adaptive report under results/ (adaptive.json, also one folder deeper), one row per defence:
clean accuracy, the blind PGD column (attacks made on the classifier alone, the paper's protocol; "—" for a report
whose every column is a cascade, where that cell is not blind PGD's alone) and the worst case over
every attack that sees the defence (the number to quote), each with its number of test images.
"""

import glob
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

print("| report | defence | clean | blind PGD | **worst case** (attacks that see it) | images |")
print("|---|---|---:|---:|---:|---:|")
PAPER_FIRST = ["mnist", "cifar10", "cifar10-adapted", "imagenet"]  # the paper's datasets, then a user's


def report_name(path):
    """A report is named by its folder under results/ (cifar10 and cifar10-adapted share a dataset;
    mnist/defensegan is MNIST's report with the Defense-GAN row)."""
    return os.path.relpath(os.path.dirname(path), os.path.join(ROOT, "results"))


def order(path):
    name = report_name(path)
    first = name.split("/")[0]
    return (PAPER_FIRST.index(first) if first in PAPER_FIRST else len(PAPER_FIRST), name)


reports = [p for depth in ("*", "*/*") for p in glob.glob(os.path.join(ROOT, "results", depth, "adaptive.json"))]
for path in sorted(reports, key=order):
    with open(path) as f:
        report = json.load(f)
    if not any(r["attack"] == "worst" for r in report["records"]):
        continue  # a report made before the worst case existed
    rel = os.path.relpath(os.path.join(os.path.dirname(path), "adaptive.md"), ROOT)
    cells = {(r["defence"], r["attack"]): r for r in report["records"]}
    for name in dict.fromkeys(r["defence"] for r in report["records"]):
        worst = cells[(name, "worst")]
        lo, hi = worst["ci95"]
        # a report whose every column is a cascade (imagenet) has no blind PGD of its own: its cell is the
        # accuracy left after the attacks before it
        blind = "—" if report.get("cascade_all") else f"{cells[(name, 'pgd')]['accuracy']:.3f}"
        print(f"| [{report_name(path)}]({rel}) | {name} | {cells[(name, 'clean')]['accuracy']:.3f} | "
              f"{blind} | **{worst['accuracy']:.3f}** [{lo:.3f}, {hi:.3f}] | {worst['n']} |")
