"""Purification throughput on this CPU, beside the CPU's own matmul rate, in one process.

  python benchmarks/bench_purify.py [--models saved_models/mnist] [--batches 1,32,256] [--out results/bench]
                                   [--defense-gan]

Measures, in this order and in the same process:
  1. the reference limit: float32 matmul GFLOP/s (tf.linalg.matmul, 2048×2048, best of several);
  2. for each variant (direct, A–G) and batch size, with XLA off and on: images/s of
     ``Purifier.purify`` and the GFLOP/s that implies from the DAE's convolution FLOP count;
     every iterative variant runs the same n (``--steps``, default 20) with its tuned α, ε_r,
     ρ, θ_max, so costs compare at equal n;
  3. with --defense-gan, the Defense-GAN baseline's latent search (XLA off), so its cost per
     image compares with the variants' in one run;
  4. the baseline: the very same loop run eagerly, step by step from Python
     (``tf.config.run_functions_eagerly``), for variant A;
  5. a profile of one step at the largest batch: each convolution alone, forward and with
     its input gradient, and the whole DAE.

FLOPs counted: 2 × multiply-adds of the DAE's convolutions (elementwise ops, BN and Adam
ignored, so GFLOP/s is a slight undercount). Per image and iteration: one forward and one
input-gradient backward pass (2 × forward) for the loss; one more forward for the noise
amplitude η (F, G); plus one forward for r(x_in) before the loop (C's rate, and
harmless elsewhere). Writes BENCH/purify.json and BENCH/purify.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys

import numpy as np
import tensorflow as tf

from apudae_tf import models, purify, store
from apudae_tf.machine import cpu_model, matmul_gflops, timed, usable_cores

VARIANTS = ("direct", "A", "B", "C", "D", "E", "F", "G")


def _layer_fns(layer, x):
    """One layer's forward, and forward with the input gradient, as compiled functions."""

    @tf.function
    def forward():
        return layer(x)

    @tf.function
    def with_input_grad():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(layer(x))
        # return y too: a linear layer's input gradient does not need its output, and the
        # graph optimiser would otherwise drop the forward pass
        return y, tape.gradient(y, x)

    return forward, with_input_grad


def op_profile(dae, batch: int, min_seconds: float) -> list[dict]:
    """Where the time of one purification step goes, at one batch size: each convolution
    alone, forward and input-gradient, then the whole DAE forward and forward+backward
    (what one A step computes), each with its achieved GFLOP/s."""
    rng = np.random.default_rng(1)
    rows = []
    for layer in dae.layers:
        kind = type(layer).__name__
        if not models.layer_flops(layer):
            continue
        x = tf.constant(rng.random((batch, *layer.input.shape[1:]), dtype=np.float32))
        flops = models.layer_flops(layer) * batch
        fwd, bwd = _layer_fns(layer, x)
        t_f = timed(lambda: fwd().numpy(), min_seconds)
        t_b = timed(lambda: bwd()[1].numpy(), min_seconds)
        # the input gradient costs what the forward does; timed together, as the purifier runs them
        rows.append({"op": f"{layer.name} ({kind} {layer.input.shape[-1]}→{layer.output.shape[-1]}, "
                           f"{layer.input.shape[1]}×{layer.input.shape[2]})",
                     "forward_ms": 1e3 * t_f, "forward_gflops": flops / t_f / 1e9,
                     "with_input_grad_ms": 1e3 * t_b, "with_input_grad_gflops": 2 * flops / t_b / 1e9})
    x = tf.constant(rng.random((batch, *dae.input_shape[1:]), dtype=np.float32))
    fwd_flops = models.forward_flops(dae) * batch
    fwd = tf.function(lambda: tf.reduce_sum(models.reconstruction_error(dae, x)))

    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            r = tf.reduce_sum(models.reconstruction_error(dae, x))
        return r, tape.gradient(r, x)

    t_f = timed(lambda: fwd().numpy(), min_seconds)
    step_fn = tf.function(step)
    t_s = timed(lambda: step_fn()[1].numpy(), min_seconds)
    rows.append({"op": "whole DAE: r(x), and r(x) with its input gradient (one A step without the update)",
                 "forward_ms": 1e3 * t_f, "forward_gflops": fwd_flops / t_f / 1e9,
                 "with_input_grad_ms": 1e3 * t_s, "with_input_grad_gflops": 2 * fwd_flops / t_s / 1e9})
    return rows


def flops_per_image(variant: str, n: int, forward: int) -> int:
    if variant == "direct":
        return forward
    per_step = 2 * forward + (forward if purify.VARIANT_PIECES[variant].noise else 0)
    return n * per_step + forward


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=store.default_model_dir("mnist"))
    ap.add_argument("--batches", default="1,32,256")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--xla", default="off,on")
    ap.add_argument("--steps", type=int, default=20,
                    help="n for every iterative variant, so their costs compare at equal n (default 20)")
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--defense-gan", action="store_true",
                    help="also time Defense-GAN (MODELS/generator.keras) at its settings chosen on validation "
                         "and at its paper's L = 10, R = 200, XLA off")
    ap.add_argument("--out", default=os.path.join("results", "bench"))
    args = ap.parse_args()

    m = store.load_models(args.models, need=("dae",))
    shape = m.stats.image_shape
    forward = models.forward_flops(m.dae)
    batches = [int(b) for b in args.batches.split(",")]
    variants = args.variants.split(",")
    machine = {
        "cpu": cpu_model(), "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "tensorflow": tf.__version__, "python": platform.python_version(),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or "default (all cores)",
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads() or "default",
    }
    print(f"{machine['cpu']}, {machine['usable_cores']} cores, TF {tf.__version__}", file=sys.stderr)
    ref = matmul_gflops()
    print(f"matmul: {ref:.1f} GFLOP/s", file=sys.stderr)
    rng = np.random.default_rng(0)
    records = []

    def record(variant, batch, xla, mode, settings, seconds):
        gflop = flops_per_image(variant, settings.n, forward) * batch / 1e9
        rec = {"dataset": m.stats.dataset, "variant": variant, "batch": batch, "xla": xla, "mode": mode,
               "steps": 0 if variant == "direct" else settings.n, "seconds_per_batch": seconds,
               "images_per_s": batch / seconds, "gflops": gflop / seconds, "fraction_of_matmul": gflop / seconds / ref}
        records.append(rec)
        print(f"{variant:6s} batch {batch:4d} xla {'on ' if xla else 'off'} {mode:6s} "
              f"{rec['images_per_s']:9.1f} img/s {rec['gflops']:6.1f} GFLOP/s ({rec['fraction_of_matmul']:.0%})",
              file=sys.stderr)

    def settings_for(variant):  # tuned α, ε_r, ρ, θ; one n for all (cost is linear in n, α does not matter)
        return dataclasses.replace(purify.default_settings(m.stats.dataset, variant, m.folder), n=args.steps)

    profile_batch = max(batches)
    profile = op_profile(m.dae, profile_batch, args.min_seconds)

    for variant in variants:
        settings = settings_for(variant)
        for xla in [x == "on" for x in args.xla.split(",")]:
            p = purify.Purifier(m.dae, m.stats, variant, settings, jit_compile=xla)
            for batch in batches:
                x = tf.constant(rng.random((batch, *shape), dtype=np.float32))
                record(variant, batch, xla, "graph", settings, timed(lambda: p.purify(x).numpy(), args.min_seconds))

    gan_settings = {}
    if args.defense_gan:  # the baseline purifier, in the same process as the variants
        from apudae_tf import defensegan

        gen = store.load_model(os.path.join(args.models, defensegan.GAN_FILE))
        tuned = defensegan.tuned_search(args.models)
        for s in dict.fromkeys([tuned, defensegan.SearchSettings()]):
            name = f"Defense-GAN L={s.restarts} R={s.steps}"
            gan_settings[name] = dataclasses.asdict(s)
            g = defensegan.DefenseGan(gen, s)
            for batch in batches:
                x = tf.constant(rng.random((batch, *shape), dtype=np.float32))
                sec = timed(lambda: g.purify(x).numpy(), args.min_seconds, 1)
                records.append({"dataset": m.stats.dataset, "variant": name, "batch": batch, "xla": False,
                                "mode": "graph", "steps": s.steps, "seconds_per_batch": sec,
                                "images_per_s": batch / sec, "gflops": None, "fraction_of_matmul": None})
                print(f"{name} batch {batch:4d} {batch / sec:9.2f} img/s", file=sys.stderr)

    # the baseline: the same loop, eagerly, one Python-driven op at a time
    settings = settings_for("A")
    tf.config.run_functions_eagerly(True)
    try:
        p = purify.Purifier(m.dae, m.stats, "A", settings)
        for batch in batches:
            x = tf.constant(rng.random((batch, *shape), dtype=np.float32))
            record("A", batch, False, "eager", settings, timed(lambda: p.purify(x).numpy(), args.min_seconds, 1))
    finally:
        tf.config.run_functions_eagerly(False)

    report = {"command": "python benchmarks/bench_purify.py " + " ".join(sys.argv[1:]), "machine": machine,
              "matmul_gflops": ref, "dae_forward_flops_per_image": forward,
              "profile": {"batch": profile_batch, "ops": profile},
              "settings": {**{v: dataclasses.asdict(settings_for(v)) for v in variants}, **gan_settings},
              "records": records}
    store.write_json(os.path.join(args.out, "purify.json"), report)
    md = render(report)
    store.write_bytes(os.path.join(args.out, "purify.md"), md.encode())
    print(md)


def render(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# Purification throughput",
        "",
        f"`{r['command']}`",
        "",
        f"Machine: {m['cpu']}, {m['usable_cores']} usable cores, TensorFlow {m['tensorflow']}, "
        f"Python {m['python']}; threads intra-op {m['intra_op_threads']}, inter-op {m['inter_op_threads']}.",
        f"Reference limit (same run): float32 matmul **{r['matmul_gflops']:.1f} GFLOP/s**. "
        f"DAE forward pass: {r['dae_forward_flops_per_image'] / 1e6:.1f} MFLOP per image.",
        "",
        "| variant | n | batch | XLA | mode | images/s | GFLOP/s | of matmul |",
        "|---|---:|---:|---|---|---:|---:|---:|",
    ]
    for x in r["records"]:
        flops = ("| – | – |" if x["gflops"] is None  # Defense-GAN's generator FLOPs are not counted
                 else f"| {x['gflops']:.1f} | {x['fraction_of_matmul']:.0%} |")
        lines.append(f"| {x['variant']} | {x['steps']} | {x['batch']} | {'on' if x['xla'] else 'off'} | {x['mode']} "
                     f"| {x['images_per_s']:.1f} {flops}")
    graph = {(x["variant"], x["batch"], x["xla"]): x for x in r["records"] if x["mode"] == "graph"}
    pairs = [(b, graph[("F", b, False)], graph[("A", b, False)]) for (v, b, xla) in graph
             if v == "A" and not xla and ("F", b, False) in graph]
    if pairs:
        lines += ["", "Cost of F relative to A at equal n (seconds per image, XLA off): "
                  + ", ".join(f"batch {b}: {a['images_per_s'] / f['images_per_s']:.2f}×" for b, f, a in pairs) + "."]
    gans = [x for x in r["records"] if x["variant"].startswith("Defense-GAN")]
    for g in gans:
        same = [x for x in r["records"] if x["batch"] == g["batch"] and not x["xla"] and x["mode"] == "graph"
                and not x["variant"].startswith("Defense-GAN")]
        if same:
            lines.append(f"{g['variant']}, batch {g['batch']}: seconds per image = "
                         + ", ".join(f"{x['images_per_s'] / g['images_per_s']:.0f}× {x['variant']}" for x in same)
                         + ".")
    best = [x for x in r["records"] if x["variant"] == "A" and x["mode"] == "graph"]
    if best:
        top = max(best, key=lambda x: x["gflops"])
        lines += [f"Best A: batch {top['batch']}, XLA {'on' if top['xla'] else 'off'}, {top['gflops']:.1f} GFLOP/s = "
                  f"{top['fraction_of_matmul']:.0%} of the same-run matmul rate."]
    p = r["profile"]
    lines += ["", f"## Profile: where a step's time goes (batch {p['batch']}, XLA off)", "",
              "Each convolution timed alone: forward, and forward with its input gradient (what the "
              "purifier computes each step; 2× the forward FLOPs); then the whole DAE. Compare the "
              "GFLOP/s with the matmul limit above.", "",
              "| op | forward ms | forward GFLOP/s | fwd + input-grad ms | fwd + input-grad GFLOP/s |",
              "|---|---:|---:|---:|---:|"]
    for o in p["ops"]:
        lines.append(f"| {o['op']} | {o['forward_ms']:.2f} | {o['forward_gflops']:.1f} "
                     f"| {o['with_input_grad_ms']:.2f} | {o['with_input_grad_gflops']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
