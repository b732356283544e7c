"""Which denoiser architecture randomized smoothing can afford on this CPU (docs/certify.md §3).

  python benchmarks/bench_denoisers.py [--out results/bench]

Smoothing runs the denoiser on every noise draw (10,100 per certified image), so a denoiser's cost is the
certificate's. For each candidate at 32×32×3 in front of the shipped CIFAR-10 ResNet-20, in one process:
weights, forward FLOPs (``models.forward_flops``), certification throughput (draws/s through denoiser and
classifier, batch 1000, float32 and with the denoiser in bfloat16) and stability-training throughput
(images/s of one Adam step through the frozen classifier, batch 128), beside the float32 matmul rate of
the same run. Candidates: Salman et al. 2020's DnCNN (17 convs × 64 channels at full resolution, residual,
batch norm) and the project's residual U-Net with 3 and 4 stages. Writes BENCH/smoothing_denoisers.json and
.md.
"""

from __future__ import annotations

import argparse
import os
import sys

import keras
import numpy as np
import tensorflow as tf

from apudae_tf import models, store
from apudae_tf.machine import cpu_model, environment, matmul_gflops, timed

SHAPE = (32, 32, 3)


def dncnn(depth: int = 17, filters: int = 64) -> keras.Model:
    """Zhang et al. 2017's DnCNN as Salman et al. 2020 use it: conv+ReLU, depth − 2 × (conv+BN+ReLU), conv;
    the output is the input minus the predicted noise."""
    x = keras.Input(SHAPE)
    h = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    for _ in range(depth - 2):
        h = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(h)
        h = keras.layers.ReLU()(keras.layers.BatchNormalization()(h))
    return keras.Model(x, keras.layers.Subtract()([x, keras.layers.Conv2D(SHAPE[-1], 3, padding="same")(h)]))


CANDIDATES = {
    "DnCNN 17×64 (Salman et al. 2020)": dncnn,
    "residual U-Net, 3 stages 32-64-128": lambda: models.build_residual_unet(SHAPE, 32, 3),
    "residual U-Net, 4 stages 32-64-128-256 (shipped for CIFAR-10)": lambda: models.build_residual_unet(SHAPE, 32, 4),
}


def measure(name: str, build, classifier) -> dict:
    dae = build()
    x = tf.random.uniform((1000, *SHAPE))
    rec = {"denoiser": name, "weights": int(dae.count_params()), "gflop_per_draw": models.forward_flops(dae) / 1e9,
           "classifier_gflop": models.forward_flops(classifier) / 1e9}
    for label, d in (("float32", dae), ("bfloat16", models.with_policy(dae, "mixed_bfloat16"))):
        fwd = tf.function(lambda b, d=d: classifier(tf.cast(models.denoise(d, b), tf.float32), training=False))
        rec[f"certify_draws_per_s_{label}"] = 1000 / timed(lambda: fwd(x).numpy(), 2.0)
    optimizer = keras.optimizers.Adam(1e-4)
    xb, yb = tf.random.uniform((128, *SHAPE)), tf.zeros(128, tf.int64)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            logits = classifier(models.denoise(dae, xb), training=False)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(yb, logits, from_logits=True))
        grads = tape.gradient(loss, dae.trainable_variables)
        optimizer.apply_gradients(zip(grads, dae.trainable_variables))
        return loss

    rec["stability_train_images_per_s"] = 128 / timed(lambda: step().numpy(), 2.0)
    print(f"{name}: {rec['weights']} weights, {rec['gflop_per_draw']:.3f} GFLOP, certify "
          f"{rec['certify_draws_per_s_float32']:.0f} draws/s (bf16 {rec['certify_draws_per_s_bfloat16']:.0f}), "
          f"stability training {rec['stability_train_images_per_s']:.0f} images/s", file=sys.stderr)
    return rec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results/bench")
    args = parser.parse_args()
    classifier = store.load_model(os.path.join(store.SAVED_MODELS, "cifar10", store.CLASSIFIER))
    classifier.trainable = False
    ref = matmul_gflops()
    rows = [measure(name, build, classifier) for name, build in CANDIDATES.items()]
    report = {"matmul_gflops": ref, "cpu": cpu_model(), "environment": environment(), "rows": rows,
              "command": "python benchmarks/bench_denoisers.py " + " ".join(sys.argv[1:])}
    store.write_json(os.path.join(args.out, "smoothing_denoisers.json"), report)
    lines = ["# Smoothing denoisers: cost on this CPU", "",
             f"`{report['command']}` on {report['cpu']} ({report['environment']['cpu_cores']} cores); float32 matmul "
             f"{ref:.0f} GFLOP/s. Denoiser in front of the shipped CIFAR-10 ResNet-20 "
             f"({rows[0]['classifier_gflop']:.3f} GFLOP per image), 32×32×3.", "",
             "| denoiser | weights | GFLOP per draw | certify draws/s (float32) | (bfloat16 denoiser) | "
             "stability training images/s |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['denoiser']} | {r['weights']:,} | {r['gflop_per_draw']:.3f} | "
                     f"{r['certify_draws_per_s_float32']:.0f} | {r['certify_draws_per_s_bfloat16']:.0f} | "
                     f"{r['stability_train_images_per_s']:.0f} |")
    store.write_bytes(os.path.join(args.out, "smoothing_denoisers.md"), ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
