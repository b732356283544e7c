"""Export the purifier and classifier as one TF Serving SavedModel.

``BASE/<version>/`` holds a SavedModel with two signatures:

* ``serving_default``: images [N, H, W, C] float32 in [0, 1] → purified images,
  logits, probabilities, an int64 class per image, and r(x) before and after
  purification (spec §2, eq. 7);
* ``classify_only``: the same inputs → logits, probabilities, classes and r(x),
  without purification.

The purification inside is ``Purifier.purify`` itself, traced into the graph:
no second copy of the loop. Its input variable and Adam slots have a fixed
batch shape (tf.function must not create variables per request), so a request
is padded to a multiple of ``chunk`` images and purified chunk by chunk. Each
image's result does not depend on its neighbours (per-image losses, element-wise
Adam), so padding changes nothing. Random variants (F, G) are stateless: chunk
``i`` uses seed ``settings.seed + i``, exactly as ``Purifier.purify_array`` does
for batches of ``chunk`` images, so a request's answer is reproducible.
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

SERVING_CHUNK = 32  # images per purification chunk inside the SavedModel


class ServedDefence(tf.Module):
    """The classifier behind the purifier, with the two serving signatures."""

    def __init__(self, classifier, purifier: Purifier, chunk: int = SERVING_CHUNK):
        super().__init__(name="apudae")
        self.classifier, self.dae = classifier, purifier.dae  # attributes, so their weights are saved
        self.purifier = purifier
        self.image_shape = tuple(purifier.stats.image_shape)
        self.chunk = int(chunk)
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
        range_ok = tf.reduce_all(tf.logical_and(images >= 0.0, images <= 1.0))  # NaN fails too
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

    def _purify(self, images):
        """Pad to whole chunks, purify each chunk with the library's Purifier, drop the padding."""
        n = tf.shape(images)[0]
        padded = tf.pad(images, [[0, (-n) % self.chunk], [0, 0], [0, 0], [0, 0]])
        chunks = tf.reshape(padded, [-1, self.chunk, *self.image_shape])
        out = tf.TensorArray(tf.float32, size=tf.shape(chunks)[0], element_shape=[self.chunk, *self.image_shape])
        for i in tf.range(tf.shape(chunks)[0]):
            seed = tf.cast(self.purifier.settings.seed, tf.int64) + tf.cast(i, tf.int64)
            out = out.write(i, self.purifier.purify(chunks[i], seed=seed))
        return tf.reshape(out.stack(), [-1, *self.image_shape])[:n]

    def _serve(self, images):
        images = self._checked(images)
        purified = self._purify(images)
        return {
            "purified": purified,
            "r_before": models.reconstruction_error(self.dae, images),
            "r_after": models.reconstruction_error(self.dae, purified),
            **self._outputs(purified),
        }

    def _classify_only(self, images):
        images = self._checked(images)
        return {"r": models.reconstruction_error(self.dae, images), **self._outputs(images)}


def export(classifier, purifier: Purifier, base: str, version: int = 1,
           chunk: int = SERVING_CHUNK, meta: dict | None = None) -> str:
    """Write BASE/VERSION/ (saved_model.pb, variables/, assets.extra/apudae.json); returns that path.

    Written into a temporary folder beside it and renamed, so a half-written
    export never appears under a version number TF Serving would load.
    """
    if version < 1:
        raise ApudaeError(f"--version must be a positive integer, got {version}")
    if chunk < 1:
        raise ApudaeError(f"the serving chunk must be a positive number of images, got {chunk}")
    target = os.path.join(base, str(version))
    if os.path.exists(target):
        raise ApudaeError(f"{target} exists; pick another --version or remove it")
    module = ServedDefence(classifier, purifier, chunk)
    # trace both signatures now so the purifier creates its chunk-shaped variables before saving
    signatures = {
        "serving_default": module.serve.get_concrete_function(),
        "classify_only": module.classify_only.get_concrete_function(),
    }
    module.purifier_variables = list(purifier.variables)  # tracked, so the SavedModel holds them
    os.makedirs(base, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{version}.tmp", dir=base)
    try:
        tf.saved_model.save(module, tmp, signatures=signatures)
        info = {"variant": purifier.variant, "settings": dataclasses.asdict(purifier.settings),
                "image_shape": list(module.image_shape), "chunk": chunk, "dae_mu": purifier.stats.mu,
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
