"""External cross-check of our APGD (issue 19): IBM ART's AutoProjectedGradientDescent on the same images.

  pip install adversarial-robustness-toolbox==1.20.1
  python scripts/cross_check_apgd.py [--n-adv 500] [--n-purifier 200] [--variant D]
  python scripts/cross_check_apgd.py --report-only   # once results/mnist/adaptive.json is (re)made

Two targets, ε = 0.3, one random start, initial step 2ε (AutoAttack's), APGD-CE and APGD-DLR:
- the shipped adversarially trained MNIST classifier, white box (first N_ADV test images, 100 iterations);
- classifier ∘ purifier VARIANT with the shipped models (first N_PURIFIER test images, 50 iterations), the
  gradient of both libraries' attacks being the exact one through the project's own differentiable
  purification (``Purifier.function``); every adversarial image is scored through the real purifier.
Ours runs the same budgets (``apudae_tf.attacks``), and the purifier's worst case from the committed
adaptive report on the same images is set beside them: it must not be above ART's CE ∪ DLR.
Writes results/mnist/cross_check_apgd.json.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import tensorflow as tf
from art.attacks.evasion import AutoProjectedGradientDescent
from art.estimators.classification import TensorFlowV2Classifier

from apudae_tf import attacks, data, models, purify, stats, store

ap = argparse.ArgumentParser()
ap.add_argument("--n-adv", type=int, default=500)
ap.add_argument("--n-purifier", type=int, default=200)
ap.add_argument("--variant", default="D")
ap.add_argument("--report", default="results/mnist/adaptive.json", help="our adaptive report on the same models")
ap.add_argument("--out", default="results/mnist/cross_check_apgd.json")
ap.add_argument("--report-only", action="store_true",
                help="attach --report's worst case to an existing --out without attacking again (the report was "
                     "still running when the attacks ran)")
args = ap.parse_args()

EPS = 0.3
ds = data.load_dataset("mnist")
folder = store.default_model_dir("mnist")
m = store.load_models(folder, ds.image_shape)
adv_model, _ = store.load_adv_classifier(folder)
adv_fn = models.inference_fn(adv_model)


def as_art(model_fn):
    """ART calls ``model(x, training=...)`` under its own eager tape: a compiled function of any batch size."""
    compiled = tf.function(lambda x: model_fn(x), input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32)])
    return TensorFlowV2Classifier(lambda x, training=False: compiled(tf.cast(x, tf.float32)), nb_classes=10,
                                  input_shape=(28, 28, 1), clip_values=(0.0, 1.0),
                                  loss_object=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def art_apgd(model_fn, x, y, loss, iters):
    attack = AutoProjectedGradientDescent(as_art(model_fn), norm=np.inf, eps=EPS, eps_step=2 * EPS, max_iter=iters,
                                          targeted=False, nb_random_init=1, batch_size=len(x), loss_type=loss,
                                          verbose=False)
    return attack.generate(x=x, y=y).astype(np.float32)


def ours(model_fn, x, y, method, iters):
    s = attacks.AttackSettings(eps=EPS, steps=iters, step=EPS, seed=0)
    return attacks.run_attack(method, model_fn, x, y, s)


def section(name, model_fn, predict, x, y, iters):
    """CE, DLR and CE ∪ DLR accuracy for ART's APGD and ours, each scored by ``predict``."""
    out = {"n": int(len(x)), "iterations": iters, "restarts": 1, "eps": EPS}
    for lib, run in (("art", art_apgd), ("ours", ours)):
        robust, seconds = [], {}
        for loss, method in (("cross_entropy", "apgd-ce"), ("difference_logits_ratio", "apgd-dlr")):
            t0 = time.time()
            x_adv = run(model_fn, x, y, loss if lib == "art" else method, iters)
            seconds[method] = round(time.time() - t0, 1)
            assert np.abs(x_adv - x).max() <= EPS + 1e-5, f"{lib} left the budget"
            ok = predict(x_adv) == y
            out[f"{lib}_{method}"] = float(ok.mean())
            robust.append(ok)
            print(f"{name} {lib} {method}: {ok.mean():.3f} ({seconds[method]:.0f} s)", file=sys.stderr, flush=True)
        out[f"{lib}_ce_or_dlr"] = float(np.logical_and(*robust).mean())
        out[f"{lib}_seconds"] = seconds
    return out


def attach_report(row, pick):
    """Our adaptive report's worst case for the same defence (the first record `pick` accepts) on the same images."""
    if not os.path.isfile(args.report):
        return
    with open(args.report) as f:
        adaptive = json.load(f)
    worst = [r for r in adaptive["records"] if r["attack"] == "worst" and pick(r)]
    if worst:
        robust = stats.unpack(worst[0]["robust"], worst[0]["n"])[: row["n"]]
        row["our_report_worst_case_same_images"] = float(robust.mean())
        row["our_report"] = {"file": args.report, "command": adaptive.get("command"), "row": worst[0]["defence"]}


def attach_reports(report):
    attach_report(report[f"purifier_{variant}"],
                  lambda r: r["settings"]["defence"].get("variant") == variant
                  and r["settings"]["defence"].get("classifier") is None)
    attach_report(report["adversarially_trained_classifier"], lambda r: r.get("kind") == "adversarial training")


variant = args.variant
if args.report_only:
    with open(args.out) as f:
        report = json.load(f)
    attach_reports(report)
    store.write_json(args.out, report)
    print(json.dumps(report, indent=2))
    sys.exit(0)

report = {"command": "python scripts/cross_check_apgd.py " + " ".join(sys.argv[1:]), "art_version": "1.20.1",
          "attack": "APGD, L-inf, eps 0.3, one random start, initial step 2 eps; a CE or a DLR run fooling an image "
                    "counts"}

x, y = ds.x_test[: args.n_adv], ds.y_test[: args.n_adv].astype(np.int64)
report["adversarially_trained_classifier"] = section(
    "adv-classifier", adv_fn, lambda xa: np.argmax(models.predict_in_batches(adv_fn, xa), 1), x, y, 100)

p = purify.Purifier(m.dae, m.stats, variant, purify.default_settings("mnist", variant, folder))
fn = m.classifier_fn()
defended = attacks.DefendedModel(p, fn, "exact")
x, y = ds.x_test[: args.n_purifier], ds.y_test[: args.n_purifier].astype(np.int64)
scored = p.predictor(fn)  # the real purifier, as `apudae-tf purify | apudae-tf classify`
row = section(f"purifier {variant}", defended, scored, x, y, 50)
row["settings"] = {"variant": variant, **p.settings.__dict__}
report[f"purifier_{variant}"] = row
attach_reports(report)
store.write_json(args.out, report)
print(json.dumps(report, indent=2))
