"""Choosing purification settings on the validation split (`apudae-tf tune`): the candidates a profile's grid
gives, the sweep (resumable from a cache), and Defense-GAN's search length. Never the test set."""

from __future__ import annotations

import numpy as np

from apudae_tf import models
from apudae_tf.cache import digest
from apudae_tf.data import Dataset
from apudae_tf.machine import environment
from apudae_tf.store import Models


def tune_candidates(dataset: str, variant: str):
    """The settings swept for one variant (a list of PurifySettings), from the dataset profile's grid:
    the Adam variants share one grid; A takes sign steps, so its α is a pixel step; F and G add the
    noise scale ε_r."""
    import itertools

    from apudae_tf import profiles
    from apudae_tf.purify import PurifySettings

    grid = profiles.get(dataset).tune_grid
    if variant == "direct":
        return [PurifySettings(n=0)]
    base = grid["A"] if variant == "A" else grid["adam"]
    noise = grid["noise"]["eps_r"] if variant in ("F", "G") else [0.0]
    return [PurifySettings(n=n, alpha=a, eps_r=e) for n, a, e in itertools.product(base["n"], base["alpha"], noise)]


def _val_probe(m: Models, ds: Dataset, n_val: int, attack_settings) -> tuple:
    """Validation images, their blind PGD versions, an accuracy scorer and the report's head:
    what every sweep on validation shares. The test split is never touched."""
    import dataclasses

    from apudae_tf import attacks

    x, y = ds.x_val[:n_val], ds.y_val[:n_val]
    fn = m.classifier_fn()
    x_adv = attacks.run_attack("pgd", fn, x, y, attack_settings)

    def acc(images):
        return float(np.mean(np.argmax(models.predict_in_batches(fn, images), 1) == y))

    head = {"dataset": ds.name, "split": "val", "n": int(len(x)), "criterion": "mean of clean and pgd accuracy",
            "attack": {"method": "pgd", **dataclasses.asdict(attack_settings), "saw_defence": False},
            "undefended": {"clean": acc(x), "pgd": acc(x_adv)}, "environment": environment()}
    return x, x_adv, acc, head


def _sweep(candidates, make_defence, x, x_adv, acc, progress=None, cache=None, key=()) -> tuple[dict, list[dict]]:
    """Score each candidate's defence on clean and PGD validation images; the best and the sweep.
    With ``cache`` (a cache.Cache) each scored candidate is kept under ``key`` and its settings, so an
    interrupted sweep resumes where it stopped."""
    import dataclasses
    import time

    sweep = []
    for s in candidates:
        cell = digest(*key, dataclasses.asdict(s))
        row = cache.cell(cell) if cache else None
        if row is None:
            d = make_defence(s)
            t0 = time.perf_counter()
            row = {"settings": dataclasses.asdict(s), "clean": acc(d.purify_array(x))}
            row["ms_per_image"] = 1000 * (time.perf_counter() - t0) / max(len(x), 1)
            row["pgd"] = acc(d.purify_array(x_adv))
            row["score"] = (row["clean"] + row["pgd"]) / 2
            if cache:
                cache.put_cell(cell, row)
        sweep.append(row)
        if progress:
            progress(row)
    return max(sweep, key=lambda r: r["score"]), sweep


def tune(m: Models, ds: Dataset, variants, n_val: int, attack_settings, seed: int = 0, progress=None,
         cache_dir: str | None = None) -> dict:
    """Pick each variant's settings on validation images: maximise the mean of clean and
    PGD accuracy (PGD from the preset, blind to the defence). With ``cache_dir``, each scored setting
    is kept there (keyed by the models' files, the images and the attack), so a rerun resumes."""
    import dataclasses

    from apudae_tf.cache import Cache
    from apudae_tf.purify import Purifier

    x, x_adv, acc, report = _val_probe(m, ds, n_val, attack_settings)
    cache = Cache(cache_dir) if cache_dir else None
    files = m.digests().values()
    report["variants"] = {}
    for variant in variants:
        best, sweep = _sweep([dataclasses.replace(s, seed=seed) for s in tune_candidates(ds.name, variant)],
                             lambda s: Purifier(m.dae, m.stats, variant, s), x, x_adv, acc,
                             progress and (lambda row: progress(variant, row)), cache,
                             ("tune", variant, *files, ds.source, len(x), report["attack"]))
        report["variants"][variant] = {"settings": best["settings"], "val_clean": best["clean"],
                                       "val_pgd": best["pgd"], "sweep": sweep}
    return report


# Defense-GAN's R: its paper fixes R = 200 for a well-trained GAN; a generator trained on a CPU
# budget has a wider range, and fewer steps keep G(z*) from fitting the perturbation too.
GAN_STEPS_GRID = (10, 25, 50, 100, 200)


def tune_gan(m: Models, ds: Dataset, generator, n_val: int, attack_settings, restarts: int = 10,
             steps_grid=GAN_STEPS_GRID, seed: int = 0, progress=None) -> dict:
    """Pick Defense-GAN's R on validation images by the same criterion as the APuDAE variants."""
    from apudae_tf import defensegan

    x, x_adv, acc, report = _val_probe(m, ds, n_val, attack_settings)
    candidates = [defensegan.SearchSettings(restarts=restarts, steps=r, seed=seed) for r in steps_grid]
    best, sweep = _sweep(candidates, lambda s: defensegan.DefenseGan(generator, s), x, x_adv, acc, progress)
    report["defense_gan"] = {"settings": best["settings"], "val_clean": best["clean"], "val_pgd": best["pgd"],
                             "sweep": sweep}
    return report
