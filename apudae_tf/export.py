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
        """One clear message for a wrong rank, size or channel count, or values outside [0, 1]."""
        h, w, c = self.image_shape
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
    target = check_target(base, version)
    module = ServedDefence(classifier, purifier)
    signatures = {
        "serving_default": module.serve.get_concrete_function(),
        "classify_only": module.classify_only.get_concrete_function(),
    }
    os.makedirs(base, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{version}.tmp", dir=base)
    try:
        tf.saved_model.save(module, tmp, signatures=signatures)
        info = {"variant": purifier.variant, "settings": dataclasses.asdict(purifier.settings),
                "image_shape": list(module.image_shape), "dae_mu": purifier.stats.mu,
                "dae_sigma": purifier.stats.sigma, **(meta or {})}
        os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
        with open(os.path.join(tmp, "assets.extra", "apudae.json"), "w") as f:
            json.dump(info, f, indent=2)
        os.chmod(tmp, 0o755)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
