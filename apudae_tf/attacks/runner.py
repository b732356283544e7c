"""The attacks by name, and the batched, resumable runner every command and report calls."""

from __future__ import annotations

import dataclasses
import functools
import time

import numpy as np
import tensorflow as tf

from apudae_tf import models
from apudae_tf.attacks.adaptive import bpda_eot, counter_a, counter_b, full_adaptive
from apudae_tf.attacks.autoattack import apgd_ce, apgd_dlr, apgd_t, square
from apudae_tf.attacks.base import L2_METHODS, METHODS, AttackSettings
from apudae_tf.attacks.classic import cw_l2, cw_linf, fgsm, no_attack, pgd, r_fgsm, random_noise
from apudae_tf.errors import ApudaeError

DEFENCE_ATTACKS = {"bpda": counter_a, "weighted": counter_b, "adaptive": full_adaptive, "bpda-eot": bpda_eot}
# the counter attacks see only the DAE (D and r), not the variant's loop: their examples are the
# same for every purification variant of one DAE
DAE_ONLY_ATTACKS = ("bpda", "weighted")
# AutoAttack-grade attacks on any model_fn: white box on a classifier, or on classifier ∘ purifier
# through the defence's own gradient (exact, or BPDA for a purifier that has none: ``defence.gradient``)
ENSEMBLE_ATTACKS = {"apgd-ce": apgd_ce, "apgd-dlr": apgd_dlr, "apgd-t": apgd_t, "square": square}

ATTACKS = {"none": no_attack, "random": random_noise, "fgsm": fgsm, "r-fgsm": r_fgsm, "pgd": pgd, "cw": cw_linf, "cw-l2": cw_l2}


def run_attack(method: str, model_fn, x, y, settings: AttackSettings, batch_size: int | None = None, progress=None,
               defence=None, done=None):
    """Attack ``x`` (numpy) in batches (default: ``models.batch_for`` its image size at ``GRADIENT_PIXELS``);
    returns float32 numpy adversarial images. ``done`` (``get(i)``/``put(i, x)`` by the batch's first
    index, e.g. ``cache.BatchStore``) keeps finished batches, so an interrupted attack resumes.

    The attacks of ``DEFENCE_ATTACKS`` also need ``defence``, the Purifier in front of ``model_fn``."""
    if method in DEFENCE_ATTACKS:
        if defence is None:
            raise ApudaeError(f"the {method} attack needs the defence it attacks (a purification variant)")
        fn = functools.partial(DEFENCE_ATTACKS[method], defence=defence)
    elif method in ENSEMBLE_ATTACKS:
        # one model object for every batch: its compiled gradient is traced once. The defence says how it is
        # attacked (defences.BaseDefence.attack_model: classifier ∘ defence, or the soft smoothed classifier)
        if defence is not None:
            model_fn, settings = defence.attack_model(model_fn, settings)
        fn = ENSEMBLE_ATTACKS[method]
    elif method in ATTACKS:
        fn = ATTACKS[method]
    else:
        raise ApudaeError(f"unknown attack {method!r}; use one of {', '.join(METHODS)}")
    if settings.norm != "linf" and method not in L2_METHODS:
        raise ApudaeError(f"the {method} attack is L∞ only; in the {settings.norm} threat model use "
                          f"{', '.join(L2_METHODS)}")
    y = np.asarray(y, np.int64)
    # a model that runs several noisy copies of each image per call (the soft smoothed classifier) holds
    # that many images' activations
    pixels = models.GRADIENT_PIXELS // max(int(getattr(model_fn, "draws", 1)), 1)
    batch_size = batch_size or models.batch_for(x.shape[1:], pixels)
    out = []
    for i in range(0, len(x), batch_size):
        kept = done.get(i) if done is not None else None
        if kept is not None and len(kept) == len(x[i : i + batch_size]):
            out.append(kept)
        else:
            batch = dataclasses.replace(settings, seed=settings.seed + i)  # batches get distinct random draws
            t0 = time.perf_counter()
            out.append(np.asarray(fn(model_fn, tf.constant(x[i : i + batch_size]),
                                     tf.constant(y[i : i + batch_size]), batch), np.float32))
            if done is not None:
                done.put(i, out[-1], time.perf_counter() - t0)
        if progress:
            progress(min(i + batch_size, len(x)))
    return np.concatenate(out) if out else np.zeros_like(x)

