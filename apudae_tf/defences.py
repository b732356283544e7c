"""What a defence is, to the attacks and the reports: one protocol, its defaults in one base class, and the
adapters that make a user's own defence one with no code (after IBM ART's ``Preprocessor``).

The protocol (``Defence``):

- ``__call__(x, seed=None)``: the defence's forward pass on a float32 NHWC batch in [0, 1], x → x' in [0, 1];
  ``seed`` fixes a random defence's draws;
- ``function(x, seed)``, optional (``None`` when absent): the same map as a differentiable TensorFlow function,
  for attacks that take its exact gradient;
- ``is_random``: whether two calls with different seeds may differ (attacks then average over draws: EOT).

Everything else the engine needs (which attacks apply, which gradient they see, how a row is keyed in a
cache, how the attacked model is built) has a default in ``BaseDefence``; the APuDAE ``Purifier``,
Defense-GAN and the smoothed classifier override what differs. ``as_defence`` wraps a user's Keras model
(x → x, differentiated exactly) or plain callable (attacked by BPDA, the identity backward, and by Square,
which needs no gradient). Before an exact gradient is trusted it is checked (``check_gradient``): zero or
non-finite gradients on the inputs are reported and the defence is then attacked without them.

Every defence here must be judged by attacks that see it (Athalye et al. 2018; Carlini & Wagner 2017;
Tramèr et al. 2020): a purifier that only breaks gradients keeps nothing once BPDA and Square see it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Protocol, runtime_checkable

import numpy as np
import tensorflow as tf

from apudae_tf import models
from apudae_tf.errors import ApudaeError

# the attacks that go through a defence (attacks.ENSEMBLE_ATTACKS): every defence admits them
ENSEMBLE = ("apgd-ce", "apgd-dlr", "apgd-t", "square")
GRADIENT_CHECK_IMAGES = 16


@runtime_checkable
class Defence(Protocol):
    """x -> x' in [0, 1] in front of a classifier (see the module's docstring)."""

    is_random: bool

    def __call__(self, x, seed=None): ...


class BaseDefence:
    """The defaults of every defence. A subclass implements ``purify(x, seed)`` (the forward pass, a tensor) and,
    if it can, ``function(x, seed)``; it may narrow ``attacks`` or replace ``attack_model`` (how an attack sees
    it) where it is more than a map in front of the classifier."""

    is_random = False
    attacks = ENSEMBLE  # the attack methods that may go through it
    function = None  # no differentiable function unless the subclass has one
    variant = "defence"  # cache keys: its name, settings and the model file whose digest keys it
    settings = None
    model_key = "defence"

    def __call__(self, x, seed=None):
        return self.purify(x, seed)

    @property
    def gradient(self) -> str:
        """What gradient-based attacks differentiate: ``exact`` (``function``) or ``bpda`` (the forward pass with
        the identity backward)."""
        return "exact" if self.function is not None else "bpda"

    def attack_model(self, model_fn, settings):
        """(the model ``x -> logits`` that an attack through the defence differentiates and queries, its
        settings): classifier ∘ defence with this defence's gradient, fresh draws per call when random."""
        from apudae_tf.attacks import DefendedModel

        return DefendedModel(self, model_fn, "exact" if self.function is not None else "bpda", settings.seed), settings

    def predictor(self, model_fn, fresh: bool = False):
        """``x -> labels`` of the defended classifier, how a report scores an image: the defence's forward pass
        (the seeds ``purify`` uses, or with ``fresh``, draws no attack has used), then the classifier."""
        from apudae_tf.table import FRESH_SEEDS

        seed = (getattr(self.settings, "seed", 0) or 0) + (FRESH_SEEDS if fresh else 0)

        def predict(x):
            return np.argmax(models.predict_in_batches(model_fn, self.purify_array(x, seed=seed)), 1)

        return predict

    def purify_array(self, x: np.ndarray, batch_size: int | None = None, progress=None,
                     seed: int | None = None) -> np.ndarray:
        """The forward pass over a numpy array in batches; batch i draws with seed ``seed + i``."""
        seed = 0 if seed is None else seed
        batch_size = batch_size or models.batch_for(x.shape[1:], models.GRADIENT_PIXELS)
        out = []
        for j, i in enumerate(range(0, len(x), batch_size)):
            out.append(np.asarray(self.purify(tf.constant(x[i : i + batch_size], tf.float32), seed + j), np.float32))
            if progress:
                progress(min(i + batch_size, len(x)))
        return np.concatenate(out) if out else np.zeros_like(x)


@dataclasses.dataclass(frozen=True)
class UserSettings:
    """A user's defence in cache keys: what it is, and whether the engine takes its exact gradient."""

    kind: str
    gradient: str
    digest: str


class UserDefence(BaseDefence):
    """A user's defence: a Keras model x → x (its gradient is exact, once ``check_gradient`` passes) or a plain
    callable ``f(x)`` or ``f(x, seed=None)`` (attacked by BPDA and Square: its gradient may be missing or
    masked). ``is_random`` says whether it draws randomness per call."""

    model_key = "defence"

    def __init__(self, fn, *, differentiable: bool, is_random: bool = False, name: str = "user defence",
                 digest: str = ""):
        self._fn, self.is_random, self.variant = fn, bool(is_random), name
        self._takes_seed = _takes_seed(fn)
        self._differentiable = differentiable
        self.settings = UserSettings("keras model" if differentiable else "callable",
                                     "exact" if differentiable else "bpda", digest)

    def _apply(self, x, seed):
        x = tf.convert_to_tensor(x, tf.float32)
        out = self._fn(x, seed=seed) if self._takes_seed else self._fn(x)
        return tf.cast(out, tf.float32)

    def purify(self, x, seed=None):
        return self._apply(x, seed)

    @property
    def function(self):
        return self._apply if self._differentiable else None



class BpdaDefence(BaseDefence):
    """A defence whose exact gradient failed ``check_gradient``: the same forward pass, attacked by BPDA (the
    identity backward) and Square, with the reason on record."""

    def __init__(self, inner, reason: str):
        self.inner, self.reason = inner, reason
        self.is_random, self.variant, self.settings = inner.is_random, inner.variant, inner.settings
        self.model_key = inner.model_key
        self.attacks = tuple(a for a in inner.attacks if a in ENSEMBLE)

    @property
    def gradient(self) -> str:
        return f"bpda ({self.reason} gradient)"

    def purify(self, x, seed=None):
        return self.inner.purify(x, seed)

    def purify_array(self, x, batch_size=None, progress=None, seed=None):
        return self.inner.purify_array(x, batch_size, progress, seed)


def without_gradient(defence, reason: str) -> BpdaDefence:
    """``defence`` attacked without its gradient (``reason``: what ``check_gradient`` found)."""
    return BpdaDefence(defence, reason)


def _takes_seed(fn) -> bool:
    import inspect

    try:
        return "seed" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def weights_digest(model) -> str:
    """A short hash of a Keras model's weights (keys cached results to the model that made them)."""
    import hashlib

    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()[:16]


def as_defence(defence, is_random: bool | None = None):
    """Any defence as one the engine knows: None stays None; a ``BaseDefence`` (Purifier, Defense-GAN, the
    smoothed classifier) is itself; a Keras model x → x becomes a differentiable ``UserDefence``; any other
    callable a BPDA-attacked one."""
    import keras

    if defence is None or isinstance(defence, BaseDefence):
        return defence
    if isinstance(defence, keras.Model):
        return UserDefence(lambda x: defence(x, training=False), differentiable=True, is_random=bool(is_random),
                           name=f"Keras model {defence.name}", digest=weights_digest(defence))
    if callable(defence):
        name = getattr(defence, "__name__", type(defence).__name__)
        return UserDefence(defence, differentiable=False, is_random=bool(is_random), name=f"callable {name}")
    raise ApudaeError(f"a defence must be a Keras model or a callable x -> x (float32 NHWC in [0, 1]); got "
                      f"{type(defence).__name__}")


@dataclasses.dataclass(frozen=True)
class GradientCheck:
    """The input gradient of L(f(defence(x)), y) on a few images: ``ok``, ``zero`` (everywhere on them),
    ``non-finite``, or ``not used`` (the defence has no differentiable function)."""

    status: str
    images: int
    mean_abs: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def check_gradient(defence, model_fn, x: np.ndarray, y: np.ndarray, seed: int = 0) -> GradientCheck:
    """Whether an attack may trust ``defence.function``'s gradient: on up to 16 images, ∇_x of the
    cross-entropy through defence and classifier must be finite and not zero everywhere. A quantizer, a
    ``tf.round`` or a ``stop_gradient`` gives zeros; a division by zero or a log gives NaN; both hide the
    defence from gradient attacks without making it robust."""
    if defence is None or defence.function is None:
        return GradientCheck("not used", 0)
    k = min(len(x), GRADIENT_CHECK_IMAGES)
    xs = tf.constant(np.asarray(x[:k], np.float32))
    ys = tf.constant(np.asarray(y[:k], np.int64))
    with tf.GradientTape() as tape:
        tape.watch(xs)
        logits = model_fn(defence.function(xs, seed))
        loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=ys, logits=logits))
    g = tape.gradient(loss, xs)
    if g is None:
        return GradientCheck("zero", k, 0.0)
    g = g.numpy()
    if not np.all(np.isfinite(g)):
        return GradientCheck("non-finite", k)
    mean_abs = float(np.mean(np.abs(g)))
    return GradientCheck("ok" if np.any(g != 0) else "zero", k, mean_abs)


def load_defence(name_or_folder: str, variant: str | None = None):
    """A shipped or trained APuDAE purifier as a ``Defence``: ``name_or_folder`` is a dataset with shipped models
    (``mnist``, ``cifar10``, ...) or a model folder (dae.keras, dae_stats.json, purify_settings.json);
    ``variant`` defaults to the one chosen on validation (purify_settings.json), else ``direct``."""
    from apudae_tf import reports, profiles, store, table
    from apudae_tf.purify import Purifier, default_settings

    folder = name_or_folder if os.path.isdir(name_or_folder) else store.default_model_dir(name_or_folder)
    if not os.path.isdir(folder):
        raise ApudaeError(f"no model folder {name_or_folder!r}: name a dataset with shipped models "
                          f"({', '.join(sorted(os.listdir(store.SAVED_MODELS)))}) or a folder from `apudae-tf train`")
    profiles.from_folder(folder)
    m = store.load_models(folder, need=("dae",))
    variant = variant or table.chosen_variant(reports._tuned(folder)) or "direct"
    dataset = m.stats.dataset
    return Purifier(m.dae, m.stats, variant, default_settings(dataset, variant, folder),
                    checkpoint=profiles.REGISTRY[dataset].checkpoint_steps if dataset in profiles.REGISTRY else False)
