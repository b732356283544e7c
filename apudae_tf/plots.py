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
        ax.legend(fontsize=8, loc="best")
    axes[0, 0].set_ylabel("true-positive rate (adversarial images flagged)")
    fig.suptitle("r(x) > t as a detector of adversarial inputs")
    _save(plt, fig, path)
