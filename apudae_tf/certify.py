"""Certifying a test set with randomized smoothing: the rows (σ × denoiser), the run that resumes image by
image, the summaries and the report (certify.json, certify.md, certify.png; docs/certify.md).

A row is one smoothed classifier (``smoothing.Smoothed``): a classifier, a noise level σ and a denoiser
(``none``: the classifier smoothed directly; ``mse`` and ``stability``: the denoisers of
``train --what smoothing-dae``). Every image of a row is one record (``record_keys``); certify.json holds
them all and is rewritten as images finish, so an interrupted run resumes where it stopped and several runs
(other σ, other rows, more images) add to one report.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from apudae_tf import models, profiles, smoothing, store
from apudae_tf.errors import ApudaeError

DENOISERS = ("none", "mse", "stability", "purify")
# "purify": the MSE denoiser of σ, then the APuDAE variant chosen on validation (its loop with the folder's DAE, in
# the near-clean regime it was trained for), then the classifier: the paper's purification inside the smoothing
SAME_MACHINE = ("machine", "processor", "cpu_cores", "gpus")  # environment() keys that name the hardware
# the radii a report tabulates: certified accuracy at r counts the images certified correct with radius >= r
RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)
REPORT = "certify.json"
# what makes two records comparable (one row of the report): the smoothed classifier and the settings
ROW_FIELDS = ("sigma", "denoiser", "classifier", "classifier_digest", "denoiser_digest", "n0", "n", "alpha", "seed",
              "batch_size", "precision")
FLUSH_SECONDS = 0.0  # certify.json is rewritten after every image (a record costs seconds of draws; a write, ms)


@dataclasses.dataclass(frozen=True)
class CertifySettings:
    """Cohen et al.'s Monte Carlo budget: n0 selection draws, n estimation draws, failure probability α;
    the draws' seed and batch; the denoiser in mixed precision (bfloat16 on a CPU, float16 on a GPU)."""

    n0: int = 100
    n: int = 10_000
    alpha: float = 0.001
    seed: int = 0
    batch_size: int = profiles.CERTIFY_BATCH
    mixed_precision: bool = False

    def check(self) -> CertifySettings:
        for option, value, ok, allowed in (("--n0", self.n0, self.n0 >= 1, ">= 1"),
                                           ("--N", self.n, self.n >= 1, ">= 1"),
                                           ("--alpha", self.alpha, 0 < self.alpha < 0.5, "(0, 0.5)"),
                                           ("--batch-size", self.batch_size, self.batch_size >= 1, ">= 1")):
            if not ok:
                raise ApudaeError(f"{option} {value:g} is outside {allowed}")
        return self


@dataclasses.dataclass(frozen=True)
class Row:
    """One smoothed classifier to certify, with what identifies it in the records."""

    smoothed: smoothing.Smoothed
    identity: dict  # sigma, denoiser, classifier, classifier_digest, denoiser_digest, precision
    image_shape: tuple | None = None  # the images it certifies (for the cost of a model that takes any size)

    @property
    def label(self) -> str:
        return f"σ={self.identity['sigma']:g} {self.identity['denoiser']}"


def test_indices(n_test: int, n: int | None, every: int) -> np.ndarray:
    """The test images a report certifies: every ``every``-th one from the first (Cohen et al.'s --skip),
    at most ``n`` of them."""
    idx = np.arange(0, n_test, every)
    return idx if n is None else idx[:n]


def denoiser_path(folder: str, sigma: float, denoiser: str) -> str:
    from apudae_tf.denoisers import smoothing_denoiser_file

    return os.path.join(folder, store.SMOOTHING_DIR, smoothing_denoiser_file(sigma, denoiser))


def load_row(classifier_path: str, sigma: float, denoiser: str, denoiser_folder: str, settings: CertifySettings, *,
             num_classes: int | None = None, classifier=None, purifier_folder: str | None = None,
             image_shape=None) -> Row:
    """The smoothed classifier of one row: ``classifier_path``'s model (or ``classifier``, already loaded from
    it) at noise ``sigma`` behind ``denoiser`` (``none``, or a stage of ``denoiser_folder``/smoothing/; ``purify``:
    the MSE stage, then the variant chosen in ``purifier_folder``, default ``denoiser_folder``)."""
    from apudae_tf import fitting

    classifier = classifier or store.load_model(classifier_path)
    dae, dae_digest, precision, purifier, name = None, None, "float32", None, denoiser
    if denoiser == "purify":
        purifier = chosen_purifier(purifier_folder or denoiser_folder)
        name = f"purify-{purifier.variant}"
    if denoiser != "none":
        path = denoiser_path(denoiser_folder, sigma, "mse" if denoiser == "purify" else denoiser)
        if not os.path.isfile(path):
            raise ApudaeError(f"no {denoiser} denoiser for sigma {sigma:g} in {store.shown_path(denoiser_folder)} "
                              f"({os.path.basename(path)}); train it with `apudae-tf train DATASET --what smoothing-dae "
                              f"--sigma {sigma:g} --out FOLDER` and pass --denoisers-from FOLDER")
        dae, dae_digest = store.load_model(path), store.file_digest(path)
        if purifier is not None:  # the loop's DAE and settings are part of the base classifier
            from apudae_tf.cache import digest

            dae_digest = digest(dae_digest, store.file_digest(os.path.join(purifier_folder or denoiser_folder, store.DAE)),
                                purifier.variant, dataclasses.asdict(purifier.settings))
        if settings.mixed_precision:
            precision = fitting.mixed_policy().replace("mixed_", "") + " denoiser"
            dae = models.with_policy(dae, fitting.mixed_policy())
    smoothed = smoothing.Smoothed(classifier, sigma, denoiser=dae, purifier=purifier, num_classes=num_classes,
                                  batch_size=settings.batch_size, name=name)
    identity = {"sigma": float(sigma), "denoiser": name, "classifier": store.shown_path(classifier_path),
                "classifier_digest": store.file_digest(classifier_path), "denoiser_digest": dae_digest,
                "precision": precision}
    return Row(smoothed, identity, None if image_shape is None else tuple(int(d) for d in image_shape))


def chosen_purifier(folder: str):
    """The APuDAE variant chosen on validation in ``folder`` (purify_settings.json), with its DAE."""
    from apudae_tf import reports, profiles, table
    from apudae_tf.purify import Purifier, default_settings

    variant = table.chosen_variant(reports._tuned(folder))
    if variant is None:
        raise ApudaeError(f"--denoisers purify: nothing in {store.shown_path(folder)} was tuned on validation; run "
                          f"`apudae-tf tune DATASET --models {store.shown_path(folder)}` first")
    stats = store.load_stats(folder)
    return Purifier(store.load_model(os.path.join(folder, store.DAE)), stats, variant,
                    default_settings(stats.dataset, variant, folder),
                    checkpoint=profiles.get(stats.dataset).checkpoint_steps)


def row_key(record: dict) -> tuple:
    return tuple(record.get(k) for k in ROW_FIELDS)


def read_report(path: str) -> dict:
    """A certify.json written before (its records resume a run), or an empty report."""
    import json

    if not os.path.isfile(path):
        return {"records": []}
    try:
        with open(path) as f:
            report = json.load(f)
    except (OSError, ValueError) as e:
        raise ApudaeError(f"{path}: cannot read the earlier report ({e}); move it away to start a new one") from None
    if not isinstance(report, dict) or not isinstance(report.get("records"), list):
        raise ApudaeError(f"{path}: not a certify report (no records list); move it away to start a new one")
    return report


def certify_rows(rows: list[Row], x, y, indices: np.ndarray, settings: CertifySettings, *, out_dir: str,
                 dataset: str, command: str = "", echo=print, min_gap: float = 30.0) -> dict:
    """Certify images ``indices`` of (x, y) with every row, resuming from ``out_dir``/certify.json, then
    write the report there (``finish``, with the rows' FLOPs). ``echo`` gets a progress line every ``min_gap``
    seconds or 10 % of a row."""
    path = os.path.join(out_dir, REPORT)
    report = read_report(path)
    records = report["records"]
    run = {"n0": settings.n0, "n": settings.n, "alpha": settings.alpha, "seed": settings.seed,
           "batch_size": settings.batch_size}
    for row in rows:
        identity = {**row.identity, **run}
        key = row_key(identity)
        done = {r["index"] for r in records if row_key(r) == key}
        todo = [int(i) for i in indices if int(i) not in done]
        echo(f"certify {row.label}: {len(indices) - len(todo)} of {len(indices)} images already in {path}; "
             f"{len(todo)} to go (n0 {settings.n0}, N {settings.n}, alpha {settings.alpha:g})")
        if todo:
            row.smoothed.sample_counts(x[todo[0]], 1, smoothing.noise_seed(0, 0, 0))  # trace before the clock runs
        last_flush = last_echo = time.monotonic()
        for k, i in enumerate(todo):
            start = time.perf_counter()
            cert = row.smoothed.certify(x[i], n0=settings.n0, n=settings.n, alpha=settings.alpha, seed=settings.seed,
                                        index=i)
            seconds = time.perf_counter() - start
            records.append({**identity, "index": i, "label": int(y[i]), "prediction": cert.prediction,
                            "radius": cert.radius, "n_a": cert.n_a, "n0_top": cert.n0_top,
                            "correct": bool(cert.prediction == int(y[i])), "seconds": round(seconds, 3)})
            now = time.monotonic()
            if now - last_flush > FLUSH_SECONDS:
                _write(path, report, dataset, command)
                last_flush = now
            if now - last_echo > min_gap or (k + 1) % max(1, len(todo) // 10) == 0 or k + 1 == len(todo):
                mine = [r for r in records if row_key(r) == key]
                left = (len(todo) - k - 1) * np.mean([r["seconds"] for r in mine[-len(todo):]])
                echo(f"certify {row.label}: {len(mine)}/{len(indices)} images, certified correct "
                     f"{np.mean([r['correct'] for r in mine]):.3f}, {seconds:.1f} s/image, ~{left / 60:.0f} min left")
                last_echo = now
        _write(path, report, dataset, command)
    return finish(out_dir, dataset, command, flops=dict(flops_of(r) for r in rows))


def _write(path: str, report: dict, dataset: str, command: str) -> None:
    report.update({"dataset": dataset, "command": command})
    store.write_json(path, report)


def certified_accuracy(records: list[dict], radius: float) -> float:
    """The share of images certified correct with radius ≥ ``radius`` (abstentions and wrong classes count
    as not certified, whatever their radius)."""
    return float(np.mean([r["correct"] and r["radius"] >= radius for r in records])) if records else 0.0


def matmul_precision(precision: str) -> str:
    """The dtype whose matmul rate bounds a row's draws: its denoiser's (``"bfloat16 denoiser"``), else float32."""
    return next((d for d in ("bfloat16", "float16") if d in (precision or "")), "float32")


def summarize(records: list[dict], flops_per_sample: dict | None = None, matmul: dict | None = None) -> list[dict]:
    """One summary per row: certified accuracy at ``RADII``, abstentions, the average certified radius (0
    for images not certified correct), and the cost (seconds per image, draws per second, and, with the
    FLOPs of a draw and the matmul rate, the share of this machine's matmul rate)."""
    from apudae_tf.stats import wilson

    rows: dict[tuple, list[dict]] = {}
    for r in records:
        rows.setdefault(row_key(r), []).append(r)
    pairs = []
    for key, recs in rows.items():
        recs.sort(key=lambda r: r["index"])
        n_img = len(recs)
        seconds = float(np.mean([r["seconds"] for r in recs]))
        draws = recs[0]["n0"] + recs[0]["n"]
        summary = {**dict(zip(ROW_FIELDS, key)), "images": n_img, "first_index": recs[0]["index"],
                   "last_index": recs[-1]["index"],
                   "certified": _certified_by_radius(recs),
                   "interval_95": {f"{r:g}": list(wilson(sum(x["correct"] and x["radius"] >= r for x in recs), n_img))
                                   for r in RADII},
                   "abstain": float(np.mean([x["prediction"] == smoothing.ABSTAIN for x in recs])),
                   "average_radius": float(np.mean([x["radius"] if x["correct"] else 0.0 for x in recs])),
                   "seconds_per_image": seconds, "samples_per_second": draws / seconds if seconds else None}
        gflop = (flops_per_sample or {}).get(_flops_key(summary))
        if gflop and seconds:
            summary["gflop_per_sample"] = gflop
            summary["gflops"] = gflop * draws / seconds
            rate = (matmul or {}).get(matmul_precision(summary["precision"]))
            summary["fraction_of_matmul"] = summary["gflops"] / rate if rate else None
        pairs.append((recs, summary))
    _same_images(pairs)
    out = [s for _, s in pairs]
    out.sort(key=lambda s: (s["classifier"], s["denoiser"] != "none", s["denoiser"], s["sigma"], -s["images"]))
    return out


def _certified_by_radius(records: list[dict]) -> dict:
    return {f"{r:g}": certified_accuracy(records, r) for r in RADII}


def _same_images(rows: list[tuple[list[dict], dict]]) -> None:
    """Rows are compared on the same images: of the (records, summary) rows, one certified on more images than
    another of its classifier and N (the targets' 500 beside the comparison rows' 100) also gets ``same_images``,
    its certified accuracy on the images every such row has."""
    groups: dict[tuple, list[tuple[list[dict], dict]]] = {}
    for recs, s in rows:
        groups.setdefault((s["classifier"], s["n"], s["alpha"], s["n0"]), []).append((recs, s))
    for members in groups.values():
        common = set.intersection(*({r["index"] for r in recs} for recs, _ in members))
        for recs, s in members:
            if common and len(common) < s["images"]:
                shared = [r for r in recs if r["index"] in common]
                s["same_images"] = {"images": len(shared), "certified": _certified_by_radius(shared)}


def _flops_key(summary: dict) -> str:
    return f"{summary['classifier_digest']}/{summary['denoiser_digest']}"


def flops_of(row: Row) -> tuple[str, float]:
    """(the key of a row's models, GFLOP of one draw through its base classifier)."""
    s = row.smoothed
    shape = row.image_shape
    flops = models.forward_flops(s.classifier, shape) + (models.forward_flops(s.denoiser, shape)
                                                          if s.denoiser is not None else 0)
    if s.purifier is not None:  # r(x_in), then per step a forward and an input gradient (~2 forwards) of its DAE
        flops += (3 * s.purifier.settings.n + 1) * models.forward_flops(s.purifier.dae, shape)
    return _flops_key(row.identity), flops / 1e9


def best_over_sigma(summaries: list[dict]) -> list[dict]:
    """Per denoiser and classifier (rows of the same N, α): the best certified accuracy over σ at each radius,
    and which σ gave it."""
    groups: dict[tuple, list[dict]] = {}
    for s in summaries:
        groups.setdefault((s["classifier"], s["denoiser"], s["n"], s["alpha"], s["n0"]), []).append(s)
    out = []
    for (classifier, denoiser, n, alpha, n0), group in groups.items():
        best = {}
        for r in RADII:
            top = max(group, key=lambda s: s["certified"][f"{r:g}"])
            best[f"{r:g}"] = {"accuracy": top["certified"][f"{r:g}"], "sigma": top["sigma"], "images": top["images"]}
        out.append({"classifier": classifier, "denoiser": denoiser, "n": n, "alpha": alpha, "n0": n0,
                    "sigmas": sorted({s["sigma"] for s in group}), "best": best})
    return out


def finish(out_dir: str, dataset: str, command: str = "", flops: dict | None = None) -> dict:
    """Summaries, certify.md and certify.png from certify.json's records; returns the report."""
    from apudae_tf import machine, plots

    path = os.path.join(out_dir, REPORT)
    report = read_report(path)
    cost = report.get("cost", {})
    if flops:
        cost.setdefault("gflop_per_sample", {}).update(flops)
        # each row against the matmul rate of its denoiser's precision (bfloat16 runs past the float32 rate)
        measured = {d: machine.matmul_gflops(dtype=d) for d in
                    sorted({"float32"} | {matmul_precision(r["precision"]) for r in report["records"]})}
        env = machine.environment()
        # cores shared with other jobs measure less than the machine has (a fraction above 100 %); a report
        # finished again on the same machine keeps the best rate measured there
        same = {k: env.get(k) for k in SAME_MACHINE} == {k: cost.get("environment", {}).get(k) for k in SAME_MACHINE}
        before = _rates(cost) if same else {}
        cost["matmul_gflops"] = {d: max(v, before.get(d, 0.0)) for d, v in measured.items()}
        cost["environment"] = env
    report["cost"] = cost
    report["rows"] = summarize(report["records"], cost.get("gflop_per_sample"), _rates(cost))
    report["best_over_sigma"] = best_over_sigma(report["rows"])
    profile = profiles.REGISTRY.get(dataset)
    report["anchors"] = dict(profile.certify_anchors) if profile else {}
    report.update({"dataset": dataset, "command": command or report.get("command", "")})
    store.write_json(path, report)
    store.write_bytes(os.path.join(out_dir, "certify.md"), markdown(report).encode())
    plots.certified_curves(os.path.join(out_dir, "certify.png"), report)
    return report


SHOWN_RADII = ("0", "0.25", "0.5", "0.75", "1", "1.5", "2", "2.5", "3")


def _rates(cost: dict) -> dict:
    rates = cost.get("matmul_gflops") or {}
    return rates if isinstance(rates, dict) else {"float32": rates}  # a report written before precisions


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def markdown(report: dict) -> str:
    """certify.md: every row's certified accuracy by radius, the best over σ beside the published anchors,
    the cost, and what the numbers mean."""
    rows = report.get("rows", [])
    radii = [r for r in SHOWN_RADII if any(s["certified"].get(r, 0) > 0 for s in rows) or float(r) <= 1]
    lines = [f"# Certified L2 robustness: {report.get('dataset', '')}", "",
             "Randomized smoothing (Cohen et al. 2019, CERTIFY) of the classifier behind each denoiser: certified "
             "accuracy (%) at L2 radius r = the share of the images whose smoothed prediction is correct with a "
             "certified radius of at least r. **Abstentions count as wrong.** Noise N(0, σ²I) is added in the "
             "classifier's [0, 1] input space (Carlini et al. 2023 scale to [−1, 1], which doubles their σ).", ""]
    if rows:
        lines += ["| classifier | denoiser | σ | images | N0 | N | α | " + " | ".join(f"r={r}" for r in radii)
                  + " | abstain | avg radius | s/image | draws/s | of matmul |",
                  "|---|---|---:|---:|---:|---:|---:|" + "---:|" * len(radii) + "---:|---:|---:|---:|---:|"]
        for s in rows:
            frac = s.get("fraction_of_matmul")
            lines.append(f"| {s['classifier']} | {s['denoiser']} | {s['sigma']:g} | {s['images']} | {s['n0']} | "
                         f"{s['n']} | {s['alpha']:g} | "
                         + " | ".join(_pct(s["certified"][r]) for r in radii)
                         + f" | {_pct(s['abstain'])} | {s['average_radius']:.3f} | {s['seconds_per_image']:.2f} | "
                           f"{s['samples_per_second']:.0f} | {'—' if frac is None else f'{100 * frac:.0f}%'} |")
        same = [s for s in rows if s.get("same_images")]
        if same:
            lines += ["", "The rows certified on more images, on the images every row of their classifier and N has "
                      "(compare these with the other rows):", "",
                      "| classifier | denoiser | σ | images | N | " + " | ".join(f"r={r}" for r in radii) + " |",
                      "|---|---|---:|---:|---:|" + "---:|" * len(radii)]
            for s in same:
                lines.append(f"| {s['classifier']} | {s['denoiser']} | {s['sigma']:g} | {s['same_images']['images']} "
                             f"| {s['n']} | " + " | ".join(_pct(s["same_images"]["certified"][r]) for r in radii)
                             + " |")
        lines += ["", "## Best over σ", "",
                  "| classifier | denoiser | N | α | " + " | ".join(f"r={r}" for r in radii) + " |",
                  "|---|---|---:|---:|" + "---:|" * len(radii)]
        for b in report.get("best_over_sigma", []):
            lines.append(f"| {b['classifier']} | {b['denoiser']} | {b['n']} | {b['alpha']:g} | "
                         + " | ".join(f"{_pct(b['best'][r]['accuracy'])} (σ={b['best'][r]['sigma']:g})"
                                      for r in radii) + " |")
    anchors = report.get("anchors", {})
    if anchors:
        lines += ["", "Published anchors (certified accuracy %, their own classifiers, N and images as stated):", ""]
        for name, points in anchors.items():
            lines.append(f"- {name}: " + ", ".join(f"{_pct(v)} at r={float(r):g}" for r, v in points.items()))
    cost = report.get("cost", {})
    if cost.get("matmul_gflops"):
        env = cost.get("environment", {})
        lines += ["", "Cost: seconds per certified image (n0 + N draws through the base classifier), draws per "
                  "second, and the FLOPs those draws compute (convolutions and dense layers of the denoiser and the "
                  "classifier) as a share of this machine's matmul rate in the denoiser's precision ("
                  + ", ".join(f"{d} {v:.0f} GFLOP/s" for d, v in _rates(cost).items())
                  + f"; {env.get('processor', '?')}, {env.get('cpu_cores', '?')} cores, measured when the report was "
                  "written, on cores the run may have shared)."]
    lines += ["", "What is not certified: the paper's L∞ budgets. An L∞ ball of radius ε lies inside the L2 ball of "
              "radius ε·√d only (8.4 for MNIST at ε = 0.3, 1.74 for CIFAR-10 at 8/255, 43 for ImageNet at 16/255 "
              "and 224 px), so these L2 radii do not cover them.", "",
              f"Made by: `{report.get('command', '')}`" if report.get("command") else ""]
    return "\n".join(lines).rstrip() + "\n"
