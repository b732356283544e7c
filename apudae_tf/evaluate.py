"""Measurements of trained models and defences, as data first, text second."""

from __future__ import annotations

import numpy as np

from apudae_tf import models
from apudae_tf.data import Dataset
from apudae_tf.store import Models


def model_facts(m: Models, ds: Dataset) -> dict:
    """Classifier test accuracy and the DAE's clean r(x) on the full test and validation splits."""
    logits = models.predict_in_batches(lambda b: m.classifier(b, training=False), ds.x_test)
    r_test = models.predict_in_batches(lambda b: models.reconstruction_error(m.dae, b), ds.x_test)
    r_val = models.predict_in_batches(lambda b: models.reconstruction_error(m.dae, b), ds.x_val)
    return {
        "dataset": ds.name,
        "models": m.folder,
        "data_source": ds.source,
        "classifier_test_accuracy": float(np.mean(np.argmax(logits, 1) == ds.y_test)),
        "n_test": int(len(ds.y_test)),
        "dae_r_test_mean": float(r_test.mean()),
        "dae_r_test_std": float(r_test.std()),
        "dae_r_val_mean": float(r_val.mean()),
        "dae_r_val_std": float(r_val.std()),
        "stored_mu": m.stats.mu,
        "stored_sigma": m.stats.sigma,
        "sigma_max": m.stats.sigma_max,
    }


def format_facts(f: dict) -> str:
    return "\n".join(
        [
            f"dataset        {f['dataset']} ({f['data_source']}), models {f['models']}",
            f"classifier     test accuracy {f['classifier_test_accuracy']:.4f} on {f['n_test']} images",
            f"DAE r(x) test  mean {f['dae_r_test_mean']:.4f}, std {f['dae_r_test_std']:.4f}",
            f"DAE r(x) val   mean {f['dae_r_val_mean']:.4f}, std {f['dae_r_val_std']:.4f}"
            f" (stored mu {f['stored_mu']:.4f}, sigma {f['stored_sigma']:.4f}; sigma_max {f['sigma_max']})",
        ]
    )


# -- choosing purification settings on the validation split --------------------------------

# Sweep grids per dataset (spec §3 leaves MNIST's n and α open). Adam variants share one
# grid; A takes sign steps, so its α is a pixel step; F and G add the noise scale ε_r.
TUNE_GRID = {
    "mnist": {
        "A": {"n": [10, 20], "alpha": [0.01, 0.02, 0.04]},
        "adam": {"n": [10, 20], "alpha": [0.02, 0.05, 0.1]},
        "noise": {"eps_r": [0.01, 0.03]},
    },
    "cifar10": {
        "A": {"n": [12, 15, 18], "alpha": [1 / 255, 2 / 255]},
        "adam": {"n": [10, 15, 20], "alpha": [1 / 255, 2 / 255]},
        "noise": {"eps_r": [0.7 / 255, 1 / 255, 2 / 255]},
    },
}


def tune_candidates(dataset: str, variant: str):
    """The settings swept for one variant (a list of PurifySettings)."""
    import itertools

    from apudae_tf.purify import PurifySettings

    grid = TUNE_GRID.get(dataset, TUNE_GRID["cifar10"])
    if variant == "direct":
        return [PurifySettings(n=0)]
    base = grid["A"] if variant == "A" else grid["adam"]
    noise = grid["noise"]["eps_r"] if variant in ("F", "G") else [0.0]
    return [PurifySettings(n=n, alpha=a, eps_r=e) for n, a, e in itertools.product(base["n"], base["alpha"], noise)]


def tune(m: Models, ds: Dataset, variants, n_val: int, attack_settings, seed: int = 0, progress=None) -> dict:
    """Pick each variant's settings on validation images: maximise the mean of clean and
    PGD accuracy (PGD from the preset, blind to the defence). The test split is never touched."""
    import dataclasses

    from apudae_tf import attacks
    from apudae_tf.purify import Purifier

    x, y = ds.x_val[:n_val], ds.y_val[:n_val]
    fn = m.classifier_fn()
    x_adv = attacks.run_attack("pgd", fn, x, y, attack_settings)

    def acc(images):
        return float(np.mean(np.argmax(models.predict_in_batches(fn, images), 1) == y))

    report = {"dataset": ds.name, "split": "val", "n": int(len(x)), "criterion": "mean of clean and pgd accuracy",
              "attack": {"method": "pgd", **dataclasses.asdict(attack_settings), "saw_defence": False},
              "undefended": {"clean": acc(x), "pgd": acc(x_adv)}, "variants": {}}
    for variant in variants:
        sweep = []
        for s in tune_candidates(ds.name, variant):
            s = dataclasses.replace(s, seed=seed)
            p = Purifier(m.dae, m.stats, variant, s)
            row = {"settings": dataclasses.asdict(s), "clean": acc(p.purify_array(x)), "pgd": acc(p.purify_array(x_adv))}
            row["score"] = (row["clean"] + row["pgd"]) / 2
            sweep.append(row)
            if progress:
                progress(variant, row)
        best = max(sweep, key=lambda r: r["score"])
        report["variants"][variant] = {"settings": best["settings"], "val_clean": best["clean"],
                                       "val_pgd": best["pgd"], "sweep": sweep}
    return report
