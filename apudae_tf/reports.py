"""Measurements of trained models and defences, as data first, text second."""

from __future__ import annotations

import numpy as np

from apudae_tf import models
from apudae_tf.cache import digest
from apudae_tf.data import Dataset
from apudae_tf.errors import ApudaeError
from apudae_tf.machine import environment
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


# -- choosing purification settings on the validation split --------------------------------

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


def _model_digests(m: Models) -> dict:
    """The digests of the classifier's and the DAE's files: what keys the caches to these models."""
    import os

    from apudae_tf import store

    return {"classifier": store.file_digest(m.classifier_file or os.path.join(m.folder, store.CLASSIFIER)),
            "dae": store.file_digest(os.path.join(m.folder, store.DAE))}


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
    files = _model_digests(m).values()
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
    files = _model_digests(m)
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


def table_report(m: Models, ds: Dataset, n: int, variants, out_dir: str, adv=None, seed: int = 0,
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


def _column_text(key: str, u: dict) -> str:
    """What a table column's attack was, from its recorded settings."""
    from apudae_tf import attacks

    m, eps = u["method"], f"ε = {u['eps']:g}"
    if m == "random":
        return f"{key} = uniform noise in [−ε, ε] ({eps})"
    if m == "fgsm":
        return f"{key} = FGSM ({eps})"
    if m == "r-fgsm":
        return f"{key} = R-FGSM, a random step of ε/2 then FGSM with ε/2 ({eps})"
    iterative = (f"{u['steps']} steps of {u['step']:g} "
                 + ("from a random start" if u.get("rand_init") else "from the clean image"))
    if m == "pgd":
        return f"{key} = {'PGD (Madry)' if u.get('rand_init') else 'BIM'}, {iterative} ({eps})"
    if m == "cw":
        return f"{key} = PGD on the Carlini–Wagner margin loss (κ = {attacks.CW_KAPPA:g}), {iterative} ({eps})"
    if m == "cw-l2":
        return (f"{key} = cleverhans' Carlini–Wagner L2, {attacks.CW_L2_SEARCH} binary-search steps × {u['steps']} "
                "Adam steps, no ε (L2-minimal)")
    return f"{key} = {m} ({eps})"


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


def _gan_notes(g: dict, dataset: str) -> list[str]:
    s = g["settings"]
    how = (f"R chosen on {g['n_val']} validation images by `apudae-tf tune {dataset} --defense-gan` (val clean "
           f"{g['val_clean']:.3f}, val blind PGD {g['val_pgd']:.3f}; the sweep is in tune_gan.json)"
           if g["chosen_on_val"] else "settings given on the command line, not chosen on validation")
    return ["", f"**Defense-GAN**: WGAN-GP generator ({g['generator_epochs']} epochs, `apudae-tf train {dataset} --what "
            f"gan`); each input is projected onto its range by {s['restarts']} random starts of z, {s['steps']} steps "
            f"of gradient descent (rate {s['lr']:g}, momentum {s['momentum']:g}) on the mean squared error, keeping "
            f"the best start; {how}. Attacked blind like the other purifying rows."]


def _cost(result: dict) -> str:
    """What a report cost, honestly when part of it came from the cache of earlier runs."""
    total, run = result["compute_seconds"] / 60, result["seconds"] / 60
    env = result.get("environment")  # reports made before it was recorded ran on this project's 2 cores
    where = ("2 CPU cores" if env is None else f"{env['gpus']} GPU(s)" if env.get("gpus")
             else f"{env['cpu_cores']} CPU cores ({env['processor']}; TensorFlow {env['tensorflow']})")
    peak = max(result.get("peak_rss_gib") or 0.0, (env or {}).get("peak_rss_gib") or 0.0)
    if peak:
        where += f", peak memory {peak:.1f} GiB"
    if run >= total:
        return f"{run:.1f} min on {where}"
    return (f"{total:.1f} min of attacks and defences, summed over the runs that filled its cache (the last run: "
            f"{run:.1f} min), on {where}")


def _optimizer_text(training: dict) -> str:
    if training.get("optimizer") == "SGD one-cycle":
        return (f"SGD with a one-cycle rate peaking at {training['peak_lr']:g} (momentum {training['momentum']:g}, "
                f"weight decay {training['weight_decay']:g}, crop + flip)")
    return f"Adam {training['learning_rate']:g}"


def _below_paper(result: dict) -> list[str]:
    """The APuDAE cells under the paper's number, said in the report rather than left to the eye."""
    short = [r for r in result["records"] if r.get("kind") == "purifier" and r.get("paper") is not None
             and r["accuracy"] < r["paper"]]
    if not short:
        return []
    cells = "; ".join(f"{r['defence']} × {r['attack']}: {r['accuracy']:.3f} vs {r['paper']:.3f}"
                      + (" (the paper's value is inside our 95% interval)" if r.get("ci95") and r["ci95"][1] >= r["paper"]
                         else "") for r in short)
    return ["", f"**Below the paper**: {cells}. What was tried to close these gaps (validation only; attacks are "
                "never weakened): README, the section on this table, and the val_attacks*.json diagnostics here."]


def _models_text(result: dict) -> str:
    text = f"models from `{shown_path(result['models'])}` (DAE recipe: {result['dae_recipe']})"
    adapted = result.get("classifier_adapted_to")
    if adapted:
        text += (f"; its classifier was fine-tuned on the purifier's outputs ({', '.join(adapted)}) of clean training "
                 "images (`apudae-tf train ... --what adapted-classifier`), and every attack is made on that "
                 "classifier")
    return text


def _images_text(result: dict) -> str:
    """Which test images a report scored."""
    t = result.get("test_images")
    if t:
        return (f"the {t['kept']} of the first {t['first']} {result['dataset']} test images that the classifier "
                "gets right (`--correct-only`, the paper's protocol for ImageNet)")
    return f"the first {result['n']} {result['dataset']} test images"


def table_notes(result: dict) -> list[str]:
    """The prose under table.md's table: how every number was made."""
    from apudae_tf import table

    used = result["attacks"]
    lines = [
        f"Made by `{result['command']}` on {_images_text(result)}; "
        f"{_cost(result)}; {_models_text(result)}.",
        "",
        "**Attacks**: " + "; ".join(_column_text(k, used[k]) for k in dict.fromkeys(r["attack"] for r in result["records"])
                                    if k in used and used[k]["method"] != "none") + ".",
        "Every purifying row (MagNet, APuDAE) is attacked **blind**: the examples are white-box attacks on the "
        "undefended classifier, which then classifies the purified images (the paper's protocol). The adversarial-"
        "training row is attacked white-box on its own model. Attacks that see the purifier: the adaptive report.",
        "",
        f"**MagNet**: our DAE as both detector and reformer. An input with r(x) > {result['magnet_threshold']:.3f} "
        f"(the {100 * (1 - table.MAGNET_FPR):.0f}th percentile of r on clean validation images: "
        f"{100 * table.MAGNET_FPR:.0f}% false alarms) is refused; others are classified after the DAE. MagNet counts "
        "a refused adversarial input as defended (the paper's MagNet column); the row 'refused = error' counts it "
        "as a miss. A refused clean image is always a miss.",
    ]
    lines += _below_paper(result)
    if result.get("adv_classifier"):
        a = result["adv_classifier"]
        at = a["attack"]
        ramp = f", ε ramped up from 0 over the first {a['eps_ramp_epochs']} epochs" if a.get("eps_ramp_epochs") else ""
        history = a.get("history") or []
        last = ", ".join(f"{k} {v:.3f}" for k, v in history[-1].items() if k != "epoch") if history else ""
        lines += ["", f"**Adversarial training**: {a['method']}, the classifier's architecture: {at['steps']} "
                  f"step(s) of {at['step']:g} (ε {at['eps']:g}, random start) on every training batch{ramp}; "
                  f"{a['training']['epochs']} epochs, {_optimizer_text(a['training'])}, "
                  + (f"fine-tuned from the folder's `{a['init']}` " if a["init"] != "random" else "from random weights ")
                  + f"(`apudae-tf train {result['dataset']} --what adv-classifier --epochs {a['training']['epochs']}`)."
                  + (f" After the last epoch, on 1000 validation images: {last}." if last else "")]
    cost = result.get("cost_ms_per_image") or {}
    if cost:
        lines += ["", "**Cost per image** (purification and classification, mean over the row's cells, 2 CPU cores; "
                  "cells from the cache keep the time of the run that made them): "
                  + "; ".join(f"{k} {v:.2f} ms" for k, v in cost.items()) + "."]
        kind = {r["defence"]: r.get("kind") for r in result["records"]}
        gan = [v for k, v in cost.items() if kind.get(k) == "defense-gan"]
        if gan:
            lines[-1] += " Defense-GAN / APuDAE: " + ", ".join(
                f"{gan[0] / v:.0f}× {k}" for k, v in cost.items() if kind.get(k) == "purifier" and v > 0) + "."
    if result.get("defense_gan"):
        lines += _gan_notes(result["defense_gan"], result["dataset"])
    tuned = result.get("tuned") or {}
    if tuned:
        lines += ["", f"**Purification settings** were chosen on the validation split "
                  f"(chosen on: {result.get('purify_settings_chosen_on')}), never on test, by "
                  f"`apudae-tf tune {result['dataset']}` (best mean of clean and blind-PGD accuracy; the full sweep "
                  "is in tune.json). The chosen variant is the iterative one with the best validation score.", "",
                  "| variant | n | α | ε_r | val clean | val PGD |", "|---|---:|---:|---:|---:|---:|"]
        for v, t in tuned.items():
            st = t["settings"]
            lines.append(f"| {v} | {st['n']} | {st['alpha']:g} | {st['eps_r']:g} | {t['val_clean']:.3f} | "
                         f"{t['val_pgd']:.3f} |")
    if result.get("figures"):
        f = result["figures"]
        lines += ["", f"Figures (first {f['figure_images']} test images, variant "
                  f"{f.get('variant') or result['chosen_variant']}): "
                  f"![r(x) histograms](fig3_r_hist.png) ![clean, {f.get('attack', 'PGD')} and purified images](examples.png)"]
    return lines


# -- attacks that see the defence (spec §5) and the detection view ---------------------------

# Defense-GAN's gradient attacks run its search forward at every step; with L = 10 restarts that is
# ~100 full searches per image. The attacker may run the same search with fewer restarts forward
# (each call then draws fresh ones, the EOT over the defence's randomness); the score is always the
# full defence's.
GAN_ATTACK_RESTARTS = 1
# the adaptive report's column headers
ADAPTIVE_LABELS = {"clean": "clean", "pgd": "blind PGD", "bpda": "counter A", "weighted": "counter B (worst λ)",
                   "bpda-eot": "BPDA+EOT",
                   "apgd-ce": "+ APGD-CE", "apgd-dlr": "+ APGD-DLR", "apgd-t": "+ APGD-T", "square": "+ Square",
                   "worst": "**worst case**"}


def adaptive_report(m: Models, ds: Dataset, n: int, out_dir: str, adv=None, seed: int = 0, budget=None,
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


def adaptive_notes(result: dict) -> list[str]:
    b = result["budget"]
    s = result["attacks"]["pgd"]
    worst = [r for r in result["records"] if r["attack"] == "worst"]
    lines = [
        f"Made by `{result['command']}` on {_images_text(result)}: {_cost(result)}; {_models_text(result)}.",
        "",
        "**The number to quote for each defence is its worst case**: an image counts as robust only if the "
        "defence classifies it correctly clean and after every attack of its row: "
        + "; ".join(f"{r['defence']} **{r['accuracy']:.3f}** [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]" for r in worst)
        + ". Every adversarial image is scored through the real defence (`purify`, then the classifier), never "
        "through the differentiable function the attacks use.",
        "",
        f"**Columns.** ε = {s['eps']:g} throughout. **blind PGD**: {s['steps']} steps of {s['step']:g} from a random "
        "start, white box on the row's classifier alone (the paper's protocol; for adversarial training it is the "
        "white-box attack). **counter A** (eq. 14): the same PGD through the DAE, L(f(D(x)), y). **counter B** "
        "(eq. 15): L(f(x), y) − λ·r(x), the worst λ of " + ", ".join(f"{v:g}" for v in result["lambdas"])
        + " (the sweep is in adaptive.json). Then the AutoAttack-grade ensemble (Croce & Hein 2020), a **cascade**: "
        "each attack runs only on the images that every column to its left left standing, so its cell is the "
        "row's robust accuracy so far: "
        f"**APGD-CE** ({b['apgd_steps']} iterations, {b['restarts']} random start(s), step 2ε halved at the "
        "checkpoints, momentum 0.75), **APGD-T** (the targeted DLR loss, once per target among the "
        f"{b['targets']} classes ranked highest after the true one, {b['apgd_steps']} iterations each), "
        f"**Square** (Andriushchenko et al. 2020: {b['square_queries']} queries, p_init 0.8, margin loss; scores "
        "only, no gradient: the check on gradient masking).",
        "",
        "**What each attack sees.** Adversarial training: white box on its model. An APuDAE row: APGD differentiates "
        "the purification itself (`Purifier.function`: the exact gradient through every step of the loop and the "
        f"DAE gradients inside it, second-order tapes), averaged over {b['eot']} draws of the defence's randomness "
        "(EOT) for the random variants F and G; a deterministic variant needs one draw, which is exact. Square "
        "queries the purifier's forward (scores only); on a random defence each score is the margin averaged over "
        f"the same {b['eot']} draws. A random defence is scored twice, with the draws `apudae-tf purify` uses and "
        "with fresh ones no attack has seen; an image is robust only if it is right both times (both accuracies are "
        "in adaptive.json). The row 'adversarially trained classifier' puts the chosen purifier in front of the "
        "adversarially trained classifier and attacks the whole pipeline.",
    ]
    if "bpda-eot" in result["attacks"]:
        lines += ["", f"**BPDA+EOT** (Athalye et al. 2018): PGD, {s['steps']} steps of {s['step']:g}, whose gradient is "
                  "the classifier's at the real purifier's output (the purification forward, the identity backward), "
                  f"averaged over {result['attacks']['bpda-eot'].get('eot', 1)} draws of a random defence; it runs "
                  "before the exact cascade because a gradient costs one purification instead of its second-order "
                  "unrolling."]
    if result.get("cascade_all"):
        lines += ["", "**Every column after clean is a cascade here** (`--cascade`; the dataset profile's default "
                  "where an attack through the purifier costs minutes per image): each attack runs only on the "
                  "images that every column to its left left standing, so a cell is the row's robust accuracy so "
                  "far, not that attack's alone; the worst case is the same as if every attack had run on every "
                  "image. The first attack's cell is that attack's alone (on the images the defence gets right "
                  "clean); the paper's numbers beside later cells are each attack's alone, so ours are lower "
                  "than such an attack alone would give."]
    if result.get("chunk"):
        each = result.get("purifier_chunk", result["chunk"])
        lines += ["", f"Cells were attacked, scored and cached {result['chunk']} images at a time"
                  + (f" ({each} at a time in the attacks that run the purification at every step)"
                     if each != result["chunk"] else "")
                  + ", so an interrupted run resumes from its last finished chunk."]
    if "defense_gan_attacker_restarts" in result:
        lines += ["", f"**Defense-GAN** has no counter A or B (they target a DAE). Its gradient attacks use BPDA "
                  "(the latent search forward, the identity backward, Athalye et al. 2018) with EOT: each attack step "
                  f"runs the search with {result['defense_gan_attacker_restarts']} fresh random restart(s) instead "
                  "of L, a cheaper forward for the attacker, and Square queries that same forward (its scores "
                  "averaged over the EOT draws); the score is always the full defence's."]
    per = result.get("seconds_per_image") or {}
    if per:
        lines += ["", "**Attack time per attacked image** (seconds, 2 CPU cores; cells from the cache keep the time "
                  "of the run that made them): " + "; ".join(
                      f"{t}: " + ", ".join(f"{k} {v:.3g}" for k, v in cols.items()) for t, cols in per.items()) + "."]
    lines += [
        "",
        "**Detection** (roc.png, roc.json): the AUC of r(x) as a detector of each attack's examples against the "
        "same clean images: " + ", ".join(f"{k} {v:.3f}" for k, v in result.get("detection_auc", {}).items()) + ".",
    ]
    return lines


def render(path: str) -> str:
    """Write the Markdown report beside a report's JSON (table.json -> table.md, adaptive.json -> adaptive.md)
    from the records alone: computing and rendering are separate, and a report can be re-rendered without
    running anything. Returns the Markdown's path."""
    import json
    import os

    from apudae_tf import store, table

    with open(path) as f:
        result = json.load(f)
    adaptive = os.path.basename(path).startswith("adaptive")
    text = (table.markdown(result, adaptive_notes(result), ADAPTIVE_LABELS) if adaptive
            else table.markdown(result, table_notes(result)))
    out = os.path.splitext(path)[0] + ".md"
    store.write_bytes(out, text.encode())
    return out
