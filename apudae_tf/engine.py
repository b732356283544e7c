"""``apudae_tf.evaluate``: any classifier, behind any defence, under the attacks that see it, in one call.

RobustBench's ``benchmark`` for Keras users, with the adaptive report's engine (``table.build``): the same
cascade and per-image worst case. Columns, in order:

- clean;
- blind PGD: on the classifier alone (white box when there is no defence), scored through the defence;
- for an APuDAE purifier in the L∞ threat model, the paper's counter attacks A (BPDA through its DAE) and B
  (the weighted loss, the worst of λ ∈ {0.01, 0.1, 1, 10}) (spec §5);
- APGD-CE, APGD-T (APGD-DLR with 3 classes) and Square, a cascade on the images still standing, through the
  defence: its exact gradient (``Defence.function``) when it passed ``defences.check_gradient``, else BPDA;
  EOT over a random defence's draws.

An image is robust only if it is right in every column. Nothing is written unless ``out_dir`` is given (then
finished cells are cached there and a repeated call resumes).
"""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np

from apudae_tf import attacks, cache, defences, progress, stats, table
from apudae_tf.data import Dataset
from apudae_tf.errors import ApudaeError
from apudae_tf.profiles import NORMS, ThreatModel

Budget = table.Budget
BUDGETS = table.BUDGETS


@dataclasses.dataclass
class Evaluation:
    """The result of ``evaluate``: the worst case over every attack (the number to quote), which images were
    robust, each column's accuracy (the cascade's accuracy so far for the ensemble), and what was run."""

    worst_case: float
    robust: np.ndarray  # bool per image
    columns: dict  # column -> accuracy
    clean: float
    seconds: float
    n: int
    threat_model: dict
    budget: dict
    defence: str | None
    gradient: str  # what the gradient attacks differentiated: "white box", "exact", "bpda (...)"
    gradient_check: dict
    intervals: dict  # column -> 95% Wilson interval
    records: list  # the engine's records (settings of every attack, per column)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["robust"] = stats.pack(self.robust)
        return json.loads(json.dumps(d, default=_plain))

    @classmethod
    def from_json(cls, d: dict) -> Evaluation:
        d = dict(d)
        d["robust"] = stats.unpack(d["robust"], int(d["n"]))
        return cls(**d)

    def __str__(self) -> str:
        cols = ", ".join(f"{k} {v:.3f}" for k, v in self.columns.items())
        return (f"worst case {self.worst_case:.3f} on {self.n} images ({self.threat_model['norm']} ε = "
                f"{self.threat_model['eps']:g}; {cols}; gradient: {self.gradient}; {self.seconds:.0f} s)")


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def as_threat_model(threat_model) -> ThreatModel:
    """A ``ThreatModel``, or a dict of its fields."""
    if isinstance(threat_model, dict):
        threat_model = ThreatModel(**threat_model)
    if not isinstance(threat_model, ThreatModel):
        raise ApudaeError("threat_model: pass apudae_tf.ThreatModel(norm='linf' or 'l2', eps=...)")
    return threat_model.check("threat_model")


def as_budget(budget) -> Budget:
    """A ``Budget``, or the name of one (``BUDGETS``: fast, standard, autoattack)."""
    if isinstance(budget, Budget):
        return budget
    if budget in BUDGETS:
        return BUDGETS[budget]
    raise ApudaeError(f"budget {budget!r}: use {', '.join(BUDGETS)} or apudae_tf.Budget(...)")


def as_model_fn(model):
    """A Keras model (run in inference mode, compiled) or any callable, as ``x -> logits``."""
    import keras

    from apudae_tf import models

    if isinstance(model, keras.Model):
        return models.inference_fn(model)
    if callable(model):
        return model
    raise ApudaeError(f"model: a Keras model or a callable from float32 NHWC images in [0, 1] to logits; got "
                      f"{type(model).__name__}")


def columns(threat: ThreatModel, budget: Budget, n: int, classes: int, seed: int = 0,
            counters: bool = False) -> list[table.Column]:
    """The cascade of ``evaluate``: clean, blind PGD, (counter A and B for an APuDAE purifier), then the
    AutoAttack-grade ensemble on the images still standing."""
    base = attacks.AttackSettings(eps=threat.eps, steps=threat.steps, step=threat.step, rand_init=threat.rand_init,
                                  seed=seed, norm=threat.norm)
    out = [table.Column("clean", "none", dataclasses.replace(base, steps=0, step=0.0), n),
           table.Column("pgd", "pgd", base, n)]
    if counters and threat.norm == "linf":
        out.append(table.Column("bpda", "bpda", base, n))
        out += [table.Column("weighted", "weighted", dataclasses.replace(base, lam=lam), n) for lam in table.LAMBDAS]
    apgd = dict(steps=budget.apgd_steps, restarts=budget.restarts, eot=budget.eot, step=threat.eps)
    settings = {"apgd-ce": apgd, "apgd-dlr": apgd, "apgd-t": {**apgd, "targets": budget.targets},
                "square": {"steps": budget.square_queries, "eot": budget.eot, "step": threat.eps}}
    out += [table.Column(k, k, dataclasses.replace(base, **settings[k]), n, cascade=True)
            for k in table.ensemble_for(classes)]
    return out


def evaluate(model, x, y, *, defence=None, threat_model, budget="standard", seed: int = 0,
             is_random: bool | None = None, out_dir: str | None = None, echo=None) -> Evaluation:
    """Evaluate ``model`` (a Keras model or callable, float32 NHWC images in [0, 1] -> logits) behind
    ``defence`` (None; an ``apudae_tf.Defence`` such as ``load_defence("mnist")``; a Keras model x -> x; or a
    plain callable ``f(x)`` / ``f(x, seed=None)``, whose randomness ``is_random`` declares) on images ``x``
    with labels ``y``, under ``threat_model`` (``ThreatModel(norm=, eps=)``) and ``budget`` (``"fast"``,
    ``"standard"``, ``"autoattack"`` or a ``Budget``). Returns an ``Evaluation``; writes nothing unless
    ``out_dir`` (a cache there makes a repeated call resume). ``echo`` receives progress lines: each cell's
    result, and each attack's progress at least every 30 s."""
    started = time.time()
    threat, budget = as_threat_model(threat_model), as_budget(budget)
    model_fn = as_model_fn(model)
    x, y = _checked_arrays(x, y)
    d = defences.as_defence(defence, is_random)
    check = defences.check_gradient(d, model_fn, x, y, seed)
    if d is not None and d.function is not None and not check.ok:
        d = defences.without_gradient(d, check.status)
    if d is not None:
        budget = budget.for_defence(d.is_random)
    classes = int(np.asarray(model_fn(x[:1])).shape[-1])
    n = len(x)
    ds = Dataset("arrays", x[:0], y[:0], x[:0], y[:0], x, y, f"arrays:{cache.digest(_array_digest(x), _array_digest(y))}")
    files = {"classifier": _model_digest(model), "dae": "none"}
    if d is None:
        row = table.Defence("No defence", None, "classifier", table.classify_fn(model_fn), {}, kind="undefended")
    else:
        files[d.model_key] = _defence_digest(d)
        row = table.Defence(d.variant, None, "classifier", d.predictor(model_fn), {"defence": d.variant},
                            purifier=d, kind="purifier",
                            predict_fresh=d.predictor(model_fn, fresh=True) if d.is_random else None)
    from apudae_tf.purify import Purifier

    cols = columns(threat, budget, n, classes, seed, counters=isinstance(d, Purifier))
    result, _ = table.build(ds, [row], {"classifier": model_fn}, files, cols, out_dir, echo=echo, paper={},
                            per_image=True, progress_bar=progress.lines(echo) if echo else None)
    records = table.worst_over_lambda(result["records"])
    by_column = {r["attack"]: r for r in records}
    worst = by_column.pop("worst")
    return Evaluation(
        worst_case=float(worst["accuracy"]), robust=stats.unpack(worst["robust"], n),
        columns={k: float(r["accuracy"]) for k, r in by_column.items()}, clean=float(by_column["clean"]["accuracy"]),
        seconds=round(time.time() - started, 1), n=n, threat_model=dataclasses.asdict(threat),
        budget=dataclasses.asdict(budget), defence=None if d is None else d.variant,
        gradient="white box" if d is None else d.gradient, gradient_check=dataclasses.asdict(check),
        intervals={k: list(r["ci95"]) for k, r in [*by_column.items(), ("worst", worst)]}, records=records)


def _checked_arrays(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int64)
    if x.ndim != 4 or y.shape != (len(x),) or not len(x):
        raise ApudaeError(f"x must be float32 NHWC images and y one label per image; got x {x.shape}, y {y.shape}")
    if not (np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0):
        raise ApudaeError("x must hold finite values in [0, 1]")
    return x, y


def _array_digest(a: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def _model_digest(model) -> str:
    import keras

    return defences.weights_digest(model) if isinstance(model, keras.Model) else f"callable:{id(model)}"


def _defence_digest(d) -> str:
    """What keys a defence's cached cells: its name and settings, and an APuDAE purifier's DAE weights."""
    from apudae_tf.purify import Purifier

    inner = d.inner if isinstance(d, defences.BpdaDefence) else d
    settings = dataclasses.asdict(d.settings) if dataclasses.is_dataclass(d.settings) else str(d.settings)
    return cache.digest(d.variant, settings, d.gradient,
                        defences.weights_digest(inner.dae) if isinstance(inner, Purifier) else None)


__all__ = ["Budget", "BUDGETS", "Evaluation", "ThreatModel", "NORMS", "evaluate", "columns"]
