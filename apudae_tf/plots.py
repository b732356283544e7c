"""PNG figures for the reports, drawn with matplotlib's Agg backend and written atomically."""

from __future__ import annotations

import io

import numpy as np

from apudae_tf.store import write_bytes


def _figure(*args, **kwargs):
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt, plt.subplots(*args, **kwargs)


def _save(plt, fig, path: str) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def r_histograms(path: str, panels: list[tuple[str, dict]], mu: float, threshold: float | None = None) -> None:
    """The paper's Fig. 3: histograms of r(x), one panel per stage (before / after purification),
    one histogram per kind of input (clean, adversarial) in each panel."""
    plt, (fig, axes) = _figure(1, len(panels), figsize=(5.2 * len(panels), 3.6), sharey=True)
    axes = np.atleast_1d(axes)
    # log-spaced bins: clean and adversarial errors differ by orders of magnitude
    values = np.concatenate([np.ravel(r) for _, series in panels for r in series.values()])
    low = max(float(np.quantile(values, 0.001)), 1e-4)
    bins = np.geomspace(low, max(float(values.max()), low * 10), 60)
    for ax, (title, series) in zip(axes, panels):
        for label, r in series.items():
            ax.hist(np.clip(r, bins[0], bins[-1]), bins=bins, alpha=0.55, label=f"{label} (mean {np.mean(r):.2f})")
        ax.set_xscale("log")
        ax.axvline(mu, color="k", ls="--", lw=1, label=f"μ (clean val) = {mu:.2f}")
        if threshold is not None:
            ax.axvline(threshold, color="r", ls=":", lw=1, label=f"MagNet threshold = {threshold:.2f}")
        ax.set_title(title)
        ax.set_xlabel("reconstruction error r(x) (eq. 7), log scale")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("images")
    _save(plt, fig, path)


def image_grid(path: str, rows: list[tuple[str, np.ndarray, list[str]]]) -> None:
    """One row per stage (e.g. clean / adversarial / purified), one column per image, each with a
    caption (e.g. the predicted label)."""
    cols = len(rows[0][1])
    plt, (fig, axes) = _figure(len(rows), cols, figsize=(1.25 * cols, 1.45 * len(rows)), squeeze=False)
    for i, (name, images, captions) in enumerate(rows):
        for j in range(cols):
            ax = axes[i, j]
            img = images[j]
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(captions[j], fontsize=8)
            if j == 0:
                ax.set_ylabel(name, fontsize=9)
    _save(plt, fig, path)


def roc_curves(path: str, curves: dict) -> None:
    """ROC curves of a detector ({label: {"fpr", "tpr", "auc"}}): counter B's λ sweep (labels
    starting "counter B") in its own panel, every other attack in the first."""
    panels = [("attacks on the classifier's loss", {k: v for k, v in curves.items() if not k.startswith("counter B")}),
              ("counter B: loss − λ·r(x)", {k: v for k, v in curves.items() if k.startswith("counter B")})]
    panels = [p for p in panels if p[1]]
    plt, (fig, axes) = _figure(1, len(panels), figsize=(5 * len(panels), 4.8), squeeze=False)
    for ax, (title, group) in zip(axes[0], panels):
        for i, (label, c) in enumerate(group.items()):
            ax.plot(c["fpr"], c["tpr"], lw=1.5, ls=("-", "--", "-.", ":")[i // 10 % 4], label=f"{label}: AUC {c['auc']:.3f}")
        ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
        ax.set_xlabel("false-positive rate (clean images flagged)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8, loc="lower right")  # ROC curves climb the upper left: keep the axis label clear
    axes[0, 0].set_ylabel("true-positive rate (adversarial images flagged)")
    fig.suptitle("r(x) > t as a detector of adversarial inputs")
    _save(plt, fig, path)


def certified_curves(path: str, report: dict) -> None:
    """Certified accuracy against L2 radius (certify.json's records): one step curve per classifier, σ and
    denoiser (colour: denoiser, line style: σ), and the report's published anchors as labelled markers."""
    from apudae_tf.certify import row_key

    rows: dict[tuple, list[dict]] = {}
    for r in report.get("records", []):
        rows.setdefault(row_key(r), []).append(r)
    plt, (fig, ax) = _figure(figsize=(7.5, 4.8))
    denoisers = sorted({k[1] for k in rows})
    sigmas = sorted({k[0] for k in rows})
    colours = {d: f"C{i}" for i, d in enumerate(denoisers)}
    styles = {s: ("-", "--", "-.", ":")[i % 4] for i, s in enumerate(sigmas)}
    anchor_radii = [float(r) for points in report.get("anchors", {}).values() for r in points]
    top = max([r["radius"] for recs in rows.values() for r in recs if r["correct"]] + anchor_radii + [1.0])
    grid = np.linspace(0, top * 1.05, 300)
    for key, recs in sorted(rows.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0])):
        radii = np.array([r["radius"] if r["correct"] else -1.0 for r in recs])
        acc = [(radii >= g).mean() for g in grid]
        label = f"{key[1]}, σ={key[0]:g} ({len(recs)} images, N={key[6]})"
        if key[2] != report.get("rows", [{}])[0].get("classifier", key[2]):
            label += f", {key[2]}"
        ax.plot(grid, acc, color=colours[key[1]], ls=styles[key[0]], lw=1.6, label=label)
    markers = "ovs^Dp*"
    for i, (name, points) in enumerate(report.get("anchors", {}).items()):
        xs, ys = zip(*sorted((float(r), v) for r, v in points.items()))
        ax.plot(xs, ys, ls="none", marker=markers[i % len(markers)], color="k", mfc="none", ms=7, label=name)
    ax.set_xlabel("L2 radius r")
    ax.set_ylabel("certified accuracy (abstain = wrong)")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, grid[-1])
    ax.grid(alpha=0.3)
    ax.set_title(f"Randomized smoothing: {report.get('dataset', '')}", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(plt, fig, path)
