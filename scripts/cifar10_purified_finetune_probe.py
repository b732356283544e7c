"""Probe: does a classifier fine-tuned on partly purified images keep CIFAR-10 purification's clean accuracy?

  python scripts/cifar10_purified_finetune_probe.py DIR   # DIR gets classifier.keras (+ copies of the DAE)
  apudae-tf tune cifar10 --n-val 200 --variants direct,B,E,F --models DIR \
      --out results/cifar10/probe/tune_finetuned_classifier.json

3 epochs of SGD 0.01 (Nesterov) from the shipped classifier; each batch is half clean images,
half images moved a random part of the way to D(x), all randomly flipped. An experiment, not a
shipped recipe; validation numbers only (results/cifar10/probe/README.md).
"""

import os
import shutil
import sys

import keras
import numpy as np
import tensorflow as tf

from apudae_tf import data, models, store

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
src = store.default_model_dir("cifar10")
for name in (store.DAE, store.DAE_STATS):
    shutil.copy(os.path.join(src, name), out)
ds = data.load_dataset("cifar10", data.resolve_data_dir(None))
clf = keras.models.load_model(os.path.join(src, store.CLASSIFIER))
dae = keras.models.load_model(os.path.join(src, store.DAE))
opt = keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True)
ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@tf.function
def step(x, y, seed):
    d = models.denoise(dae, x)
    t = tf.random.stateless_uniform([tf.shape(x)[0], 1, 1, 1], [seed, 0])
    half = tf.cast(tf.random.stateless_uniform([tf.shape(x)[0], 1, 1, 1], [seed, 1]) < 0.5, x.dtype)
    x_in = half * x + (1 - half) * (x + t * (d - x))  # half clean, half part-way to D(x)
    flip = tf.random.stateless_uniform([tf.shape(x)[0], 1, 1, 1], [seed, 2]) < 0.5
    x_in = tf.where(flip, tf.reverse(x_in, [2]), x_in)
    with tf.GradientTape() as tape:
        loss = ce(y, clf(x_in, training=True))
    opt.apply_gradients(zip(tape.gradient(loss, clf.trainable_variables), clf.trainable_variables))
    return loss


rng = np.random.default_rng(0)
for e in range(3):
    order = rng.permutation(len(ds.x_train))
    for b in range(0, len(order), 128):
        i = order[b:b+128]
        l = step(tf.constant(ds.x_train[i]), tf.constant(ds.y_train[i]), tf.constant(e * 1000 + b // 128))
    p = clf.predict(ds.x_val, batch_size=500, verbose=0).argmax(1)
    pd = clf.predict(models.denoise(dae, ds.x_val[:2000]).numpy(), batch_size=500, verbose=0).argmax(1)
    print("epoch", e, "loss", float(l), "val clean", (p == ds.y_val).mean(), "val D(x)", (pd == ds.y_val[:2000]).mean(), flush=True)
store.save_model(clf, os.path.join(out, store.CLASSIFIER))
