"""Export the purifier and classifier as one TF Serving SavedModel.

``BASE/<version>/`` holds a SavedModel with two signatures:

* ``serving_default``: images [N, H, W, C] float32 in [0, 1] → purified images,
  logits, probabilities, an int64 class per image, and r(x) before and after
  purification (spec §2, eq. 7);
* ``classify_only``: the same inputs → logits, probabilities, classes and r(x),
  without purification.

The purification inside is ``Purifier.purify`` itself, traced into the graph
for a batch of any size: no second copy of the loop, no padding. Random variants
(F, G) are stateless: a request is purified with seed ``settings.seed``, exactly
as ``Purifier.purify_array`` purifies its first batch, so a request's answer is
reproducible (and an attacker who can query the server sees a fixed function).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile

import tensorflow as tf

from apudae_tf import models
from apudae_tf.errors import ApudaeError
from apudae_tf.purify import Purifier


def checked_images(images, image_shape):
    """One clear message for a wrong rank, size or channel count, or values outside [0, 1]."""
    h, w, c = image_shape
    expected = f"images must be a float32 tensor of shape [N, {h}, {w}, {c}] with values in [0, 1]"
    # pad the shape to length 4 so the comparison itself cannot fail on a wrong rank
    dims = tf.concat([tf.shape(images), [0, 0, 0, 0]], axis=0)[:4]
    shape_ok = tf.logical_and(tf.equal(tf.rank(images), 4), tf.reduce_all(tf.equal(dims[1:], [h, w, c])))
    # over the flattened values: the signature says rank 4, so a plain reduce_all would be traced with axes
    # 0-3 and fail on a rank-3 request before the shape check could name it
    flat = tf.reshape(images, [-1])
    range_ok = tf.reduce_all(tf.logical_and(flat >= 0.0, flat <= 1.0))  # NaN fails too
    with tf.control_dependencies([
        tf.debugging.Assert(shape_ok, [expected + "; got shape", tf.shape(images)], summarize=8),
        tf.debugging.Assert(range_ok, [expected + "; got values outside [0, 1] or NaN"]),
    ]):
        return tf.ensure_shape(tf.identity(images), [None, h, w, c])


class ServedSmoothed(tf.Module):
    """A smoothed classifier's PREDICT (Cohen et al. 2019, Algorithm 2) inside the graph: for each image,
    ``n`` Gaussian draws through denoiser and classifier (``Smoothed.counts_graph``, the library's own loop),
    the top class, and an abstention unless the binomial test against the runner-up rejects a tie at level
    α. The test is a table of thresholds computed by scipy at export (``smoothing.predict_thresholds``), so
    the graph decides exactly as ``Smoothed.predict`` does. Image i of a request draws its noise from seed
    (seed, i), as ``SmoothingDefence.predict`` does for the i-th image of a batch."""

    def __init__(self, smoothed, image_shape, n: int, alpha: float, seed: int):
        from apudae_tf import smoothing

        super().__init__(name="apudae_smoothed")
        self.classifier, self.denoiser = smoothed.classifier, smoothed.denoiser  # attributes: their weights are saved
        self.smoothed, self.image_shape, self.n, self.seed = smoothed, tuple(image_shape), int(n), int(seed)
        self.thresholds = tf.constant(smoothing.predict_thresholds(n, alpha), tf.int64)
        spec = tf.TensorSpec([None, None, None, None], tf.float32, name="images")
        self.serve = tf.function(self._serve, input_signature=[spec])

    def _serve(self, images):
        from apudae_tf import smoothing

        images = checked_images(images, self.image_shape)

        def one(args):
            x, i = args
            seed = tf.stack([tf.constant(self.seed, tf.int64), i * 4 + smoothing.PREDICTION])
            return self.smoothed.counts_graph(x, self.n, seed)

        index = tf.range(tf.shape(images, out_type=tf.int64)[0], dtype=tf.int64)
        counts = tf.map_fn(one, (images, index), fn_output_signature=tf.TensorSpec([None], tf.int64))
        top = tf.math.top_k(counts, 2)
        n_a, n_b = top.values[:, 0], top.values[:, 1]
        decided = n_a >= tf.gather(self.thresholds, n_a + n_b)
        classes = tf.where(decided, tf.cast(top.indices[:, 0], tf.int64), tf.constant(smoothing.ABSTAIN, tf.int64))
        return {"classes": classes, "abstain": tf.logical_not(decided), "counts": counts}


def export_smoothed(smoothed, image_shape, base: str, version: int = 1, *, n: int, alpha: float, seed: int = 0,
                    meta: dict | None = None) -> str:
    """Write BASE/VERSION/ with a ``serving_default`` signature: images [N, H, W, C] float32 in [0, 1] -> classes
    (int64, −1 for abstain), abstain (bool) and counts (int64 [N, classes]); returns that path."""
    module = ServedSmoothed(smoothed, image_shape, n, alpha, seed)
    info = {"defence": "randomized smoothing (PREDICT)", "sigma": smoothed.sigma, "denoiser": smoothed.name,
            "n": n, "alpha": alpha, "seed": seed, "batch_size": smoothed.batch_size, "image_shape": list(image_shape),
            "noise": "N(0, sigma^2 I) in the classifier's [0, 1] input space", **(meta or {})}
    return _save(module, {"serving_default": module.serve.get_concrete_function()}, base, version, info)


class ServedDefence(tf.Module):
    """The classifier behind the purifier, with the two serving signatures."""

    def __init__(self, classifier, purifier: Purifier):
        super().__init__(name="apudae")
        self.classifier, self.dae = classifier, purifier.dae  # attributes, so their weights are saved
        self.purifier = purifier
        self.image_shape = tuple(purifier.stats.image_shape)
        spec = tf.TensorSpec([None, None, None, None], tf.float32, name="images")
        self.serve = tf.function(self._serve, input_signature=[spec])
        self.classify_only = tf.function(self._classify_only, input_signature=[spec])

    def _checked(self, images):
        return checked_images(images, self.image_shape)

    def _outputs(self, images):
        logits = self.classifier(images, training=False)
        return {
            "logits": logits,
            "probabilities": tf.nn.softmax(logits),
            "classes": tf.argmax(logits, axis=1, output_type=tf.int64),
        }

    def _serve(self, images):
        images = self._checked(images)
        purified = self.purifier.purify(images)
        return {
            "purified": purified,
            "r_before": models.reconstruction_error(self.dae, images),
            "r_after": models.reconstruction_error(self.dae, purified),
            **self._outputs(purified),
        }

    def _classify_only(self, images):
        images = self._checked(images)
        return {"r": models.reconstruction_error(self.dae, images), **self._outputs(images)}


def check_target(base: str, version: int) -> str:
    """Before any work: BASE/VERSION must not exist yet and BASE must be writable; returns BASE/VERSION."""
    from apudae_tf import store

    if version < 1:
        raise ApudaeError(f"--version must be a positive integer, got {version}")
    target = os.path.join(base, str(version))
    if os.path.exists(target):
        raise ApudaeError(f"--out {base}: {target} exists; pick another --version or remove it")
    if os.path.exists(base) and not os.path.isdir(base):
        raise ApudaeError(f"--out {base}: is a file; name a folder")
    store.probe_folder(base, "--out", base)
    return target


def export(classifier, purifier: Purifier, base: str, version: int = 1, meta: dict | None = None) -> str:
    """Write BASE/VERSION/ (saved_model.pb, variables/, assets.extra/apudae.json); returns that path.

    Written into a temporary folder beside it and renamed, so a half-written
    export never appears under a version number TF Serving would load.
    """
    module = ServedDefence(classifier, purifier)
    signatures = {
        "serving_default": module.serve.get_concrete_function(),
        "classify_only": module.classify_only.get_concrete_function(),
    }
    info = {"variant": purifier.variant, "settings": dataclasses.asdict(purifier.settings),
            "image_shape": list(module.image_shape), "dae_mu": purifier.stats.mu,
            "dae_sigma": purifier.stats.sigma, **(meta or {})}
    return _save(module, signatures, base, version, info)


def _save(module, signatures: dict, base: str, version: int, info: dict) -> str:
    """Save ``module`` as BASE/VERSION with its record in assets.extra/apudae.json, atomically."""
    target = check_target(base, version)
    os.makedirs(base, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{version}.tmp", dir=base)
    try:
        tf.saved_model.save(module, tmp, signatures=signatures)
        os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
        with open(os.path.join(tmp, "assets.extra", "apudae.json"), "w") as f:
            json.dump(info, f, indent=2)
        os.chmod(tmp, 0o755)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
