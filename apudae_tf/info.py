"""`apudae-tf info`: the facts of a model folder on a dataset (accuracy, r(x) statistics), as data and as text."""

from __future__ import annotations

import numpy as np

from apudae_tf import models
from apudae_tf.data import Dataset
from apudae_tf.store import Models, shown_path


def model_facts(m: Models, ds: Dataset) -> dict:
    """Classifier test accuracy and the DAE's clean r(x) on the full test and validation splits."""
    logits = models.predict_in_batches(lambda b: m.classifier(b, training=False), ds.x_test)
    r_test = models.reconstruction_errors(m.dae, ds.x_test)
    r_val = models.reconstruction_errors(m.dae, ds.x_val)
    return {
        "dataset": ds.name,
        "models": shown_path(m.folder),
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
