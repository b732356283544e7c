"""The paper's result tables (spec §6) rebuilt with our models: defences × attacks, as records.

One cell = one defence scored on one attack's examples of the same test images. The attacks
are made once per attacked model and shared by every defence that uses that model:

- every purifying defence (MagNet, APuDAE rows) is attacked *blind*: the examples are
  white-box attacks on the undefended classifier alone, the paper's protocol (spec §4);
- the adversarial-training row is attacked white-box on its own model, which is the whole
  defence.

Finished cells and attack examples are cached under ``<out>/cache`` so an interrupted run
resumes where it stopped; a cache entry is used only if its settings match.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time

import numpy as np

from apudae_tf import attacks, models, names, profiles
from apudae_tf.cache import Cache, digest
from apudae_tf.stats import pack, peak_rss_gib, unpack, wilson
from apudae_tf.data import Dataset

# Columns whose attack is another's with other settings: BIM is the paper's CIFAR-10 protocol
# (the preset without a random start); pgd50 the stronger check a reader wants (50 steps from a
# random start). Each dataset profile lists its table's columns and the paper's numbers.
COLUMN_ATTACKS = {"clean": ("none", {}), "bim": ("pgd", {"rand_init": False}), "pgd50": ("pgd", {"steps": 50}),
                  # ImageNet's two budgets (spec §4), BIM-10 at ε/4 a step
                  "bim4": ("pgd", {"rand_init": False, "eps": 4 / 255, "step": 1 / 255}),
                  "bim16": ("pgd", {"rand_init": False, "eps": 16 / 255, "step": 4 / 255})}
# Counter B's weights λ on r(x) (eq. 15); the report keeps the worst case. r(x) of an attacked MNIST
# image is ~1–30 and the cross-entropy ~1–20, so the grid spans both balances.
LAMBDAS = (0.01, 0.1, 1.0, 10.0)
# CW-L2 runs 5 × 100 Adam steps per image: the dearest column, so it scores fewer images.
CW_L2_N = 1000
MAGNET_FPR = 0.01  # the detector's false-positive rate on clean validation images (MagNet's choice)
REJECTED = -1  # the label a detecting defence gives an input it refuses


# what a row is; reports select rows by kind, never by their display name
KINDS = ("undefended", "adversarial training", "magnet", "purifier", "defense-gan", "smoothing")


@dataclasses.dataclass
class Defence:
    """A row: ``predict`` maps images to labels (``REJECTED`` for a refused input).

    A random defence (F, G, Defense-GAN) also has ``predict_fresh``, the same defence with draws
    no attack has used; the adaptive report scores such a row both ways."""

    name: str
    paper_row: str | None  # the row of the profile's paper table this row is compared with, if any
    target: str  # the model its attacks are made on: "classifier" or "adv-classifier"
    predict: object
    settings: dict
    rejected_counts_as_defended: bool = False
    purifier: object = None  # what the attacks of spec §5 attack, for purifying rows
    kind: str = "purifier"
    predict_fresh: object = None


def score(pred: np.ndarray, y: np.ndarray, attack: str, rejected_counts_as_defended: bool) -> np.ndarray:
    """Which answers are correct, per image. A refused adversarial input counts as defended only
    under MagNet's rule, and a refused clean input is always an error (a false alarm)."""
    ok = pred == y
    if rejected_counts_as_defended and attack != "clean":
        ok |= pred == REJECTED
    return ok


@dataclasses.dataclass(frozen=True)
class Column:
    """One attack column: the record's key, the attack that makes its examples, its settings and
    how many of the test images it scores. A ``cascade`` column attacks, in each row, only the images
    every earlier column of that row left standing (AutoAttack's practice); the others count as
    broken already, so its accuracy is the row's worst case so far."""

    key: str
    method: str
    settings: attacks.AttackSettings
    n: int
    cascade: bool = False
    chunk: int | None = None  # the adaptive report's images per cached chunk for this column (None: build's)


def table_columns(dataset: str, n: int, seed: int = 0, cw_l2_n: int = CW_L2_N, steps: int | None = None,
                  keys=None) -> list[Column]:
    """The paper's table's columns at the dataset's preset (``steps`` overrides: tests use 1)."""
    out = []
    for k in keys or profiles.get(dataset).columns:
        method, changes = COLUMN_ATTACKS.get(k, (k, {}))
        s = attacks.settings_for(method, dataset, steps=steps or changes.get("steps"), seed=seed)
        s = dataclasses.replace(s, **{f: v for f, v in changes.items() if f != "steps"})
        if k == "cw-l2" and cw_l2_n == 0:
            continue  # the dearest column, left out on request
        out.append(Column(k, method, s, min(n, cw_l2_n) if k == "cw-l2" else n))
    return out


def attacked_model(d: Defence, c: Column):
    """What column ``c``'s examples for row ``d`` are made on: (name, attack method, purifier).

    An attack on the defence needs a purifier; a row without one (adversarial training) gets
    white-box PGD on its model instead, the strongest attack that applies to it."""
    if c.method in attacks.DEFENCE_ATTACKS:
        if d.purifier is None:
            return d.target, "pgd", None
        if c.method in attacks.DAE_ONLY_ATTACKS:  # one set of examples serves every variant's row
            return f"{d.target}+dae", c.method, d.purifier
        return f"{d.target}+{d.name}", c.method, d.purifier
    if c.method in attacks.ENSEMBLE_ATTACKS and d.purifier is not None:  # through the defence
        return f"{d.target}+{d.name}", c.method, d.purifier
    return d.target, c.method, None


def applies(d: Defence, c: Column) -> bool:
    """Whether column ``c`` has a cell for row ``d``: an attack on the defence needs one its purifier admits."""
    _, method, purifier = attacked_model(d, c)
    return purifier is None or method in purifier.attacks


def _attack_settings(d: Defence, c: Column, method: str, purifier) -> attacks.AttackSettings:
    """The column's settings as used on row ``d``: one draw where the attacked model is deterministic."""
    if purifier is None and method != c.method:
        # a row with nothing to adapt to gets plain PGD in every adaptive column: one set of
        # examples, whatever the column's λ or EOT
        return dataclasses.replace(c.settings, lam=0.0, eot=1)
    if purifier is None or not purifier.is_random or method in attacks.DAE_ONLY_ATTACKS:
        return dataclasses.replace(c.settings, eot=1)  # one draw of a deterministic model is exact
    return c.settings


def build(ds: Dataset, defences: list[Defence], targets: dict, target_files: dict, columns: list[Column],
          out_dir: str | None, *, echo=None, progress_bar=None, batch_size: int | None = None, paper=None,
          per_image: bool = False, chunk: int = 0, detector=None) -> tuple[dict, dict]:
    """Score every defence on every column (the first ``column.n`` test images).

    ``targets`` maps a target name to its ``x -> logits`` function; ``target_files`` maps it to
    the model file's digest, which keys the cache. ``paper`` (default: the profile's) holds the paper's
    numbers by row and column. With ``per_image`` (the adaptive report) every record also holds
    which images were robust (``robust``, see ``pack``), a random defence is scored with its fixed
    draws and with fresh ones (robust = right under both), and each row gets a ``worst`` record: an
    image counts only if it survived every column. ``chunk`` (with ``per_image``): each cell is attacked
    and scored ``chunk`` images at a time and each chunk's record is cached as it finishes, so a cell
    that takes hours resumes from its last chunk even where the attack examples are gone (only
    cells.json is needed). ``detector`` (with ``per_image``): ``images -> r(x)``; every record then keeps
    the score of each attacked image (``r_adv``: image indices and values) for the detection view.
    Returns ``({"records": [...], ...}, examples)``, examples[(target, column key, λ)] being (the
    attacked images, their indices in the test split) where this run has them.
    """
    run = _Run(ds, Cache(os.path.join(out_dir, "cache") if out_dir else None), targets, target_files,
               profiles.get(ds.name).paper if paper is None else paper, per_image, detector, batch_size,
               progress_bar, echo or (lambda m: None))
    records, started, kept, attack_seconds = [], time.time(), {}, {}
    standing = {}  # row -> images that survived every column so far
    total, done = sum(applies(d, c) for c in columns for d in defences), 0
    for c in columns:
        for d in defences:
            if not applies(d, c):
                continue  # e.g. the DAE's counter attacks on Defense-GAN: the cell stays empty
            done += 1
            idx = np.arange(c.n)
            if c.cascade and d.name in standing:
                idx = np.flatnonzero(standing[d.name][: c.n])
            size = (chunk if c.chunk is None else c.chunk) if per_image else 0
            cell = run.cell(d, c, idx, size)
            if cell.examples is not None:
                kept[(cell.name, c.key, cell.settings.lam)] = cell.examples
            attack_seconds[(cell.name, cell.ekey)] = {"target": cell.name, "attack": cell.method, "column": c.key,
                                                      "n": int(len(idx)), "seconds": round(cell.attack_seconds, 2)}
            rec = cell.record
            column = f"{c.key} (λ={c.settings.lam:g})" if c.key == "weighted" else c.key
            run.echo(f"[{done}/{total}] {d.name} × {column}: {rec['accuracy']:.4f} "
                     + (f"(n={c.n}, {rec['seconds']:.0f} s)" if cell.scored else "(cached)"))
            if per_image:
                robust = unpack(rec["robust"], c.n)
                before = standing.get(d.name, robust)
                m = min(len(before), c.n)
                standing[d.name] = before[:m] & robust[:m]
            records.append(dict(rec))  # one record per cell, even when columns share a cache entry
    if per_image:
        records += [_worst_record(d, standing[d.name], records) for d in defences if d.name in standing]
    used = {c.key: {**dataclasses.asdict(c.settings), "method": c.method, "n": c.n, "cascade": c.cascade}
            for c in columns}
    # the work the numbers cost, counted once even when a resumed run took part of it from the cache
    compute = sum(a["seconds"] for a in attack_seconds.values()) + sum(r["seconds"] for r in records)
    result = {"dataset": ds.name, "n": max(c.n for c in columns), "split": "test",
              "seconds": round(time.time() - started, 1), "compute_seconds": round(compute, 1),
              # the most memory any run that made these cells took (records cached before it was kept lack it)
              "peak_rss_gib": max([peak_rss_gib()] + [r.get("peak_rss_gib", 0.0) for r in records]),
              # where the time goes: each set of attacked images once (records hold the scoring time)
              "attack_seconds": list(attack_seconds.values()), "attacks": used, "records": records}
    return result, kept


def _cell_keys(d: Defence, c: Column, name: str, method: str, s, purifier, target_files: dict, source: str,
               per_image: bool, idx: np.ndarray) -> tuple[dict | None, str, str]:
    """What the cell's attack saw of the defence, the key of its examples (everything that changes the
    attacked images: one set serves every row that shares it) and the key of its record."""
    if purifier is None:
        seen = None
    elif method in attacks.DAE_ONLY_ATTACKS:
        seen = {"dae": target_files["dae"]}
    else:
        seen = {"variant": purifier.variant, **dataclasses.asdict(purifier.settings),
                purifier.model_key: target_files[purifier.model_key]}
    subset = [digest(idx.tolist())] if c.cascade else []
    ekey = f"{name}-{method}-n{c.n}-" + digest(dataclasses.asdict(s), target_files[d.target], seen, source, *subset)
    key = digest(d.name, d.settings, c.key, method, c.n, dataclasses.asdict(s), target_files[d.target], source,
                 per_image, *subset)
    return seen, ekey, key


@dataclasses.dataclass
class _Cell:
    """One cell as ``_Run.cell`` made or found it."""

    name: str  # the attacked model
    method: str
    settings: attacks.AttackSettings
    ekey: str
    record: dict
    scored: bool  # scored in this run (else every chunk came from the cache)
    attack_seconds: float
    examples: tuple | None  # (attacked images, their indices) where this run has them all


@dataclasses.dataclass
class _Run:
    """What one ``build`` shares across its cells: data, models, cache, and the examples made so far
    (``made``: (attacked model, examples key) -> (images, seconds), so one attack serves every row)."""

    ds: Dataset
    cache: Cache
    targets: dict
    target_files: dict
    paper: dict
    per_image: bool
    detector: object
    batch_size: int | None
    progress_bar: object
    echo: object
    made: dict = dataclasses.field(default_factory=dict)

    def cell(self, d: Defence, c: Column, idx: np.ndarray, size: int) -> _Cell:
        """Row ``d`` × column ``c`` on images ``idx``, ``size`` images a chunk (0: at once)."""
        name, method, purifier = attacked_model(d, c)
        s = _attack_settings(d, c, method, purifier)
        seen, ekey, key = _cell_keys(d, c, name, method, s, purifier, self.target_files, self.ds.source,
                                     self.per_image, idx)
        # a chunk's attack seeds continue the whole cell's (run_attack seeds batch i with seed + i), so a
        # chunk that is a multiple of the batch size attacks exactly as the unchunked cell would
        parts = ([(0, idx, ekey, key)] if not size else
                 [(a, idx[a : a + size], f"{ekey}-{a}", digest(key, a, idx[a : a + size].tolist()))
                  for a in range(0, max(len(idx), 1), size)])
        got_parts, recs, spent_parts, scored = [], [], [], False
        for a, part, pekey, pkey in parts:
            rec = self.cache.cell(pkey)
            if rec is not None and self.per_image:  # the table's figures need its examples even when cached
                spent_parts.append(rec.get("attack_seconds", 0.0))
                recs.append(rec)
                continue
            where = f", chunk {a // size + 1} of {len(parts)}" if size else ""
            got, spent = self.examples(d, name, method, s, purifier, seen, part, pekey, a, where)
            got_parts.append(got)
            spent_parts.append(spent)
            if rec is None:
                rec, scored = self.score(d, c, method, s, purifier, got, part, spent, pkey), True
                if size and len(parts) > 1:
                    self.echo(f"  {d.name} × {c.key}{where}: {int(unpack(rec['robust'], c.n).sum())} of "
                              f"{len(part)} robust")
            recs.append(rec)
        examples = None
        if len(got_parts) == len(parts):
            examples = (np.concatenate(got_parts) if len(parts) > 1 else got_parts[0], idx)
        return _Cell(name, method, s, ekey, _merge_parts(recs, c.n), scored, sum(spent_parts), examples)

    def examples(self, d: Defence, name: str, method: str, s, purifier, seen, part, pekey: str, offset: int,
                 where: str):
        """The attacked images of ``part`` and the seconds they took: made in this run for another row,
        cached, or made now (seeds from ``s.seed + offset``; finished batches kept while it runs)."""
        x = self.ds.x_test[part]
        if (name, pekey) in self.made:
            got, spent = self.made[(name, pekey)]
        else:
            got, spent = (x, 0.0) if method == "none" or not len(part) else self.cache.examples(pekey)
        if got is None or len(got) != len(part):
            t0 = time.time()
            lam = f", λ={s.lam:g}" if method == "weighted" else ""
            label = f"{method} on {name} ({len(part)} images{where}{lam})"
            batches = self.cache.batches(pekey)
            attack = functools.partial(attacks.run_attack, method, self.targets[d.target], x, self.ds.y_test[part],
                                       dataclasses.replace(s, seed=s.seed + offset), batch_size=self.batch_size,
                                       defence=purifier, done=batches)
            if self.progress_bar:
                with self.progress_bar(len(part), label) as bar:
                    got = attack(progress=lambda k: bar.update(k - bar.pos))
            else:
                got = attack()
            reused = batches.reused_seconds if batches else 0.0
            spent = time.time() - t0 + reused
            if not self.progress_bar or reused:  # the bar's last line said the seconds, unless a resume adds some
                self.echo(f"{label}: {spent:.0f} s" + (f" (with {reused:.0f} s of an earlier run)" if reused else ""))
            self.cache.put_examples(pekey, got, {"dataset": self.ds.name, "attack": method, "target": name,
                                                 "settings": dataclasses.asdict(s), "defence": seen,
                                                 "seconds": spent, "indices": part.tolist()})
        self.made[(name, pekey)] = got, spent
        return got, spent

    def score(self, d: Defence, c: Column, method: str, s, purifier, got, part, spent: float, pkey: str) -> dict:
        """Score a chunk's attacked images, keep r(x) of each where there is a detector, cache the record."""
        rec = _score_cell(d, c, method, s, purifier, got, part, self.ds.y_test[part], self.per_image, self.paper)
        rec["attack_seconds"], rec["peak_rss_gib"] = round(spent, 2), peak_rss_gib()
        if self.detector is not None and self.per_image and method != "none":
            rec["r_adv"] = {"idx": part.tolist(),
                            "r": [round(float(v), 6) for v in self.detector(got)] if len(part) else []}
        self.cache.put_cell(pkey, rec)
        return rec


def _merge_parts(recs: list[dict], n: int) -> dict:
    """One cell's record from its chunks' records (each robust only on its own images)."""
    if len(recs) == 1:
        return recs[0]
    robust = np.zeros(n, bool)
    for r in recs:
        robust |= unpack(r["robust"], n)
    k = int(robust.sum())
    out = dict(recs[0], accuracy=k / n, ci95=list(wilson(k, n)), robust=pack(robust),
               seconds=round(sum(r["seconds"] for r in recs), 2),
               attack_seconds=round(sum(r.get("attack_seconds", 0.0) for r in recs), 2))
    for f in ("accuracy_fixed_draws", "accuracy_fresh_draws", "attacked"):
        if f in recs[0]:
            out[f] = sum(r.get(f, 0) for r in recs)
    if any("peak_rss_gib" in r for r in recs):
        out["peak_rss_gib"] = max(r.get("peak_rss_gib", 0.0) for r in recs)
    if "r_adv" in recs[0]:
        out["r_adv"] = {"idx": [i for r in recs for i in r["r_adv"]["idx"]],
                        "r": [v for r in recs for v in r["r_adv"]["r"]]}
    return out


def _score_cell(d: Defence, c: Column, method: str, s, purifier, examples, idx, y, per_image: bool,
                paper: dict) -> dict:
    """One cell's record: the defence's answers on the column's examples (images ``idx``)."""
    t0 = time.time()
    if not len(idx):  # nothing left standing for this column to attack
        ok = np.zeros(0, bool)
    else:
        ok = score(d.predict(examples), y, c.key, d.rejected_counts_as_defended)
    extra = {}
    if per_image and d.predict_fresh is not None and len(idx):
        fresh = score(d.predict_fresh(examples), y, c.key, d.rejected_counts_as_defended)
        extra = {"accuracy_fixed_draws": float(ok.sum()) / c.n, "accuracy_fresh_draws": float(fresh.sum()) / c.n}
        ok &= fresh
    robust = np.zeros(c.n, bool)
    robust[idx] = ok
    k = int(robust.sum())
    lo, hi = wilson(k, c.n)
    attack = {"method": method, **({} if method == "none" else dataclasses.asdict(s)), "target": d.target,
              "saw_defence": d.target != "classifier" or purifier is not None}
    if method in attacks.ENSEMBLE_ATTACKS:
        attack["gradient"] = "none (scores only)" if method == "square" else (
            purifier.gradient if purifier is not None else "white box")
    rec = {"defence": d.name, "kind": d.kind, "attack": c.key, "accuracy": k / c.n, "n": c.n, "ci95": [lo, hi],
           "seconds": round(time.time() - t0, 2), "settings": {"defence": d.settings, "attack": attack}, **extra}
    if c.cascade:
        rec["attacked"] = int(len(idx))  # the rest had fallen to an earlier column
    if per_image:
        rec["robust"] = pack(robust)
    if d.paper_row and paper.get(d.paper_row, {}).get(c.key) is not None:
        rec["paper"] = paper[d.paper_row][c.key]
    return rec


def _worst_record(d: Defence, robust: np.ndarray, records: list[dict]) -> dict:
    """The row's worst case: robust only if the image survived every column of the row."""
    n = len(robust)
    k = int(robust.sum())
    lo, hi = wilson(k, n)
    columns = [r["attack"] for r in records if r["defence"] == d.name]
    return {"defence": d.name, "kind": d.kind, "attack": "worst", "accuracy": k / n, "n": n, "ci95": [lo, hi],
            "seconds": 0.0, "robust": pack(robust), "settings": {"defence": d.settings, "over": columns}}


# The AutoAttack-grade part of the adaptive report, run in this order as a cascade (each attack on
# the images still standing): APGD-CE, APGD-T, then Square as the check on gradient masking.
ENSEMBLE = ("apgd-ce", "apgd-t", "square")


def ensemble_for(classes: int) -> tuple[str, ...]:
    """The cascade for a classifier with ``classes`` outputs: the targeted DLR loss needs a fourth-ranked
    logit, so 3 classes get the untargeted DLR (APGD-DLR) in its place and 2 classes neither."""
    if classes >= 4:
        return ENSEMBLE
    return ("apgd-ce", "apgd-dlr", "square") if classes == 3 else ("apgd-ce", "square")


@dataclasses.dataclass(frozen=True)
class Budget:
    """What the ensemble may spend per image: APGD iterations, random restarts and target classes
    (APGD-T), Square's queries, and EOT draws per gradient for a random defence; ``random_restarts``:
    APGD's restarts on a random defence (None: ``restarts``)."""

    apgd_steps: int = names.ADAPTIVE_BUDGET["apgd_steps"]
    restarts: int = names.ADAPTIVE_BUDGET["restarts"]
    targets: int = names.ADAPTIVE_BUDGET["targets"]
    square_queries: int = names.ADAPTIVE_BUDGET["square_queries"]
    eot: int = names.ADAPTIVE_BUDGET["eot"]
    random_restarts: int | None = None

    def for_defence(self, is_random: bool) -> Budget:
        """The budget as spent on a defence: a random one gets ``random_restarts``."""
        if is_random and self.random_restarts:
            return dataclasses.replace(self, restarts=self.random_restarts)
        return self


# the named budgets of ``apudae_tf.evaluate``: a quick look, today's reports' defaults, and AutoAttack's standard
# version (Croce & Hein 2020: APGD-CE 100 iterations, APGD-T 9 targets × 100, Square 5000 queries; for a random
# defence its EOT of 20 draws, and 5 restarts, as its "plus" version runs)
BUDGETS = {"fast": Budget(apgd_steps=20, restarts=1, targets=1, square_queries=200, eot=2),
           "standard": Budget(),
           "autoattack": Budget(apgd_steps=100, restarts=1, targets=9, square_queries=5000, eot=20, random_restarts=5)}


def adaptive_columns(dataset: str, n: int, seed: int = 0, lambdas=LAMBDAS, steps: int | None = None,
                     budget: Budget = Budget(), classes: int = 10, before=names.ADAPTIVE_COLUMNS,
                     cascade_all: bool = False, purifier_chunk: int | None = None, norm: str = "linf") -> list[Column]:
    """The adaptive report's columns, in order: clean, then the attacks ``before`` the ensemble (blind PGD,
    the reference; counter A; counter B at every λ; optionally BPDA+EOT through the purification), all on
    every image, then the AutoAttack-grade cascade: APGD-CE and APGD-T through the defence's gradient, and
    Square on its scores, each on the images every earlier column left standing. ``cascade_all``: every
    column after clean is a cascade column (the worst case is the same; attacks that cost minutes per
    image through an iterative purifier then spend them only on the images still standing).
    ``purifier_chunk``: the images per cached chunk of the attacks that run the purification at every step
    (BPDA+EOT and the ensemble), where it differs from the other columns' (through an iterative purifier
    they can cost an hour per image). ``norm``: the threat model's (the counter attacks are L∞ only)."""
    base = attacks.settings_for("pgd", dataset, steps=steps, seed=seed, norm=norm)
    clean = attacks.settings_for("none", dataset, seed=seed)
    apgd = dict(steps=budget.apgd_steps, restarts=budget.restarts, eot=budget.eot)
    ensemble = {"apgd-ce": apgd, "apgd-dlr": apgd, "apgd-t": {**apgd, "targets": budget.targets},
                "square": {"steps": budget.square_queries, "eot": budget.eot}}  # EOT: on a random defence's scores
    first = []
    for k in before:
        if k == "weighted":
            first += [Column("weighted", "weighted", dataclasses.replace(base, lam=lam), n) for lam in lambdas]
        else:  # PGD's preset budget; BPDA+EOT averages its gradient over the budget's draws
            through = k not in attacks.DAE_ONLY_ATTACKS and k in attacks.DEFENCE_ATTACKS  # bpda-eot, adaptive
            first.append(Column(k, k, dataclasses.replace(base, eot=budget.eot) if through else base, n,
                                chunk=purifier_chunk if through else None))
    first = [dataclasses.replace(c, cascade=cascade_all) for c in first]  # keeps each column's chunk
    return ([Column("clean", "none", clean, n)] + first
            + [Column(k, k, dataclasses.replace(attacks.settings_for(k, dataset, seed=seed, norm=norm), **ensemble[k]), n,
                      cascade=True, chunk=purifier_chunk) for k in ensemble_for(classes)])


def worst_over_lambda(records: list[dict]) -> list[dict]:
    """Counter B's records collapsed to the worst λ per row; the sweep stays in settings."""
    sweeps = {}
    for r in records:
        if r["attack"] == "weighted":
            sweeps.setdefault(r["defence"], []).append(r)
    out = []
    for r in records:
        if r["attack"] != "weighted":
            out.append(r)
        elif r is sweeps[r["defence"]][0]:  # the worst case takes the sweep's place in the table
            rows = sweeps[r["defence"]]
            worst = dict(min(rows, key=lambda q: q["accuracy"]))
            worst["settings"] = {**worst["settings"],
                                 "lambda_sweep": {str(q["settings"]["attack"].get("lam")): q["accuracy"] for q in rows}}
            out.append(worst)
    return out


def classify_fn(model_fn, batch_size=None):
    def predict(x):
        return np.argmax(models.predict_in_batches(model_fn, x, batch_size), 1)

    return predict


def magnet_threshold(dae, x_val: np.ndarray, fpr: float = MAGNET_FPR) -> float:
    """The r(x) above which MagNet's detector refuses an input: the (1 − fpr) quantile on clean
    validation images, so that a fraction ``fpr`` of clean inputs is refused."""
    r = models.reconstruction_errors(dae, x_val)
    return float(np.quantile(r, 1.0 - fpr))


def magnet_fn(dae, model_fn, threshold: float):
    """MagNet (Meng and Chen 2017) with our DAE as both detector and reformer: refuse inputs with
    r(x) > threshold, classify the DAE output of the rest."""

    last = {}  # both MagNet rows score the same examples: compute their labels once

    def predict(x):
        if last.get("x") is not x:
            r = models.reconstruction_errors(dae, x)
            pred = np.argmax(models.predict_in_batches(lambda b: model_fn(models.denoise(dae, b)), x), 1)
            last.update(x=x, pred=np.where(r > threshold, REJECTED, pred))
        return last["pred"]

    return predict


# a random defence scored "with fresh draws" uses seeds ``settings.seed + FRESH_SEEDS + batch``, which no
# attack draws (the attacks' draws are 64-bit seeds) and the default scoring (``settings.seed + batch``) skips
FRESH_SEEDS = 1_000_003


def purifier_row(name: str, paper_row, target: str, purifier, model_fn, settings: dict, kind: str = "purifier"):
    """A row that purifies, then classifies with ``model_fn``; a random purifier also gets its fresh-draws scorer."""
    return Defence(name, paper_row, target, purifier.predictor(model_fn), settings, purifier=purifier, kind=kind,
                   predict_fresh=purifier.predictor(model_fn, fresh=True) if purifier.is_random else None)


def cost_per_image(records: list[dict], defences: list[Defence]) -> dict:
    """Milliseconds per image of each purifying row (purification + classification), averaged over
    its cells. Cells served from the cache keep the time of the run that made them."""
    purifying = {d.name for d in defences if d.kind in ("purifier", "magnet", "defense-gan")}
    out = {}
    for name in purifying:
        cells = [r for r in records if r["defence"] == name and r["n"]]
        if cells:
            out[name] = round(1000 * sum(r["seconds"] for r in cells) / sum(r["n"] for r in cells), 3)
    return dict(sorted(out.items()))


def chosen_variant(tuned: dict) -> str | None:
    """The iterative variant (A–G) with the best validation score in purify_settings.json."""
    scored = {v: (t["val_clean"] + t["val_pgd"]) / 2 for v, t in tuned.get("variants", {}).items()
              if v != "direct" and "val_clean" in t}
    return max(sorted(scored), key=lambda v: scored[v]) if scored else None


# -- the report ------------------------------------------------------------------------------


def markdown(result: dict, notes: list[str], labels: dict | None = None) -> str:
    """table.md: ours, then the paper's value and the difference where the paper has one.
    ``labels`` gives column headers for attack keys (default: the keys)."""
    columns = list(dict.fromkeys(r["attack"] for r in result["records"]))
    rows = list(dict.fromkeys(r["defence"] for r in result["records"]))
    cell = {(r["defence"], r["attack"]): r for r in result["records"]}
    labels = labels or {}
    lines = ["| defence | " + " | ".join(labels.get(a, a) for a in columns) + " |", "|---|" + "---:|" * len(columns)]
    for d in rows:
        out = []
        for a in columns:
            r = cell.get((d, a))
            if r is None:
                out.append("")
                continue
            text = f"**{r['accuracy']:.3f}**"
            if r.get("paper") is not None:
                text += f" ({r['paper']:.3f}, {r['accuracy'] - r['paper']:+.3f})"
            out.append(text)
        lines.append(f"| {d} | " + " | ".join(out) + " |")
    ns = sorted({(r["attack"], r["n"]) for r in result["records"]}, key=lambda t: columns.index(t[0]))
    half = max((r["ci95"][1] - r["ci95"][0]) / 2 for r in result["records"])
    paper = any(r.get("paper") is not None for r in result["records"])
    lines += ["", ("Cells: **ours** (paper, ours − paper). " if paper else "") + "Images per column: "
              + ", ".join(f"{a} {n}" for a, n in ns) + f"; the widest 95% interval is ±{half:.3f}.", ""]
    return "\n".join(lines + notes) + "\n"
