"""What the attacks that see the defence cost at ImageNet size: peak memory and time per image of the
purification and of one exact gradient through classifier ∘ purification, with and without the
step-wise recomputed gradient (``Purifier(checkpoint=True)``), on 224-px images:

  APUDAE_DATA_DIR=../shared/data python scripts/imagenet_attack_cost.py --out results/imagenet/attack_cost.json

Each configuration runs in its own process, so its peak resident memory (ru_maxrss) is its own. The DAE
is the folder's U-Net if trained (``--models``), else a U-Net with random weights: cost does not depend
on the weights. The classifier is the shipped EfficientNet-Lite0. Times are wall seconds on this machine.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(args):
    """One configuration, in this process: prints one JSON line."""
    import numpy as np

    from apudae_tf import attacks, data, models, profiles, purify, store
    from apudae_tf.stats import peak_rss_gib

    folder = args.models
    ds = data.load_dataset("imagenet", test_only=True)
    x = ds.x_test[: args.batch]
    y = ds.y_test[: args.batch].astype(np.int64)
    classifier = store.load_model(os.path.join(ROOT, "saved_models", "imagenet", "classifier.keras"))
    dae_path = os.path.join(folder, store.DAE) if folder else ""
    if dae_path and os.path.isfile(dae_path):
        dae, weights = store.load_model(dae_path), "trained"
    else:
        dae, weights = models.build_denoiser(profiles.get("imagenet").dae_arch, (224, 224, 3)), "random"
    r = models.reconstruction_errors(dae, x)
    stats = store.DaeStats(float(np.mean(r)), float(np.std(r)) or 1.0, 0.0, (224, 224, 3), "imagenet", {})
    p = purify.Purifier(dae, stats, args.variant, purify.PurifySettings(n=args.steps, alpha=2 / 255, eps_r=1 / 255),
                        checkpoint=args.checkpoint)
    out = {"variant": args.variant, "n": args.steps, "batch": args.batch, "checkpoint": args.checkpoint,
           "dae_weights": weights, "what": args.what}
    if args.what == "purify":
        p.purify(x)  # trace
        t0 = time.time()
        p.purify(x).numpy()
    else:
        model = attacks.DefendedModel(p, lambda b: classifier(b), "exact")
        attacks.eot_gradient(model, attacks.ce_loss, x, y, y)  # trace
        t0 = time.time()
        grad = attacks.eot_gradient(model, attacks.ce_loss, x, y, y)[2]
        out["gradient_nonzero"] = bool(np.abs(grad).max() > 0)
    out["seconds_per_image"] = round((time.time() - t0) / args.batch, 2)
    out["peak_rss_gib"] = peak_rss_gib()
    print(json.dumps(out), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="JSON file to write (default: print only)")
    ap.add_argument("--models", default=os.path.join(ROOT, "saved_models", "imagenet"),
                    help="model folder whose dae.keras (the U-Net) to use when present")
    ap.add_argument("--variant", default="C")
    ap.add_argument("--steps", type=int, default=15, help="purification steps n (the paper's ImageNet: 15)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--plain-steps", default="2,4",
                    help="n for the plain gradient (it keeps every step's activations, so it is measured at small "
                         "n and its growth per step is reported)")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--what", default="gradient", help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return measure(args)

    configs = [("purify", False, args.steps), ("gradient", True, args.steps)]
    configs += [("gradient", False, int(n)) for n in args.plain_steps.split(",")]
    configs += [("gradient", True, int(n)) for n in args.plain_steps.split(",")]
    rows = []
    for what, ckpt, n in configs:
        cmd = [sys.executable, os.path.abspath(__file__), "--one", "--what", what, "--variant", args.variant,
               "--steps", str(n), "--batch", str(args.batch), "--models", args.models]
        cmd += ["--checkpoint"] if ckpt else []
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            print(done.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"error: {what} n={n} checkpoint={ckpt} failed")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    report = {"command": "python scripts/imagenet_attack_cost.py " + " ".join(sys.argv[1:]), "image_size": 224,
              "rows": rows}
    if args.out:
        sys.path.insert(0, ROOT)
        from apudae_tf import store

        store.write_json(args.out, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
