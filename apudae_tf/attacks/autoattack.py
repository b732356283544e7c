"""The AutoAttack family (Croce & Hein 2020; Andriushchenko et al. 2020): APGD on the cross-entropy, the
DLR and the targeted DLR losses, and the Square attack, in L∞ and L2."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf

from apudae_tf import models
from apudae_tf.attacks.base import (
    AttackSettings,
    ascent_direction,
    ce_loss,
    dlr_loss,
    dlr_targeted_loss,
    eot_gradient,
    l2_norms,
    margin,
    project_np,
    random_in_ball,
)
from apudae_tf.errors import ApudaeError

APGD_MOMENTUM = 0.75  # α of Algorithm 1
APGD_RHO = 0.75  # ρ of condition 1


def apgd_checkpoints(n_iter: int) -> list[int]:
    """The iterations w_j = ⌈p_j·N_iter⌉ where APGD may halve its step (Croce & Hein 2020, §3.2):
    p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06). w_0 = 0 is left out."""
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({int(math.ceil(q * n_iter - 1e-9)) for q in p[1:] if math.ceil(q * n_iter - 1e-9) < n_iter})


def apgd_halve(increases, interval: int, halved_last, f_max, f_max_checked):
    """Which images halve their step at a checkpoint (Croce & Hein 2020, §3.2): condition 1, fewer than
    ρ·interval of the steps since the last checkpoint raised the loss; or condition 2, the step was not
    halved at the last checkpoint and the best loss has not improved since."""
    return (increases < APGD_RHO * interval) | (~halved_last & (f_max <= f_max_checked))


def apgd_run(model_fn, loss, x, y, target, start, eps: float, n_iter: int, eot: int = 1, early_stop: bool = True,
             trace: dict | None = None, norm: str = "linf"):
    """One run of Auto-PGD (Croce & Hein 2020, Algorithm 1), L∞ or L2, from ``start``; numpy in and out.

    Step size η⁰ = 2ε, halved at a checkpoint w_j when (1) fewer than ρ = 0.75 of the steps since
    w_{j−1} raised the loss, or (2) the step was not halved at w_{j−1} and the best loss has not
    improved since; a halving restarts from the best point. Steps carry momentum α = 0.75:
    z = P(x_k + η·d(∇f(x_k))), x_{k+1} = P(x_k + α(z − x_k) + (1 − α)(x_k − x_{k−1})), with d = sign for
    L∞ and d(g) = g/‖g‖₂ for L2, P the projection onto the ε-ball of the norm and [0, 1].
    Every quantity is per image. With ``early_stop`` an image leaves the batch once misclassified
    (AutoAttack's practice; the robust/not-robust outcome is the same) and is returned at the
    first misclassified point; the others at their highest-loss point. Returns (x_adv, fooled).
    ``trace``, if given, receives the per-iteration step sizes (for tests).
    """
    n = len(x)
    checkpoints = apgd_checkpoints(n_iter)
    eta = np.full(n, 2.0 * eps, np.float32)
    active = np.arange(n)
    f, logits, g = eot_gradient(model_fn, loss, start, y, target, eot)
    x_cur, x_prev, f_cur, g_cur = start.copy(), start.copy(), f, g
    x_max, f_max, g_max = start.copy(), f.copy(), g.copy()
    out, fooled = start.copy(), np.argmax(logits, 1) != y
    increases = np.zeros(n, np.int64)
    f_max_checked, halved_last = f_max.copy(), np.zeros(n, bool)
    last_w = 0
    if trace is not None:
        trace["eta"], trace["fooled_at"] = [eta.copy()], np.where(fooled, 0, -1)
    for k in range(n_iter):
        if early_stop:
            active = np.flatnonzero(~fooled)
            if not active.size:
                break
        a = active
        step = eta[a].reshape(-1, *[1] * (x.ndim - 1))
        z = project_np(x_cur[a] + step * ascent_direction(g_cur[a], norm), x[a], eps, norm)
        if k == 0:
            x_new = z
        else:
            x_new = x_cur[a] + APGD_MOMENTUM * (z - x_cur[a]) + (1 - APGD_MOMENTUM) * (x_cur[a] - x_prev[a])
            x_new = project_np(x_new, x[a], eps, norm).astype(np.float32)
        f_new, logits, g_new = eot_gradient(model_fn, loss, x_new, y[a], target[a], eot)
        now = np.argmax(logits, 1) != y[a]
        first = now & ~fooled[a]
        out[a[first]], fooled[a[now]] = x_new[first], True
        if trace is not None:
            trace["fooled_at"][a[first]] = k + 1
        increases[a] += f_new > f_cur[a]
        x_prev[a], x_cur[a], f_cur[a], g_cur[a] = x_cur[a], x_new, f_new, g_new
        better = f_new > f_max[a]
        x_max[a[better]], f_max[a[better]], g_max[a[better]] = x_new[better], f_new[better], g_new[better]
        if k + 1 in checkpoints:
            w = k + 1
            halve = apgd_halve(increases, w - last_w, halved_last, f_max, f_max_checked)
            eta[halve] /= 2.0
            x_cur[halve], f_cur[halve], g_cur[halve] = x_max[halve], f_max[halve], g_max[halve]
            halved_last, f_max_checked, last_w = halve, f_max.copy(), w
            increases[:] = 0
        if trace is not None:
            trace["eta"].append(eta.copy())
    out[~fooled] = x_max[~fooled]
    return out, fooled


def _class_count(model_fn, x, needed: int, name: str) -> int:
    """The model's number of classes, checked against what a DLR loss needs."""
    classes = int(np.asarray(getattr(model_fn, "forward", model_fn)(tf.constant(x[:1]))).shape[-1])
    if classes < needed:
        raise ApudaeError(f"{name} needs a classifier with at least {needed} classes (this one has {classes}); "
                          "use apgd-ce")
    return classes


def _apgd_restarts(model_fn, loss, x, y, target, s: AttackSettings):
    """``s.restarts`` runs of APGD from random starts in the ε-ball of ``s.norm`` (``random_in_ball``), each
    on the images no earlier run fooled. Returns (x_adv, fooled)."""
    x_adv, fooled = x.copy(), np.zeros(len(x), bool)
    rng = np.random.default_rng(s.seed)
    for r in range(s.restarts):
        todo = np.flatnonzero(~fooled)
        if not todo.size:
            break
        start = random_in_ball(x[todo], s.eps, s.norm, rng)
        adv, now = apgd_run(model_fn, loss, x[todo], y[todo], target[todo], start, s.eps, s.steps, s.eot,
                            norm=s.norm)
        keep = now | (r == 0)  # the first run's best point, or any later run's success
        x_adv[todo[keep]] = adv[keep]
        fooled[todo] = now
    return x_adv, fooled


def apgd_ce(model_fn, x, y, s: AttackSettings):
    """APGD on the cross-entropy loss (Croce & Hein 2020): ``s.steps`` iterations, ``s.restarts``
    random starts, the gradient averaged over ``s.eot`` draws of a random model."""
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int64)
    return _apgd_restarts(model_fn, ce_loss, x, y, y, s)[0]


def apgd_dlr(model_fn, x, y, s: AttackSettings):
    """APGD on the DLR loss (Croce & Hein 2020), untargeted."""
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int64)
    _class_count(model_fn, x, 3, "apgd-dlr")
    return _apgd_restarts(model_fn, dlr_loss, x, y, y, s)[0]


def apgd_t(model_fn, x, y, s: AttackSettings):
    """APGD-T (Croce & Hein 2020): APGD on the targeted DLR loss, once per target class among the
    ``s.targets`` classes the model ranks highest after the true one (on the clean image), each on
    the images no earlier target has fooled. Success is any wrong class (the untargeted criterion)."""
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int64)
    classes = _class_count(model_fn, x, 4, "apgd-t")
    logits = models.predict_in_batches(getattr(model_fn, "forward", model_fn), x)
    ranked = np.argsort(-logits, axis=1, kind="stable")
    ranked = np.stack([r[r != c] for r, c in zip(ranked, y)])  # the other classes, best first
    x_adv, fooled = x.copy(), np.zeros(len(x), bool)
    for k in range(min(s.targets, classes - 1)):
        todo = np.flatnonzero(~fooled)
        if not todo.size:
            break
        adv, now = _apgd_restarts(model_fn, dlr_targeted_loss, x[todo], y[todo], ranked[todo, k],
                                  dataclasses.replace(s, seed=s.seed + 1000 * (k + 1)))
        x_adv[todo[now]], fooled[todo[now]] = adv[now], True
    return x_adv


# -- Square attack (Andriushchenko et al. 2020) ----------------------------------------------

SQUARE_P_INIT = 0.8  # AutoAttack's value for L∞ (the Square paper's schedule of p below)


def square_p(p_init: float, i: int, n_queries: int) -> float:
    """The fraction of pixels a square covers at query i: p_init halved at queries 10, 50, 200,
    500, 1000, 2000, 4000, 6000 and 8000 of a 10,000-query run, rescaled to ``n_queries``."""
    i = int(i / n_queries * 10000)
    for k, bound in enumerate((10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)):
        if i <= bound:
            return p_init / 2**k
    return p_init / 2**9


def _margin_scores(model_fn, s: AttackSettings, n: int):
    """``images, labels -> margins`` through the model's forward (the defence's, when it has one); on a random
    model (``model_fn.is_random``) each margin is averaged over ``s.eot`` draws (EOT on the scores). With one
    draw a lucky sample ends an image's search at once, and the best-so-far margin, a minimum over noisy
    samples, rejects real progress afterwards."""
    forward = getattr(model_fn, "forward", model_fn)
    draws = max(int(s.eot), 1) if getattr(model_fn, "is_random", False) else 1
    chunk = max(n, 1)  # never a larger forward batch than the first query's

    def margins(images, labels):
        # the draws are per image, so K copies of an image in one batch are K draws
        tiled, labels = np.repeat(images, draws, axis=0), np.repeat(labels, draws)
        logits = np.concatenate([np.asarray(forward(tf.constant(tiled[i : i + chunk])))
                                 for i in range(0, len(tiled), chunk)])
        return margin(logits, labels).reshape(-1, draws).mean(axis=1)

    return margins


def square(model_fn, x, y, s: AttackSettings):
    """Square attack, untargeted, margin loss (Andriushchenko et al. 2020, Algorithm 1): random search,
    score-based and gradient-free, so gradient masking cannot stop it. L∞: squares of ±ε; L2
    (``square_l2``): windows of a pseudo-Gaussian pattern on the ε-sphere. ``s.steps`` queries per image; an
    image stops being queried once misclassified. Uses only ``model_fn.forward`` (the defence's forward) when
    the model has one, its scores averaged over ``s.eot`` draws on a random model. numpy in and out."""
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int64)
    if s.norm == "l2":
        return square_l2(model_fn, x, y, s)
    n, h, w, c = x.shape
    rng = np.random.default_rng(s.seed)
    margins = _margin_scores(model_fn, s, n)
    # start: vertical stripes of ±ε, one sign per column and channel
    x_best = np.clip(x + s.eps * rng.choice([-1.0, 1.0], size=(n, 1, w, c)), 0.0, 1.0).astype(np.float32)
    m_best = margins(x_best, y)
    for i in range(1, s.steps):
        todo = np.flatnonzero(m_best > 0)
        if not todo.size:
            break
        side = int(round(math.sqrt(square_p(SQUARE_P_INIT, i, s.steps) * h * w)))
        side = min(max(side, 1), h - 1, w - 1)
        top = rng.integers(0, h - side + 1, len(todo))[:, None]
        left = rng.integers(0, w - side + 1, len(todo))[:, None]
        rows = (np.arange(h)[None] >= top) & (np.arange(h)[None] < top + side)
        cols = (np.arange(w)[None] >= left) & (np.arange(w)[None] < left + side)
        window = (rows[:, :, None] & cols[:, None, :])[..., None]
        delta = x_best[todo] - x[todo]
        for _ in range(10):  # a square that would change nothing is drawn again
            signs = s.eps * rng.choice([-1.0, 1.0], size=(len(todo), 1, 1, c))
            candidate = np.clip(x[todo] + np.where(window, signs, delta), 0.0, 1.0).astype(np.float32)
            same = np.all(np.where(window, candidate == x_best[todo], True), axis=(1, 2, 3))
            if not same.any():
                break
        m_new = margins(candidate, y[todo])
        better = m_new < m_best[todo]
        x_best[todo[better]], m_best[todo[better]] = candidate[better], m_new[better]
    return x_best


def _rectangles(rows: int, cols: int) -> np.ndarray:
    """Nested rectangles around the centre, weighted 1/(k+1)², unit L2 norm: half of Square-L2's pattern."""
    d = np.zeros((rows, cols), np.float32)
    r0, c0 = rows // 2, cols // 2  # the centre, as the rings grow outwards from it
    for k in range(max(r0 + 1, c0 + 1)):
        d[max(r0 - k, 0):min(r0 + k + 1, rows), max(c0 - k, 0):min(c0 + k + 1, cols)] += 1.0 / (k + 1) ** 2
    return d / np.sqrt(np.sum(d * d))


def square_l2_pattern(side: int, rng) -> np.ndarray:
    """Square-L2's window (Andriushchenko et al. 2020, §3.2): a pseudo-Gaussian bump in one half and its
    negative in the other, unit L2 norm, the halves split along a random axis."""
    d = np.concatenate([_rectangles(side // 2, side), -_rectangles(side - side // 2, side)])
    d /= np.sqrt(np.sum(d * d))
    return d.T.copy() if rng.random() > 0.5 else d


def square_l2(model_fn, x, y, s: AttackSettings):
    """Square attack, L2 (Andriushchenko et al. 2020, §3.2), untargeted, margin loss. The perturbation stays
    on the ε-sphere: a start of pseudo-Gaussian tiles, then at each query the mass of a second random window
    moves into the first, whose content becomes the old one plus a fresh ± pattern, rescaled per channel so
    that the total norm stays ε; the candidate is kept when it lowers the margin. numpy in and out."""
    n, h, w, c = x.shape
    rng = np.random.default_rng(s.seed)
    margins = _margin_scores(model_fn, s, n)

    def on_sphere(delta):
        return np.clip(x_rows + delta * (s.eps / np.maximum(l2_norms(delta), 1e-12)), 0.0, 1.0).astype(np.float32)

    tile = max(h // 5, 1)
    offset = (h - tile * 5) // 2 if h >= 5 else 0
    delta = np.zeros_like(x)
    for top in range(offset, h - tile + 1, tile):
        for left in range(offset, w - tile + 1, tile):
            signs = rng.choice([-1.0, 1.0], size=(n, 1, 1, c))
            delta[:, top:top + tile, left:left + tile, :] += square_l2_pattern(tile, rng)[None, :, :, None] * signs
    x_rows = x
    x_best = on_sphere(delta)
    m_best = margins(x_best, y)
    for i in range(1, s.steps):
        todo = np.flatnonzero(m_best > 0)
        if not todo.size:
            break
        x_rows = x[todo]
        d = x_best[todo] - x_rows
        side = max(int(round(math.sqrt(square_p(SQUARE_P_INIT, i, s.steps) * h * w))), 3)
        side = min(side + (side % 2 == 0), h, w)  # odd, so the pattern has a centre
        r1, r2 = rng.integers(0, h - side + 1, 2)  # the two windows' top rows ...
        c1, c2 = rng.integers(0, w - side + 1, 2)  # ... and left columns
        win1 = (slice(None), slice(r1, r1 + side), slice(c1, c1 + side), slice(None))
        win2 = (slice(None), slice(r2, r2 + side), slice(c2, c2 + side), slice(None))
        norm_window = np.sqrt(np.sum(d[win1] ** 2, axis=(1, 2), keepdims=True))  # per image and channel
        both = np.zeros(d.shape[1:3], bool)
        both[win1[1], win1[2]] = True
        both[win2[1], win2[2]] = True
        norm_both = np.sqrt(np.sum(np.where(both[None, :, :, None], d, 0.0) ** 2, axis=(1, 2), keepdims=True))
        norm_image = l2_norms(d)
        fresh = square_l2_pattern(side, rng)[None, :, :, None] * rng.choice([-1.0, 1.0], size=(len(todo), 1, 1, c))
        new = fresh + d[win1] / (norm_window + 1e-12)
        # the window takes the energy of both windows plus whatever the image lacks of ε², per channel
        budget = np.sqrt(np.maximum(s.eps ** 2 - norm_image ** 2, 0.0) / c + norm_both ** 2)
        new = new / (np.sqrt(np.sum(new ** 2, axis=(1, 2), keepdims=True)) + 1e-12) * budget
        d = d.copy()
        d[win2] = 0.0
        d[win1] = new
        candidate = on_sphere(d)
        m_new = margins(candidate, y[todo])
        better = m_new < m_best[todo]
        x_best[todo[better]], m_best[todo[better]] = candidate[better], m_new[better]
    return x_best


