"""A real dataset this project never used, as a user brings one: scikit-learn's 8x8 handwritten digits.

  pip install scikit-learn
  python scripts/make_digits_npz.py digits.npz

The 1797 images of the UCI "Optical Recognition of Handwritten Digits" test set that scikit-learn ships
(``sklearn.datasets.load_digits``: 8x8, 17 grey levels 0-16, ten classes), scaled to uint8 (x * 255 / 16),
split with a fixed seed into 1437 training and 360 test images, written in the `npz:PATH` layout
(x_train, y_train, x_test, y_test). The commands that use it are in docs/profiles.md.
"""

import sys

import numpy as np
from sklearn.datasets import load_digits

out = sys.argv[1] if len(sys.argv) > 1 else "digits.npz"
digits = load_digits()
x = np.round(digits.images * 255.0 / 16.0).astype(np.uint8)
y = digits.target.astype(np.uint8)
order = np.random.default_rng(0).permutation(len(x))
train, test = order[:1437], order[1437:]
np.savez(out, x_train=x[train], y_train=y[train], x_test=x[test], y_test=y[test])
print(f"wrote {out}: {len(train)} training and {len(test)} test images of shape {x.shape[1:]}", file=sys.stderr)
