"""The L2 adaptive report: the certified defence (randomized smoothing behind the project's denoisers) and
the APuDAE purifier under attacks that see them, in the L2 threat model, beside the certificates of the
same images (docs/certify.md §5).

Rows: the classifier alone (white box), the purification variant chosen on validation (its exact gradient),
and the smoothed classifier behind each denoiser (``none``, ``mse``, ``stability``). Columns: clean, blind
PGD-L2 (on the classifier alone), then the AutoAttack-grade cascade in L2: APGD-CE, APGD-T and Square-L2,
each on the images still standing, through each defence. A smoothed row is attacked through the soft
smoothed classifier (SmoothAdv: probabilities averaged over the budget's EOT draws of the Gaussian noise)
and every image is scored by PREDICT, abstentions wrong. The engine is the adaptive report's
(``table.build``): the same cascade, cache and per-image worst case.

A certificate at radius r ≥ ε says that no perturbation of L2 norm ≤ ε changes the smoothed vote (with
probability ≥ 1 − α), so on the same images certified accuracy at ε can never exceed what the attacks
leave. The report checks it image by image: a certified image that an attack turns into a wrong class
would be a bug; one where PREDICT abstains on the attacked image is the Monte Carlo's doubt near the edge
of the certified ball, counted wrong and listed apart.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from apudae_tf import certify, profiles, report_text, smoothing, stats, store, table
from apudae_tf.data import Dataset

MAX_RADIUS_MARGIN = 1.5  # the report's σ certifies past 1.5 ε at N = 10,000 (``report_sigma``)
LABELS = {"clean": "clean", "pgd": "blind PGD-L2", "apgd-ce": "+ APGD-CE", "apgd-dlr": "+ APGD-DLR",
          "apgd-t": "+ APGD-T", "square": "+ Square-L2", "worst": "worst case"}


def report_sigma(dataset: str, eps: float, n: int = 10_000, alpha: float = 0.001) -> float:
    """The σ of the report's smoothed rows, fixed before any test image is seen: the smallest of the profile's
    σ whose largest certifiable radius σ·Φ⁻¹(α^(1/N)) (all N draws agreeing) exceeds 1.5 ε, else the largest.
    MNIST (ε = 2.0): 1.0; CIFAR-10 (ε = 0.5): 0.25."""
    from scipy import stats

    top = stats.norm.ppf(alpha ** (1.0 / n))
    sigmas = sorted(profiles.get(dataset).smoothing_sigmas)
    return next((s for s in sigmas if s * top > MAX_RADIUS_MARGIN * eps), sigmas[-1])


def subset(ds: Dataset, indices: np.ndarray) -> Dataset:
    """``ds`` with its test split cut to ``indices`` (the report's images: every k-th, like ``certify``'s)."""
    return dataclasses.replace(ds, x_test=ds.x_test[indices], y_test=ds.y_test[indices])


def smoothing_rows(m, sigma: float, denoisers, denoiser_dir: str, predict_n: int, alpha: float, seed: int,
                   mixed_precision: bool, num_classes: int) -> tuple[list, dict]:
    """The smoothed rows (table.Defence) and their model files' digests (keys of their attacks' examples)."""
    rows, files = [], {}
    settings = certify.CertifySettings(mixed_precision=mixed_precision)
    for kind in denoisers:
        row = certify.load_row(m.classifier_file, sigma, kind, denoiser_dir, settings, num_classes=num_classes,
                               classifier=m.classifier)
        key = f"smoothing-{sigma:g}-{kind}"
        files[key] = row.identity["denoiser_digest"] or row.identity["classifier_digest"]
        sd = smoothing.SmoothingDefence(row.smoothed, smoothing.SmoothingSettings(sigma, kind, predict_n, alpha, seed),
                                        key)
        rows.append(table.Defence(f"Smoothing σ={sigma:g}, {kind} denoiser" if kind != "none"
                                  else f"Smoothing σ={sigma:g}, no denoiser", None, "classifier", sd.predict,
                                  {**dataclasses.asdict(sd.settings), "precision": row.identity["precision"],
                                   "model": files[key]}, purifier=sd, kind="smoothing"))
    return rows, files


def purifier_row(m, ds: Dataset, fn, files: dict):
    """The APuDAE variant chosen on validation (purify_settings.json), or None when nothing was tuned."""
    from apudae_tf import reports
    from apudae_tf.purify import Purifier, default_settings

    chosen = table.chosen_variant(reports._tuned(m.folder))
    if chosen is None or m.dae is None:
        return None
    s = default_settings(ds.name, chosen, m.folder)
    p = Purifier(m.dae, m.stats, chosen, s, checkpoint=profiles.get(ds.name).checkpoint_steps)
    return table.purifier_row(f"APuDAE {chosen} (chosen on val)", None, "classifier", p, fn,
                              {"variant": chosen, **dataclasses.asdict(s), "dae": files["dae"]})


def certified_vs_empirical(result: dict, certify_path: str | None, eps: float) -> list[dict]:
    """For each smoothed row: on the images that both this report and ``certify_path`` hold for the same smoothed
    classifier (σ, denoiser, classifier), certified accuracy at r = ε beside the attacks' worst case, and the
    images certified there that the attacks left wrong (abstaining or another class)."""
    if not certify_path or not os.path.isfile(certify_path):
        return []
    records = certify.read_report(certify_path)["records"]
    indices = result["test_indices"]
    out = []
    for r in result["records"]:
        if r["attack"] != "worst" or r.get("kind") != "smoothing":
            continue
        s = r["settings"]["defence"]
        robust = stats.unpack(r["robust"], r["n"])
        # the certificates of the same smoothed classifier: same σ, denoiser and classifier, largest N first
        mine = [c for c in records if c["sigma"] == s["sigma"] and c["denoiser"] == s["denoiser"]
                and c["classifier_digest"] == result["classifier_digest"]]
        best = {}
        for c in sorted(mine, key=lambda c: c["n"]):
            best[c["index"]] = c
        both = [k for k, i in enumerate(indices) if i in best]
        if not both:
            continue
        certified = [best[indices[k]]["correct"] and best[indices[k]]["radius"] >= eps for k in both]
        broken = [indices[k] for k, c in zip(both, certified) if c and not robust[k]]
        out.append({"defence": r["defence"], "sigma": s["sigma"], "denoiser": s["denoiser"], "images": len(both),
                    "n": best[indices[both[0]]]["n"], "alpha": best[indices[both[0]]]["alpha"], "eps": eps,
                    "certified": float(np.mean(certified)), "empirical": float(np.mean([robust[k] for k in both])),
                    "certified_but_not_robust": broken, "holds": not broken})
    return out


def notes(result: dict) -> list[str]:
    b, s = result["budget"], result["attacks"]["pgd"]
    worst = [r for r in result["records"] if r["attack"] == "worst"]
    lines = [f"Made by `{result['command']}` on {len(result['test_indices'])} test images (every "
             f"{result['every']}th from index 0): {report_text.run_cost(result)}.", "",
             "**The number to quote for each defence is its worst case** over the attacks that see it (an image "
             "counts only if the defence is right on it clean and after every attack): "
             + "; ".join(f"{r['defence']} **{r['accuracy']:.3f}** [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"
                         for r in worst) + ".", "",
             f"**Threat model: L2, ε = {s['eps']:g}.** blind PGD-L2: {s['steps']} steps of {s['step']:g}·∇/‖∇‖₂ from "
             "a random start, white box on the classifier alone (the blind protocol). Then the AutoAttack-grade "
             f"cascade in L2, each attack on the images still standing: APGD-CE ({b['apgd_steps']} iterations, "
             f"{b['restarts']} start(s), step 2ε halved at the checkpoints), APGD-T ({b['targets']} target classes × "
             f"{b['apgd_steps']} iterations), Square-L2 ({b['square_queries']} queries, scores only). "
             "No defence: white box. APuDAE: the exact gradient through the purification loop. A smoothed row: "
             "the soft smoothed classifier log((1/m) Σ softmax(f(D(x + δ_j)))) with m = "
             f"{b['eot']} fresh Gaussian draws per gradient and per Square score (SmoothAdv's attack, Salman et al. "
             "2019), and every attacked image scored by PREDICT "
             f"(N = {result['predict']['n']}, α = {result['predict']['alpha']:g}; abstain = wrong).", ""]
    checks = result.get("certified_vs_empirical", [])
    if checks:
        lines += ["**Certified vs empirical, same images.** A certificate at radius ≥ ε must never be beaten by an "
                  "attack of norm ε: certified accuracy at r = ε may not exceed the worst case.", "",
                  "| smoothed classifier | images | N | α | certified at r = ε | worst case (attacks) | holds |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for c in checks:
            lines.append(f"| {c['defence']} | {c['images']} | {c['n']} | {c['alpha']:g} | {c['certified']:.3f} | "
                         f"{c['empirical']:.3f} | {'yes' if c['holds'] else 'NO: ' + str(c['certified_but_not_robust'])} |")
        lines.append("")
    lines += ["An L2 ball of radius ε is not the paper's L∞ threat model: the L∞ ball of radius 0.3 (MNIST) or "
              "8/255 (CIFAR-10) lies only inside the L2 ball of radius 8.4 or 1.74."]
    return lines


def report(m, ds: Dataset, n: int, every: int, out_dir: str, *, denoisers, denoiser_dir: str, sigma: float | None,
           budget: table.Budget, predict_n: int, alpha: float, seed: int, mixed_precision: bool,
           certify_path: str | None, command: str, echo=None, progress_bar=None, with_purifier: bool = True) -> dict:
    """Build the L2 adaptive report for ``n`` test images (every ``every``-th) into ``out_dir``
    (adaptive_l2.json, adaptive_l2.md); resumable from ``out_dir``/cache."""
    from apudae_tf.machine import environment

    eps = profiles.get(ds.name).l2_threat.eps
    sigma = report_sigma(ds.name, eps) if sigma is None else sigma
    indices = certify.test_indices(len(ds.x_test), n, every)
    ds = subset(ds, indices)
    n = len(indices)
    fn = m.classifier_fn()
    files = {"classifier": store.file_digest(m.classifier_file)}
    if m.dae is not None:
        files["dae"] = store.file_digest(os.path.join(m.folder, store.DAE))
    defences = [table.Defence("No defence", None, "classifier", table.classify_fn(fn), {}, kind="undefended")]
    purifying = purifier_row(m, ds, fn, files) if with_purifier else None
    if purifying is not None:
        defences.append(purifying)
    rows, row_files = smoothing_rows(m, sigma, denoisers, denoiser_dir, predict_n, alpha, seed, mixed_precision,
                                     ds.num_classes)
    defences += rows
    files.update(row_files)
    columns = table.adaptive_columns(ds.name, n, seed, budget=budget, classes=ds.num_classes, before=("pgd",),
                                     norm="l2")
    result, _ = table.build(ds, defences, {"classifier": fn}, files, columns, out_dir, echo=echo,
                            progress_bar=progress_bar, paper={}, per_image=True)
    result.update({"command": command, "environment": environment(), "models": store.shown_path(m.folder),
                   "classifier": store.shown_path(m.classifier_file), "classifier_digest": files["classifier"],
                   "norm": "l2", "eps": eps, "sigma": sigma, "sigma_rule": report_sigma.__doc__.split("\n")[0],
                   "budget": dataclasses.asdict(budget), "predict": {"n": predict_n, "alpha": alpha},
                   "test_indices": [int(i) for i in indices], "every": every, "labels": LABELS})
    result["certified_vs_empirical"] = certified_vs_empirical(result, certify_path, eps)
    result["certify_report"] = store.shown_path(certify_path) if certify_path else None
    store.write_json(os.path.join(out_dir, "adaptive_l2.json"), result)
    report_text.render(os.path.join(out_dir, "adaptive_l2.json"))
    return result


def markdown(result: dict) -> str:
    """adaptive_l2.md's text from adaptive_l2.json's ``result`` (``report_text.render`` writes it)."""
    return "\n".join([f"# L2 adaptive report: {result['dataset']}", "", table.markdown(result, notes(result), LABELS)])

