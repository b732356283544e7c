"""Ship smoothing denoisers on purpose: copy SRC's ``.keras`` files into DST and merge the two ``denoisers.json``.

A training writes ``OUT/smoothing/`` (docs/certify.md §3); the shipped folder holds the denoisers of other σ,
trained by earlier runs. This adds SRC's denoisers to DST and refuses (exit 2, nothing written) when a name
already exists in DST or when the two folders disagree on the architecture, so a shipped model is never
overwritten by accident. Each file is written atomically.

    python scripts/ship_denoisers.py apudae-runs/cifar10/smoothing-models-s1/smoothing \
        saved_models/cifar10/smoothing
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from apudae_tf import store  # noqa: E402  (no TensorFlow: shipping copies files)


def plan(src: dict, dst: dict) -> list[str]:
    """The names to add from ``src`` to ``dst``; raises ValueError naming what conflicts. Every key beside
    ``denoisers`` describes the folder's one architecture (the training writes them), so all must agree."""
    for key in sorted((set(src) | set(dst)) - {"denoisers"}):
        if src.get(key) != dst.get(key):
            raise ValueError(f"{key} differs: SRC has {src.get(key)!r}, DST has {dst.get(key)!r}")
    clash = sorted(set(src["denoisers"]) & set(dst["denoisers"]))
    if clash:
        raise ValueError(f"DST already ships {', '.join(clash)}; remove it there first if replacing is meant")
    return sorted(src["denoisers"])


def read_info(folder: str, role: str) -> dict:
    path = os.path.join(folder, store.SMOOTHING_INFO)
    if not os.path.isfile(path):
        raise ValueError(f"{role} {folder}: no {store.SMOOTHING_INFO} there "
                         "(a training's OUT/smoothing folder has one)")
    with open(path) as f:
        return json.load(f)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="a training's OUT/smoothing folder")
    parser.add_argument("dst", help="the shipped folder, e.g. saved_models/cifar10/smoothing")
    args = parser.parse_args(argv)
    try:
        src, dst = (read_info(args.src, "SRC"), read_info(args.dst, "DST"))
        names = plan(src, dst)
        missing = [n for n in names if not os.path.isfile(os.path.join(args.src, n))]
        if missing:
            raise ValueError(f"SRC {args.src} lists {', '.join(missing)} in {store.SMOOTHING_INFO} "
                             "but has no such file")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name in names:
        store.atomic_write(os.path.join(args.dst, name),
                           lambda tmp, n=name: shutil.copyfile(os.path.join(args.src, n), tmp))
    merged = dict(dst, denoisers={**dst["denoisers"], **{n: src["denoisers"][n] for n in names}})
    store.write_json(os.path.join(args.dst, store.SMOOTHING_INFO), merged)
    print(f"shipped {', '.join(names)} -> {args.dst}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
