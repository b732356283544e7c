"""The reports' prose, rendered from their JSON (table.md, adaptive.md): what each column's attack was, the
cost, the models, where ours falls below the paper, and what the numbers mean."""

from __future__ import annotations

from apudae_tf.store import shown_path

ADAPTIVE_LABELS = {"clean": "clean", "pgd": "blind PGD", "bpda": "counter A", "weighted": "counter B (worst λ)",
                   "bpda-eot": "BPDA+EOT",
                   "apgd-ce": "+ APGD-CE", "apgd-dlr": "+ APGD-DLR", "apgd-t": "+ APGD-T", "square": "+ Square",
                   "worst": "**worst case**"}


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


def _gan_notes(g: dict, dataset: str) -> list[str]:
    s = g["settings"]
    how = (f"R chosen on {g['n_val']} validation images by `apudae-tf tune {dataset} --defense-gan` (val clean "
           f"{g['val_clean']:.3f}, val blind PGD {g['val_pgd']:.3f}; the sweep is in tune_gan.json)"
           if g["chosen_on_val"] else "settings given on the command line, not chosen on validation")
    return ["", f"**Defense-GAN**: WGAN-GP generator ({g['generator_epochs']} epochs, `apudae-tf train {dataset} --what "
            f"gan`); each input is projected onto its range by {s['restarts']} random starts of z, {s['steps']} steps "
            f"of gradient descent (rate {s['lr']:g}, momentum {s['momentum']:g}) on the mean squared error, keeping "
            f"the best start; {how}. Attacked blind like the other purifying rows."]


def run_cost(result: dict) -> str:
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
        f"{run_cost(result)}; {_models_text(result)}.",
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


def adaptive_notes(result: dict) -> list[str]:
    b = result["budget"]
    s = result["attacks"]["pgd"]
    worst = [r for r in result["records"] if r["attack"] == "worst"]
    lines = [
        f"Made by `{result['command']}` on {_images_text(result)}: {run_cost(result)}; {_models_text(result)}.",
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
    """Write the Markdown report beside a report's JSON (table.json -> table.md, adaptive.json -> adaptive.md,
    adaptive_l2.json -> adaptive_l2.md) from the records alone: computing and rendering are separate, and a
    report can be re-rendered without running anything. Returns the Markdown's path."""
    import json
    import os

    from apudae_tf import store, table

    with open(path) as f:
        result = json.load(f)
    name = os.path.basename(path)
    if name.startswith("adaptive_l2"):
        from apudae_tf import adaptive_l2  # imports this module: loaded here, not at the top

        text = adaptive_l2.markdown(result)
    elif name.startswith("adaptive"):
        text = table.markdown(result, adaptive_notes(result), ADAPTIVE_LABELS)
    else:
        text = table.markdown(result, table_notes(result))
    out = os.path.splitext(path)[0] + ".md"
    store.write_bytes(out, text.encode())
    return out
