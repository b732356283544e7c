"""The reports, as data first (table.json, adaptive.json) and text second (report_text.py renders them): the
paper's table (spec §6) with its baselines, and the attacks that see the defence (spec §5) with the detection
view. Which rows a report has is decided here, for the command line and Python alike."""

from __future__ import annotations

import numpy as np

from apudae_tf import models
from apudae_tf.data import Dataset
from apudae_tf.errors import ApudaeError
from apudae_tf.machine import environment
from apudae_tf.report_text import ADAPTIVE_LABELS, render
from apudae_tf.store import Models, shown_path


# -- the paper's table (spec §6) with its baselines ------------------------------------------


def _folder_json(folder: str, name: str) -> dict:
    """A model folder's optional json file, or {} when the folder has none."""
    import json
    import os

    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _adapted_to(folder: str) -> list[str]:
    """The purifier tokens the folder's classifier was adapted to (``train --what adapted-classifier``), or []."""
    from apudae_tf.store import CLASSIFIER_INFO

    return list((_folder_json(folder, CLASSIFIER_INFO).get("recipe") or {}).get("adapted_to") or [])


def _tuned(folder: str) -> dict:
    from apudae_tf.store import PURIFY_SETTINGS

    return _folder_json(folder, PURIFY_SETTINGS)


def parse_variants(dataset: str, text: str) -> list[str]:
    """``--variants``: comma-separated variants (direct, A–G), each optionally ``:n=K`` (K steps),
    ``chosen`` (the best iterative variant on validation) or ``all`` (the paper's rows)."""
    from apudae_tf import names, profiles

    out = []
    for token in (t.strip() for t in text.split(",")):
        if token == "all":  # the paper's rows: CIFAR-10's table has variant A at three step counts
            out += profiles.get(dataset).all_variants
            continue
        v, sep, k = token.partition(":n=")
        if not token or (v not in names.PURIFY_VARIANTS and token != "chosen") or (sep and not k.isdigit()):
            raise ApudaeError(f"unknown variant {token!r}; use {', '.join(names.PURIFY_VARIANTS)} (optionally "
                              "with :n=STEPS, e.g. A:n=12), chosen or all")
        out.append(token)
    return out


def table_defences(m: Models, ds: Dataset, variants, adv=None, gan=None, paper=None) -> tuple[list, dict, dict, dict]:
    """The rows of the table: (defences, targets, target files, facts for the report).

    ``variants`` are APuDAE variants (``"chosen"`` = the best iterative variant on validation);
    ``adv`` = (adversarially trained classifier, its adv_classifier.json), or None to leave its row out.
    ``paper`` = the paper's rows the defences are compared with (default: its main table); where it
    has an "apudae" row (its best variant), the chosen variant is compared with that row.
    """
    import dataclasses
    import os

    from apudae_tf import profiles, store, table
    from apudae_tf.purify import Purifier, default_settings

    fn = m.classifier_fn()
    targets = {"classifier": fn}
    files = m.digests()
    recipe = (m.stats.training or {}).get("recipe", "paper")
    tag = "" if recipe == "paper" else f" ({recipe} DAE)"
    adapted = _adapted_to(m.folder)
    if adapted:
        tag += " + adapted classifier"
    tuned = _tuned(m.folder)
    chosen = table.chosen_variant(tuned)
    defences = [table.Defence("No defence" + (" (adapted classifier)" if adapted else ""), "no defence", "classifier",
                              table.classify_fn(fn), {}, kind="undefended")]
    facts = {"models": shown_path(m.folder), "dae_recipe": recipe, "chosen_variant": chosen, "tuned": tuned,
             "classifier_adapted_to": adapted, "tag": tag}
    if adv is not None:
        adv_model, adv_info = adv
        adv_fn = models.inference_fn(adv_model)
        targets["adv-classifier"] = adv_fn
        files["adv-classifier"] = store.file_digest(os.path.join(m.folder, store.ADV_CLASSIFIER))
        facts["adv_classifier"] = adv_info
        defences.append(table.Defence(f"Adversarial training ({adv_info.get('short_name', 'Madry PGD')})",
                                      "adversarial training", "adv-classifier",
                                      table.classify_fn(adv_fn), {"training": adv_info.get("attack")},
                                      kind="adversarial training"))
    threshold = table.magnet_threshold(m.dae, ds.x_val)
    facts["magnet_threshold"] = threshold
    magnet = table.magnet_fn(m.dae, fn, threshold)
    # the DAE's digest is part of every DAE row's settings, so a retrained DAE misses the cache
    mset = {"threshold": threshold, "fpr_on_clean_val": table.MAGNET_FPR, "reformer": "DAE output", "dae": files["dae"]}
    defences += [
        table.Defence(f"MagNet{tag}, refused = defended", "magnet", "classifier", magnet, mset, True, kind="magnet"),
        table.Defence(f"MagNet{tag}, refused = error", None, "classifier", magnet, mset, False, kind="magnet"),
    ]
    paper = profiles.get(ds.name).paper if paper is None else paper
    for token in dict.fromkeys(chosen if v == "chosen" else v for v in variants):
        if token is None:
            continue
        v, _, n_text = token.partition(":n=")
        s = default_settings(ds.name, v, m.folder)
        if n_text:
            s = dataclasses.replace(s, n=int(n_text))
        p = Purifier(m.dae, m.stats, v, s, checkpoint=profiles.get(ds.name).checkpoint_steps)
        label = f"{v} (n={n_text})" if n_text else v
        row = f"apudae {v}" + (f" n={n_text}" if n_text else "")
        if v == "direct":
            name, row = f"APuDAE direct{tag}", "apudae direct"
        elif v == chosen and "apudae" in paper:
            name, row = f"APuDAE {label}{tag} (chosen on val)", "apudae"
        else:
            name = f"APuDAE {label}{tag}" + (" (chosen on val)" if token == chosen else "")
        defences.append(table.purifier_row(name, row if row in paper else None, "classifier", p, fn,
                                           {"variant": v, **dataclasses.asdict(s), "dae": files["dae"]}))
    if gan is not None:
        defences.append(_gan_defence(m, gan, fn, files))
    return defences, targets, files, facts


def _gan_defence(m: Models, gan, fn, files: dict, attacker=None):
    """The Defense-GAN row: G(z*) classified by the same classifier. Without ``attacker`` it is
    attacked blind like every purifying row; the adaptive report passes the DefenseGan its BPDA+EOT
    runs forward (the same search, possibly with fewer restarts: see ``adaptive_report``)."""
    import dataclasses
    import os

    from apudae_tf import defensegan, store, table

    files["generator"] = store.file_digest(os.path.join(m.folder, defensegan.GAN_FILE))
    gs = gan.settings
    settings = {**dataclasses.asdict(gs), "generator": files["generator"]}
    if attacker is not None:
        settings["attacker_forward"] = dataclasses.asdict(attacker.settings)
    return table.Defence(f"Defense-GAN (L={gs.restarts}, R={gs.steps})", "defense-gan", "classifier",
                         gan.predictor(fn), settings, purifier=attacker, kind="defense-gan",
                         predict_fresh=gan.predictor(fn, fresh=True) if attacker is not None else None)


def table_figures(m: Models, ds: Dataset, variant: str, x_adv: np.ndarray, out_dir: str, threshold: float,
                  n: int = 1000, attack: str = "PGD") -> dict:
    """fig3_r_hist.png (r(x) of clean and ``attack`` inputs, before and after purification with
    ``variant``) and examples.png (clean / attacked / purified images with the classifier's labels)."""
    import os

    from apudae_tf import plots
    from apudae_tf.purify import Purifier, default_settings

    n = min(n, len(x_adv))
    x, y, x_adv = ds.x_test[:n], ds.y_test[:n], x_adv[:n]
    p = Purifier(m.dae, m.stats, variant, default_settings(ds.name, variant, m.folder))
    x_pur, adv_pur = p.purify_array(x), p.purify_array(x_adv)

    def r(images):
        return models.reconstruction_errors(m.dae, images)

    hist = os.path.join(out_dir, "fig3_r_hist.png")
    plots.r_histograms(hist, [
        (f"before purification ({len(x)} test images)", {"clean": r(x), attack: r(x_adv)}),
        (f"after purification (variant {variant})", {"clean": r(x_pur), attack: r(adv_pur)}),
    ], m.stats.mu, threshold)
    fn = m.classifier_fn()

    names = class_names(ds)

    def labels(images):
        pred = np.argmax(models.predict_in_batches(fn, images), 1)
        return [(names[p] if names else f"{p}") + ("" if p == t else " ✗") for p, t in zip(pred, y[: len(images)])]

    k = 10
    grid = os.path.join(out_dir, "examples.png")
    plots.image_grid(grid, [("clean", x[:k], labels(x[:k])), (attack, x_adv[:k], labels(x_adv[:k])),
                            (f"purified ({variant})", adv_pur[:k], labels(adv_pur[:k]))])
    return {"histograms": hist, "examples": grid, "figure_images": int(len(x)), "attack": attack, "variant": variant}


SYNSET_WORDS = "synset_words.txt"  # ImageNet's class k is its k-th line: "n01440764 tench, Tinca tinca"


def class_names(ds: Dataset, width: int = 14) -> list[str] | None:
    """Short class names for figures, where the dataset's folder has them (ImageNet's synset_words.txt: the
    first name of each class), else None (figures then show class indices)."""
    import os

    path = os.path.join(ds.source, SYNSET_WORDS) if isinstance(ds.source, str) else ""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return [line.strip().partition(" ")[2].split(",")[0][:width] for line in f if line.strip()]


def correctly_classified(ds: Dataset, classifier_fn, n: int, batch_size: int = 100) -> tuple[Dataset, dict]:
    """The first ``n`` test images restricted to those ``classifier_fn`` gets right (the paper's ImageNet
    protocol, spec §6): a Dataset whose test split is that subset, and the facts a report records. The
    subset's digest joins the data source, so cached cells of another subset are never reused."""
    import dataclasses
    import hashlib

    # take: a view of an image folder (decoded a batch at a time by predict_in_batches), a copy of an array
    logits = models.predict_in_batches(classifier_fn, ds.x_test.take(np.arange(n), axis=0), batch_size)
    keep = np.flatnonzero(np.argmax(logits, -1) == ds.y_test[:n]) if n else np.zeros(0, np.int64)
    if not len(keep):
        raise ApudaeError(f"the classifier gets none of the first {n} test images right: nothing to attack")
    x_kept = ds.x_test.take(keep, axis=0)
    digest = hashlib.sha256(keep.astype(np.int64).tobytes()).hexdigest()[:16]
    kept = dataclasses.replace(ds, x_test=x_kept, y_test=ds.y_test[keep],
                               source=f"{ds.source} | correctly classified of the first {n}: {digest}")
    return kept, {"rule": "classified correctly by the classifier", "first": int(n), "kept": int(len(keep)),
                  "indices": keep.tolist()}


def table_report(m: Models, ds: Dataset, n: int, variants, out_dir: str, *, adv=None, seed: int = 0,
                 cw_l2_n: int | None = None, figures: bool = True, command: str = "", echo=None,
                 progress_bar=None, steps: int | None = None, gan=None, test_images: dict | None = None) -> dict:
    """Build the table, write out_dir/table.json, table.md and the figures; returns the result.
    ``test_images``: the facts of ``correctly_classified`` when ``ds`` is that subset."""
    import os

    from apudae_tf import profiles, store, table

    defences, targets, files, facts = table_defences(m, ds, variants, adv, gan)
    columns = table.table_columns(ds.name, n, seed, table.CW_L2_N if cw_l2_n is None else cw_l2_n, steps)
    result, examples = table.build(ds, defences, targets, files, columns, out_dir, echo=echo,
                                   progress_bar=progress_bar)
    result.update({"command": command, "environment": environment(), "models": shown_path(m.folder),
                   "dae_recipe": facts["dae_recipe"],
                   "classifier_adapted_to": facts["classifier_adapted_to"],
                   "chosen_variant": facts["chosen_variant"], "magnet_threshold": facts["magnet_threshold"],
                   "adv_classifier": facts.get("adv_classifier"),
                   "purify_settings_chosen_on": facts["tuned"].get("chosen_on"),
                   "tuned": facts["tuned"].get("variants", {}),
                   "cost_ms_per_image": table.cost_per_image(result["records"], defences)})
    if test_images:
        result["test_images"] = test_images
    if gan is not None:
        result["defense_gan"] = _gan_facts(m.folder, gan)
    shown = profiles.get(ds.name).figure_column  # the column whose blind examples the figures show
    if figures and ("classifier", shown, 0.0) in examples:
        variant = facts["chosen_variant"] or "direct"
        result["figures"] = table_figures(m, ds, variant, examples[("classifier", shown, 0.0)][0], out_dir,
                                          facts["magnet_threshold"], attack=shown.upper())
    store.write_json(os.path.join(out_dir, "table.json"), result)
    render(os.path.join(out_dir, "table.json"))
    return result

def _gan_facts(folder: str, gan) -> dict:
    """How the Defense-GAN row's generator was trained and whether its search was chosen on validation."""
    import dataclasses
    import json
    import os

    from apudae_tf import defensegan

    path = os.path.join(folder, defensegan.GAN_INFO)
    info = {}
    if os.path.isfile(path):
        with open(path) as f:
            info = json.load(f)
    search = info.get("search") or {}
    used = dataclasses.asdict(gan.settings)
    chosen = search.get("settings") or {}
    return {"settings": used, "generator_epochs": info.get("epochs"),
            "chosen_on_val": bool(chosen) and all(chosen.get(k) == used[k] for k in ("restarts", "steps", "lr")),
            "val_clean": search.get("val_clean"), "val_pgd": search.get("val_pgd"), "n_val": search.get("n_val")}

# -- attacks that see the defence (spec §5) and the detection view ---------------------------

# Defense-GAN's gradient attacks run its search forward at every step; with L = 10 restarts that is
# ~100 full searches per image. The attacker may run the same search with fewer restarts forward
# (each call then draws fresh ones, the EOT over the defence's randomness); the score is always the
# full defence's.
GAN_ATTACK_RESTARTS = 1
# the adaptive report's column headers


def adaptive_report(m: Models, ds: Dataset, n: int, out_dir: str, *, adv=None, seed: int = 0, budget=None,
                    lambdas=None, command: str = "", echo=None, progress_bar=None, steps: int | None = None,
                    gan=None, gan_attack_restarts: int = GAN_ATTACK_RESTARTS, variants=("direct", "chosen"),
                    test_images: dict | None = None, cascade: bool | None = None, chunk: int | None = None) -> dict:
    """adaptive.json / adaptive.md and the detection view (roc.json / roc.png, r(x) as a detector).

    Rows: adversarial training (white box), the APuDAE ``variants`` (default: direct and the variant
    chosen on validation), the chosen variant in front of the adversarially trained classifier, and,
    with ``gan``, Defense-GAN. Columns: clean, blind PGD, counter A, counter B over λ, then the
    AutoAttack-grade cascade (APGD-CE, APGD-T, Square) through each row's own gradient, and the
    per-image worst case over all of them, the number to quote for the defence. ``cascade`` (default: the
    profile's ``adaptive_cascade``): every column after clean attacks only the images still standing.
    ``chunk`` (default: the profile's ``adaptive_chunk``, and ``adaptive_purifier_chunk`` for the attacks that
    run the purification at every step): cells are attacked, scored and cached that many images at a time."""
    import dataclasses
    import os

    from apudae_tf import attacks, defensegan, plots, profiles, stats, store, table

    budget = budget or table.Budget()
    paper = profiles.get(ds.name).paper_adaptive
    defences, targets, files, facts = table_defences(m, ds, list(variants), adv, paper=paper)
    defences = [d for d in defences if d.kind in ("adversarial training", "purifier")]
    chosen = next((d for d in defences if d.kind == "purifier" and d.settings["variant"] == facts["chosen_variant"]),
                  None)
    if adv is not None and chosen is not None:
        # does purification add anything to adversarial training once the attacker sees both?
        defences.append(table.purifier_row(
            f"APuDAE {facts['chosen_variant']}{facts['tag']} + adversarially trained classifier", None,
            "adv-classifier", chosen.purifier, targets["adv-classifier"], {**chosen.settings, "classifier": "adv"}))
    if gan is not None:
        attacker = defensegan.DefenseGan(gan.generator, dataclasses.replace(gan.settings, restarts=gan_attack_restarts))
        defences.append(_gan_defence(m, gan, m.classifier_fn(), files, attacker))
    lambdas = table.LAMBDAS if lambdas is None else tuple(lambdas)
    profile = profiles.get(ds.name)
    cascade = profile.adaptive_cascade if cascade is None else cascade
    purifier_chunk = (profile.adaptive_purifier_chunk or None) if chunk is None else None
    chunk = profile.adaptive_chunk if chunk is None else chunk
    columns = table.adaptive_columns(ds.name, n, seed, lambdas, steps, budget, classes=ds.num_classes,
                                     before=profile.adaptive_attacks, cascade_all=cascade,
                                     purifier_chunk=purifier_chunk)

    # detection: r(x) of each attack's examples (kept in the records) against r(x) of the same clean images
    def r(images):
        return models.reconstruction_errors(m.dae, images)

    result, _ = table.build(ds, defences, targets, files, columns, out_dir, echo=echo, progress_bar=progress_bar,
                            paper=paper, per_image=True, chunk=chunk, detector=r)
    scores = {(q["defence"], q["attack"], q["settings"].get("attack", {}).get("lam")): q.pop("r_adv", None)
              for q in result["records"]}
    result["records"] = table.worst_over_lambda(result["records"])
    result.update({"command": command, "environment": environment(), "models": shown_path(m.folder),
                   "dae_recipe": facts["dae_recipe"],
                   "classifier_adapted_to": facts["classifier_adapted_to"],
                   "chosen_variant": facts["chosen_variant"], "budget": dataclasses.asdict(budget),
                   "lambdas": list(lambdas), "labels": ADAPTIVE_LABELS, "cascade_all": bool(cascade),
                   "chunk": int(chunk), "purifier_chunk": int(purifier_chunk or chunk),
                   "seconds_per_image": _seconds_per_image(result["attack_seconds"])})
    if test_images:
        result["test_images"] = test_images
    if gan is not None:
        result["defense_gan_attacker_restarts"] = gan_attack_restarts

    r_clean = r(ds.x_test[:n])
    curves = {}
    for d in defences:
        if d.kind != "purifier" or d.target != "classifier":
            continue
        for c in columns:
            if c.method == "none" or not table.applies(d, c):
                continue
            _, _, purifier = table.attacked_model(d, c)
            got = scores.get((d.name, c.key, c.settings.lam))
            if not got or not got["idx"]:
                continue
            if c.key == "weighted":
                label = f"counter B, λ={c.settings.lam:g}"
            elif purifier is None:
                label = f"{c.key} (blind)"
            elif c.method in attacks.DAE_ONLY_ATTACKS:
                label = "counter A (bpda)"  # made once per DAE, whatever the variant
            else:
                label = f"{c.key} on {purifier.variant}"
            if c.cascade:  # each row attacks its own survivors
                k = len(got["idx"])
                label += f" [{d.name}: {k} image{'s' if k != 1 else ''} still standing]"
            curves[label] = stats.roc(r_clean[got["idx"]], np.asarray(got["r"]))
    store.write_json(os.path.join(out_dir, "roc.json"), {"dataset": ds.name, "detector": "r(x) > t",
                                                          "clean_n": int(n), "curves": curves})
    plots.roc_curves(os.path.join(out_dir, "roc.png"), curves)
    result["detection_auc"] = {k: v["auc"] for k, v in curves.items()}
    store.write_json(os.path.join(out_dir, "adaptive.json"), result)
    render(os.path.join(out_dir, "adaptive.json"))
    return result


def _seconds_per_image(attack_seconds: list[dict]) -> dict:
    """Attack time per attacked image, by target and attack (cells from the cache keep the time of the run
    that made them)."""
    out = {}
    for a in attack_seconds:
        if a["n"] and a["attack"] != "none":
            out.setdefault(a["target"], {})[a["column"] if a["column"] != "weighted" else "weighted (each λ)"] = \
                round(a["seconds"] / a["n"], 4)
    return out
