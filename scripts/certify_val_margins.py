"""Which σ and denoiser can reach a certified radius, judged on VALIDATION images (never the test set).

For each row (σ:denoiser) it draws N noisy copies of each of n validation images through the denoiser and the
classifier and records p̂, the share of draws given the true class. An image is counted as certifiable at
radius r when the Clopper–Pearson lower bound of p̂ at the certification's budget (N_cert draws, α) reaches
Φ(r/σ) (docs/certify.md §2): an estimate of certified accuracy at r before any test image is certified.

    python scripts/certify_val_margins.py mnist --rows 0.5:stability,1:stability --n 100 --N 1000 \
        --out results/mnist/certify/val_margins.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF's C++ banner off stderr, where the progress lines go

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from apudae_tf import certify, data, smoothing, store  # noqa: E402
from apudae_tf.errors import ApudaeError  # noqa: E402

RADII = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


def main() -> None:
    try:
        run()
    except ApudaeError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def run() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--rows", required=True, help="comma-separated sigma:denoiser (none, mse, stability)")
    ap.add_argument("--n", type=int, default=100, help="validation images (evenly spaced)")
    ap.add_argument("--N", type=int, default=1000, help="draws per image to estimate p̂")
    ap.add_argument("--n-cert", type=int, default=10_000, help="the certification's N the estimate is for")
    ap.add_argument("--alpha", type=float, default=0.001)
    ap.add_argument("--denoisers-from", default=None, help="model folder whose smoothing/ holds the denoisers")
    ap.add_argument("--out", required=True, help="JSON file to write (refused if it exists)")
    args = ap.parse_args()
    if os.path.exists(args.out):
        raise ApudaeError(f"--out {args.out} already exists; move it away or name another file")
    specs = [spec.split(":") for spec in args.rows.split(",")]
    if any(len(s) != 2 for s in specs):
        raise ApudaeError(f"--rows {args.rows}: expected SIGMA:DENOISER pairs, comma-separated (e.g. 0.5:stability)")
    folder = args.denoisers_from or store.default_model_dir(args.dataset)
    ds = data.load_dataset(args.dataset)
    idx = np.linspace(0, len(ds.x_val) - 1, args.n).astype(int)
    settings = certify.CertifySettings(n=args.N, alpha=args.alpha, mixed_precision=True).check()
    classifier_path = os.path.join(store.default_model_dir(args.dataset), store.CLASSIFIER)
    rows = []
    for sigma, denoiser in specs:
        spec = f"{sigma}:{denoiser}"
        row = certify.load_row(classifier_path, float(sigma), denoiser, folder, settings)
        start = time.perf_counter()
        p_hat = []
        for k, i in enumerate(idx):
            counts = np.asarray(row.smoothed.sample_counts(ds.x_val[i], args.N, smoothing.noise_seed(1, int(i), 1)))
            p_hat.append(counts[int(ds.y_val[i])] / args.N)
            if (k + 1) % max(1, args.n // 5) == 0:
                print(f"{spec}: {k + 1}/{args.n} images", file=sys.stderr, flush=True)
        p_hat = np.array(p_hat)
        # the radius CERTIFY would give had N_cert draws shown the same share (NaN: it would abstain)
        radius = np.array([smoothing.radius_from_counts(int(round(p * args.n_cert)), args.n_cert, args.alpha,
                                                        float(sigma)) for p in p_hat])
        rows.append({"sigma": float(sigma), "denoiser": denoiser, "mean_p_hat": float(p_hat.mean()),
                     "estimated_certified": {f"{r:g}": float(np.mean(radius >= r)) for r in RADII},
                     "seconds": round(time.perf_counter() - start, 1)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    report = {"dataset": args.dataset, "split": "validation", "images": args.n, "indices": idx.tolist(),
              "draws": args.N, "n_cert": args.n_cert, "alpha": args.alpha, "denoisers_from": store.shown_path(folder),
              "rows": rows, "command": "python scripts/certify_val_margins.py " + " ".join(sys.argv[1:])}
    store.write_json(args.out, report)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
