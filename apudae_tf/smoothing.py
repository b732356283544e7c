"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019) with a denoiser in front of the classifier
(denoised smoothing, Salman et al. 2020): certified L2 robustness (docs/certify.md).

The base classifier is b(x̃) = argmax f(clip(D(x̃), 0, 1)) (or argmax f(x̃) with no denoiser). The smoothed
classifier g(x) = argmax_c P(b(x + δ) = c), δ ~ N(0, σ²I), with the noise added in the classifier's [0, 1]
input space (Carlini et al. 2023 scale images to [−1, 1], where the same σ is half as strong). If
P(b(x + δ) = c_A) ≥ p_A > 1/2, then g(x + ε) = c_A for every ‖ε‖₂ < σ·Φ⁻¹(p_A) (Cohen et al., Theorem 1;
docs/certify.md eq. S3).

``Smoothed`` is that classifier, with the paper's two algorithms as methods: ``certify`` (Algorithm 1:
a class and a radius, or abstain) and ``predict`` (Algorithm 2: a class, or abstain). Both are Monte
Carlo procedures whose answers hold with probability at least 1 − α over the draws; the statistics come
from ``scipy.stats`` (Clopper–Pearson bound and the binomial test).

The noise is drawn by a stateless generator from (seed, image index, phase, batch): the same draws on any
device and in the exported SavedModel (export.py), so a certificate can be re-run and checked.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf
from scipy import stats

from apudae_tf import fitting, models, profiles
from apudae_tf.defences import BaseDefence

ABSTAIN = -1
SELECTION, ESTIMATION, PREDICTION = 0, 1, 2  # the phases of the draws: each has its own noise


def lower_confidence_bound(n_a: int, n: int, alpha: float) -> float:
    """The one-sided (1 − α) Clopper–Pearson lower bound on p from n_a successes in n trials
    (docs/certify.md eq. S2): the lower end of the two-sided exact interval at level 1 − 2α."""
    return float(stats.binomtest(int(n_a), int(n)).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low)


def radius_from_counts(n_a: int, n: int, alpha: float, sigma: float) -> float:
    """σ·Φ⁻¹(p_A) for the bound p_A of ``lower_confidence_bound`` (eq. S3), or NaN when p_A ≤ 1/2 (abstain)."""
    p_a = lower_confidence_bound(n_a, n, alpha)
    return float(sigma * stats.norm.ppf(p_a)) if p_a > 0.5 else math.nan


def binomial_p_value(n_a: int, n_b: int) -> float:
    """Two-sided binomial test of n_a successes in n_a + n_b trials against p = 1/2 (Algorithm 2)."""
    if n_a + n_b == 0:
        return 1.0
    return float(stats.binomtest(int(n_a), int(n_a + n_b), 0.5).pvalue)


def predict_thresholds(n: int, alpha: float) -> np.ndarray:
    """t[m] = the least n_a with ``binomial_p_value(n_a, m − n_a) ≤ α`` (m + 1 when none), for m = 0..n:
    Algorithm 2's test as a table, so that a graph without scipy (the SavedModel) decides exactly as
    ``Smoothed.predict`` does. The p-value falls as n_a grows above m/2, so the test passes iff n_a ≥ t[m]."""
    t = np.empty(n + 1, np.int64)
    for m in range(n + 1):
        lo, hi = (m + 1) // 2, m + 1  # the least passing n_a lies in [ceil(m/2), m], or is m + 1 (none)
        while lo < hi:
            mid = (lo + hi) // 2
            if binomial_p_value(mid, m - mid) <= alpha:
                hi = mid
            else:
                lo = mid + 1
        t[m] = lo
    return t


def noise_seed(seed: int, index: int, phase: int) -> tf.Tensor:
    """The stateless seed of image ``index``'s draws in one phase (selection, estimation, prediction)."""
    return tf.constant([int(seed), int(index) * 4 + int(phase)], tf.int64)


def gaussian_draws(x, sigma, m, seed, batch):
    """``m`` noisy copies x + δ of one image x [H, W, C], δ ~ N(0, σ²I), the ``batch``-th batch of the draws
    of ``seed`` (eq. S1): a pure function of its arguments."""
    s = tf.random.experimental.stateless_fold_in(seed, tf.cast(batch, tf.int64))
    shape = tf.concat([[m], tf.shape(x)], 0)
    return x[None] + tf.cast(sigma, x.dtype) * tf.random.stateless_normal(shape, seed=s, dtype=x.dtype)


def base_logits(classifier, denoiser=None, purifier=None):
    """x̃ -> f(clip(D(x̃), 0, 1)) (or f(x̃)), float32 logits, both models in inference mode: the base
    classifier's scores. With a ``purifier`` (the APuDAE loop, purify.Purifier) its purification runs between
    the denoiser and the classifier, on the denoised image clipped to [0, 1]."""

    def logits(noisy):
        if denoiser is not None:
            noisy = tf.cast(models.denoise(denoiser, noisy), noisy.dtype)
        if purifier is not None:
            noisy = purifier.purify(tf.clip_by_value(noisy, 0.0, 1.0))
        return tf.cast(classifier(noisy, training=False), tf.float32)

    return logits


@dataclasses.dataclass(frozen=True)
class Certificate:
    """Algorithm 1's answer for one image: the class (ABSTAIN = −1) and the L2 radius (0 when abstaining);
    n_a = draws of the selected class among the n estimation draws."""

    prediction: int
    radius: float
    n_a: int
    selected: int  # the class the n0 selection draws chose (the prediction unless abstaining)
    n0_top: int  # its count among the n0 draws


class Smoothed:
    """The smoothed classifier g of a base classifier (``classifier`` after ``denoiser`` and ``purifier``, if
    any; ``base_logits``) at noise level ``sigma``. ``batch_size`` noisy copies go through the base classifier
    at a time."""

    def __init__(self, classifier, sigma: float, *, denoiser=None, purifier=None, num_classes: int | None = None,
                 batch_size: int = profiles.CERTIFY_BATCH, name: str = ""):
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.classifier, self.denoiser, self.purifier = classifier, denoiser, purifier
        self.sigma, self.name = float(sigma), name
        self.num_classes = int(num_classes or classifier.output_shape[-1])
        self.batch_size = int(batch_size)
        self.logits = base_logits(classifier, denoiser, purifier)
        self._counts = tf.function(self.counts_graph, reduce_retracing=True)
        self._draws = tf.function(lambda x, m, seed, b: gaussian_draws(x, self.sigma, m, seed, b),
                                  reduce_retracing=True)
        self._classify = tf.function(self._classes, reduce_retracing=True)

    def _classes(self, noisy):
        return tf.argmax(self.logits(noisy), axis=1, output_type=tf.int32)

    def counts_graph(self, x, n, seed):
        """The class counts of ``n`` draws around one image x [H, W, C] as one graph (a ``tf.while_loop`` over
        batches of ``batch_size`` draws): what ``sample_counts`` runs on one device and what the SavedModel's
        PREDICT runs (export.py), so both see the same draws."""
        n = tf.cast(n, tf.int32)
        size = tf.constant(self.batch_size, tf.int32)

        def body(b, counts):
            m = tf.minimum(size, n - b * size)
            classes = self._classes(gaussian_draws(x, self.sigma, m, seed, b))
            return b + 1, counts + tf.math.bincount(classes, minlength=self.num_classes, maxlength=self.num_classes,
                                                    dtype=tf.int64)

        _, counts = tf.while_loop(lambda b, _: b * size < n, body,
                                  (tf.constant(0, tf.int32), tf.zeros([self.num_classes], tf.int64)))
        return counts

    def sample_counts(self, x: np.ndarray, n: int, seed: tf.Tensor) -> np.ndarray:
        """How often the base classifier chose each class on ``n`` noisy copies of x (int64 [num_classes]): one
        graph on one device; on several (a ``tf.distribute`` strategy), each batch of draws split over them."""
        x = tf.convert_to_tensor(np.asarray(x, np.float32))
        if fitting.strategy().num_replicas_in_sync == 1:
            return self._counts(x, tf.constant(n, tf.int32), seed).numpy()
        counts = np.zeros(self.num_classes, np.int64)
        for b in range(-(-n // self.batch_size)):
            m = min(self.batch_size, n - b * self.batch_size)
            noisy = self._draws(x, tf.constant(m), seed, tf.constant(b, tf.int32))
            classes = fitting.across_replicas(self._classify, noisy)
            counts += np.bincount(classes.numpy(), minlength=self.num_classes)[: self.num_classes]
        return counts

    def certify(self, x: np.ndarray, *, n0: int, n: int, alpha: float, seed: int = 0, index: int = 0) -> Certificate:
        """Cohen et al.'s CERTIFY (Algorithm 1). With probability at least 1 − α over the draws, the answer,
        if not ABSTAIN, is g(x) and g is constant on the L2 ball of the returned radius around x. The class
        is selected on n0 draws and its probability bounded on n fresh ones."""
        selection = self.sample_counts(x, n0, noise_seed(seed, index, SELECTION))
        c_a = int(np.argmax(selection))
        n_a = int(self.sample_counts(x, n, noise_seed(seed, index, ESTIMATION))[c_a])
        radius = radius_from_counts(n_a, n, alpha, self.sigma)
        if math.isnan(radius):
            return Certificate(ABSTAIN, 0.0, n_a, c_a, int(selection[c_a]))
        return Certificate(c_a, radius, n_a, c_a, int(selection[c_a]))

    def predict(self, x: np.ndarray, *, n: int, alpha: float, seed: int = 0, index: int = 0) -> int:
        """Cohen et al.'s PREDICT (Algorithm 2): the top class of n draws when a two-sided binomial test
        rejects a tie with the runner-up at level α, else ABSTAIN. With probability at least 1 − α the
        answer, if not ABSTAIN, is g(x)."""
        counts = self.sample_counts(x, n, noise_seed(seed, index, PREDICTION))
        top2 = np.argsort(counts, kind="stable")[::-1][:2]
        n_a, n_b = int(counts[top2[0]]), int(counts[top2[1]])
        return int(top2[0]) if binomial_p_value(n_a, n_b) <= alpha else ABSTAIN


# -- the smoothed classifier under attack (docs/certify.md §5) ---------------------------------------


class SoftSmoothedModel:
    """What an attack that sees the smoothed classifier differentiates (SmoothAdv, Salman et al. 2019): the
    soft smoothed classifier's log-probabilities log((1/m) Σ_j softmax(b(x + δ_j))), δ_j ~ N(0, σ²I), m fresh
    draws per call from a generator seeded by ``seed`` and advanced inside the traced graph. Averaging the
    probabilities before the log attacks what the vote counts; averaging the gradients of per-draw losses
    (plain EOT) is weaker (Salman et al. 2019, §3). Square queries the same scores (``forward``)."""

    is_random = True

    def __init__(self, smoothed: Smoothed, draws: int, seed: int = 0):
        self.smoothed, self.draws = smoothed, int(draws)
        self._generator = tf.random.Generator.from_seed(seed)

    def __call__(self, x):
        x = tf.convert_to_tensor(x, tf.float32)
        b, m = tf.shape(x)[0], self.draws
        tiled = tf.repeat(x, m, axis=0)
        noisy = tiled + self.smoothed.sigma * self._generator.normal(tf.shape(tiled))
        p = tf.nn.softmax(self.smoothed.logits(noisy))
        return tf.math.log(tf.reduce_mean(tf.reshape(p, [b, m, -1]), axis=1) + 1e-20)

    forward = __call__


@dataclasses.dataclass(frozen=True)
class SmoothingSettings:
    """A smoothed classifier as a row of the adaptive report: its σ and denoiser, PREDICT's draws and α, and
    the seed of PREDICT's noise."""

    sigma: float
    denoiser: str
    predict_n: int = 1000
    alpha: float = 0.001
    seed: int = 0


class SmoothingDefence(BaseDefence):
    """The smoothed classifier as a defence the adaptive report attacks and scores. As a map x → x it is one
    draw of the noise through the denoiser (``purify``: clip(D(x + δ), 0, 1), random); as a classifier it is the
    vote over many. Attacks see the soft smoothed classifier (``attack_model``: the budget's EOT draws inside
    each call), and every attacked image is scored by PREDICT (``predict``), abstentions counting as wrong."""

    is_random = True

    def __init__(self, smoothed: Smoothed, settings: SmoothingSettings, model_key: str):
        self.smoothed, self.settings, self.model_key = smoothed, settings, model_key
        self.variant = f"smoothing σ={settings.sigma:g} {settings.denoiser}"

    def function(self, x, seed=None):
        """One draw: clip(D(x + δ), 0, 1) (x + δ with no denoiser), δ from the stateless seed (seed, 0)."""
        x = tf.convert_to_tensor(x, tf.float32)
        seed = tf.stack([tf.cast(0 if seed is None else seed, tf.int64), tf.constant(0, tf.int64)])
        noisy = x + self.smoothed.sigma * tf.random.stateless_normal(tf.shape(x), seed=seed)
        s = self.smoothed
        if s.denoiser is not None:
            noisy = tf.cast(models.denoise(s.denoiser, noisy), tf.float32)
        if s.purifier is not None:
            noisy = s.purifier.purify(tf.clip_by_value(noisy, 0.0, 1.0))
        return noisy

    purify = function

    def attack_model(self, model_fn, attack_settings):
        """(the model the attack differentiates, its settings): the budget's EOT draws go inside each call,
        where the soft classifier averages them, and the attack calls it once per gradient."""
        model = SoftSmoothedModel(self.smoothed, max(int(attack_settings.eot), 1), attack_settings.seed)
        return model, dataclasses.replace(attack_settings, eot=1)

    def predictor(self, model_fn, fresh: bool = False):
        """Scored by PREDICT: its own noise, which no attack draws (``fresh`` changes nothing)."""
        return self.predict

    def predict(self, x: np.ndarray) -> np.ndarray:
        """PREDICT on every image of a batch (the i-th image's noise from seed (seed, i)); ABSTAIN = −1."""
        s = self.settings
        return np.array([self.smoothed.predict(img, n=s.predict_n, alpha=s.alpha, seed=s.seed, index=i)
                         for i, img in enumerate(np.asarray(x, np.float32))], np.int64)
