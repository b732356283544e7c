"""Probe: a classifier fine-tuned on the purifier's own outputs (of clean training images).

  python scripts/cifar10_adapted_classifier_probe.py DIR [VARIANTS] [EPOCHS]   # default C 4
  apudae-tf tune cifar10 --n-val 200 --variants direct,A,B,C,E,F --models DIR \
      --out results/cifar10/probe/tune_adapted_classifier.json

The shipped CIFAR-10 purifiers cost the classifier 10-20 points of clean accuracy (B, C), so
many blind-attack misses may be the purifier's distortion, not the attack. Each VARIANT (comma
list) purifies every training image once with its tuned settings (cached in DIR); the shipped
classifier is then fine-tuned with SGD 0.01 (Nesterov) on batches where each image is clean or
purified by a random one of the variants with probability 1/2, crop + flip on top. Validation
numbers only (results/cifar10/probe/README.md).
"""

import os
import shutil
import sys

import numpy as np
import tensorflow as tf
import keras

from apudae_tf import data, models, purify, store, train

out = sys.argv[1]
variants = (sys.argv[2] if len(sys.argv) > 2 else "C").split(",")
epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 4
os.makedirs(out, exist_ok=True)
src = store.default_model_dir("cifar10")
for name in (store.DAE, store.DAE_STATS):
    shutil.copy(os.path.join(src, name), out)
ds = data.load_dataset("cifar10", data.resolve_data_dir(None))
clf = keras.models.load_model(os.path.join(src, store.CLASSIFIER))
dae = keras.models.load_model(os.path.join(src, store.DAE))
stats = store.load_stats(src)

purified = []
for v in variants:
    path = os.path.join(out, f"train_purified_{v}.npy")
    if not os.path.isfile(path):
        p = purify.Purifier(dae, stats, v, purify.default_settings("cifar10", v, src))
        np.save(path, p.purify_array(ds.x_train, progress=lambda k: print(v, k, flush=True) if k % 9000 == 0 else None))
    purified.append(np.load(path, allow_pickle=False))
purified = np.stack(purified)  # [V, N, 32, 32, 3]
val_pur = {v: purify.Purifier(dae, stats, v, purify.default_settings("cifar10", v, src)).purify_array(ds.x_val[:2000])
           for v in variants}

opt = keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True)
ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@tf.function
def step(x, y):
    with tf.GradientTape() as tape:
        loss = ce(y, clf(x, training=True))
    opt.apply_gradients(zip(tape.gradient(loss, clf.trainable_variables), clf.trainable_variables))
    return loss


def acc(x, y):
    return float((clf.predict(x, batch_size=500, verbose=0).argmax(1) == y).mean())


rng = np.random.default_rng(0)
for e in range(epochs):
    order = rng.permutation(len(ds.x_train))
    for b in range(0, len(order), 128):
        i = order[b:b + 128]
        x = ds.x_train[i].copy()
        pick = rng.random(len(i)) < 0.5
        which = rng.integers(0, len(variants), len(i))
        x[pick] = purified[which[pick], i[pick]]
        l = step(tf.constant(train.crop_flip(x, rng)), tf.constant(ds.y_train[i]))
    print("epoch", e, "loss", float(l), "val clean", acc(ds.x_val, ds.y_val),
          *[f"val {v}(x) {acc(val_pur[v], ds.y_val[:2000]):.4f}" for v in variants], flush=True)
store.save_model(clf, os.path.join(out, store.CLASSIFIER))
