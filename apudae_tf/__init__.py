"""APuDAE: adversarial purification with denoising autoencoders, in TensorFlow/Keras, and the certified
defence built from the same denoisers (randomized smoothing).

The public face:

- ``evaluate(model, x, y, *, defence=None, threat_model, budget="standard")`` -> ``Evaluation``: any Keras
  classifier behind any defence under the attacks that see it, the per-image worst case (engine.py);
- ``ThreatModel(norm="linf" | "l2", eps=...)``, ``Budget(...)`` or a named budget (fast, standard, autoattack);
- ``Defence``: the protocol every defence implements (defences.py); ``load_defence("mnist")`` a shipped
  purifier; ``Purifier`` the APuDAE loop (spec §3);
- ``Smoothed``: randomized smoothing with ``certify`` and ``predict`` (Cohen et al. 2019; smoothing.py).

The maths follows docs/spec.md (purification) and docs/certify.md (smoothing). Importing the package loads
TensorFlow only when one of these names is first used.
"""

__version__ = "0.1.0"

_PUBLIC = {
    "evaluate": ("apudae_tf.engine", "evaluate"),
    "Evaluation": ("apudae_tf.engine", "Evaluation"),
    "Budget": ("apudae_tf.engine", "Budget"),
    "ThreatModel": ("apudae_tf.profiles", "ThreatModel"),
    "Defence": ("apudae_tf.defences", "Defence"),
    "load_defence": ("apudae_tf.defences", "load_defence"),
    "Purifier": ("apudae_tf.purify", "Purifier"),
    "Smoothed": ("apudae_tf.smoothing", "Smoothed"),
}
__all__ = sorted(_PUBLIC)


def __getattr__(name):
    # lazy: `apudae-tf --help` and the modules free of TensorFlow (names, profiles, errors) stay fast
    if name in _PUBLIC:
        import importlib

        module, attr = _PUBLIC[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'apudae_tf' has no attribute {name!r}")
