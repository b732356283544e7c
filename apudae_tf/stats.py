"""The statistics of the reports: 95% Wilson intervals, per-image booleans packed for json, ROC curves, and the
peak memory a run took."""

from __future__ import annotations

import math

import numpy as np


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def pack(mask: np.ndarray) -> str:
    """A per-image boolean as hex (bit i = image i, numpy's packbits order), for json records."""
    return np.packbits(np.asarray(mask, bool)).tobytes().hex()


def unpack(text: str, n: int) -> np.ndarray:
    """The inverse of ``pack`` for ``n`` images."""
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), np.uint8))[:n].astype(bool)


def peak_rss_gib() -> float:
    """The peak resident memory of this process so far, in GiB. Each cell's record keeps it (an upper bound
    on what that cell needed), so a report resumed from its cache still knows what its runs took."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)  # Linux: KiB


def roc(r_clean: np.ndarray, r_adv: np.ndarray) -> dict:
    """ROC of the detector "r(x) > t" (adversarial = positive) over every threshold, and its AUC
    (the Mann–Whitney statistic: P(r_adv > r_clean), ties counted half)."""
    scores = np.concatenate([r_clean, r_adv])
    labels = np.concatenate([np.zeros(len(r_clean)), np.ones(len(r_adv))])
    order = np.argsort(-scores, kind="stable")
    tp, fp = np.cumsum(labels[order]), np.cumsum(1 - labels[order])
    tpr = np.concatenate([[0.0], tp / max(len(r_adv), 1)])
    fpr = np.concatenate([[0.0], fp / max(len(r_clean), 1)])
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores, kind="stable")] = np.arange(1, len(scores) + 1)
    for v in np.unique(scores):  # average ranks over ties
        tie = scores == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    n0, n1 = len(r_clean), len(r_adv)
    auc = (ranks[labels == 1].sum() - n1 * (n1 + 1) / 2) / max(n0 * n1, 1)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), 200)).astype(int))  # a plot needs no more
    return {"auc": float(auc), "fpr": fpr[keep].round(5).tolist(), "tpr": tpr[keep].round(5).tolist()}


# -- the defences ----------------------------------------------------------------------------
