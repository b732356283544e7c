"""Top-1 accuracy of the shipped ImageNet classifier on the 1300 ILSVRC-2012 validation images of the data
folder (center crop 224 of the 227-px files, [0, 1] RGB in; the model normalises inside), loaded with plain
`keras.models.load_model`, streamed through imagefolder's tf.data pipeline:

  APUDAE_DATA_DIR=../shared/data python scripts/imagenet_classifier_accuracy.py --out results/imagenet/classifier.json
"""

import argparse
import json
import os
import sys
import time

import keras
import numpy as np

from apudae_tf import data, store

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--models", default=store.default_model_dir("imagenet"))
ap.add_argument("--out", required=True)
ap.add_argument("--force", action="store_true")
args = ap.parse_args()
if os.path.exists(args.out) and not args.force:
    sys.exit(f"error: --out {args.out} exists; pass --force to replace it")
ds = data.load_dataset("imagenet")
model = keras.models.load_model(os.path.join(args.models, store.CLASSIFIER))
t0 = time.time()
pred = np.concatenate([model.predict_on_batch(b).argmax(1) for b in ds.x_test.images().batch(100)])
seconds = time.time() - t0
right = pred == ds.y_test
here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
record = {"model": os.path.relpath(os.path.join(args.models, store.CLASSIFIER), here),
          "images": "<data dir>/imagenet/val", "split": "test",
          "n": int(len(right)), "top1": float(right.mean()), "seconds_per_image": seconds / len(right),
          "preprocessing": "decode RGB, center crop 224 (227-px files are taken as pre-scaled)"}
store.write_json(args.out, record)
print(json.dumps(record, indent=1))
