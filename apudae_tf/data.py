"""Datasets by name: float32 NHWC images in [0, 1] with a fixed validation split.

Resolution order for the built-in datasets (``mnist``, ``cifar10``):
``data_dir`` argument, then the ``APUDAE_DATA_DIR`` environment variable (a
folder holding ``<name>.npz`` in Keras' layout), then tensorflow-datasets
(the default for online users). ``npz:PATH`` reads a user's own file with the
keys x_train, y_train, x_test, y_test (uint8, NHWC or NHW).

Every tuning decision in this project uses the validation split carved here
from train, never the test set.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile

import numpy as np

from apudae_tf.errors import ApudaeError, first_line

DATA_DIR_ENV = "APUDAE_DATA_DIR"
BUILTIN = ("mnist", "cifar10")
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
# Validation images held out of train, per dataset; the split is a fixed
# permutation so every command sees the same images.
VAL_SIZE = {"mnist": 5000, "cifar10": 5000}
DEFAULT_VAL_SIZE = 0.1
SPLIT_SEED = 20240611


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One dataset, split into train / val / test, images float32 NHWC in [0, 1]."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of the split called ``train``, ``val`` or ``test``."""
        if name not in ("train", "val", "test"):
            raise ApudaeError(f"unknown split {name!r}; use train, val or test")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")


def to_float_images(x: np.ndarray) -> np.ndarray:
    """uint8 NHW or NHWC -> float32 NHWC in [0, 1]."""
    if x.ndim == 3:
        x = x[..., None]
    return x.astype(np.float32) / np.float32(255.0)


def read_npz(source, where: str | None = None) -> dict[str, np.ndarray]:
    """Arrays of an npz file (a path or a file object), never unpickling: a user's file is untrusted."""
    where = where or str(source)
    try:
        with np.load(source, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise ApudaeError(f"no such file: {where}") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise ApudaeError(f"{where} is not a readable npz file ({first_line(e)})") from None


def _check_layout(arrays: dict[str, np.ndarray], where: str) -> None:
    missing = [k for k in NPZ_KEYS if k not in arrays]
    if missing:
        raise ApudaeError(f"{where} lacks the key(s) {', '.join(missing)}; expected {', '.join(NPZ_KEYS)}")
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8:
            raise ApudaeError(f"{where}: x_{split} must be uint8 images, got {x.dtype}")
        if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] not in (1, 3)):
            raise ApudaeError(f"{where}: x_{split} must be NHW or NHWC with 1 or 3 channels, got shape {x.shape}")
        if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise ApudaeError(f"{where}: y_{split} must be integer labels, one per image ({len(x)}), got {y.dtype} {y.shape}")
        if len(y) and y.min() < 0:
            raise ApudaeError(f"{where}: y_{split} holds negative labels")
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise ApudaeError(
            f"{where}: x_train and x_test image shapes differ "
            f"({arrays['x_train'].shape[1:]} vs {arrays['x_test'].shape[1:]})"
        )


def _from_arrays(name: str, arrays: dict[str, np.ndarray], source: str) -> Dataset:
    _check_layout(arrays, source)
    x_train = to_float_images(arrays["x_train"])
    y_train = arrays["y_train"].astype(np.int64)
    n_val = VAL_SIZE.get(name, max(1, int(round(DEFAULT_VAL_SIZE * len(x_train)))))
    if n_val >= len(x_train):
        raise ApudaeError(f"{source}: {len(x_train)} training images leave none after a {n_val}-image validation split")
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(x_train))
    val, train = perm[:n_val], np.sort(perm[n_val:])
    return Dataset(
        name=name,
        x_train=x_train[train],
        y_train=y_train[train],
        x_val=x_train[np.sort(val)],
        y_val=y_train[np.sort(val)],
        x_test=to_float_images(arrays["x_test"]),
        y_test=arrays["y_test"].astype(np.int64),
        source=source,
    )


def _from_tfds(name: str) -> dict[str, np.ndarray]:
    import tensorflow_datasets as tfds

    out = {}
    for split in ("train", "test"):
        x, y = tfds.as_numpy(tfds.load(name, split=split, as_supervised=True, batch_size=-1))
        out[f"x_{split}"], out[f"y_{split}"] = x, y
    return out


def resolve_data_dir(data_dir: str | None) -> str | None:
    return data_dir or os.environ.get(DATA_DIR_ENV) or None


def load_dataset(name: str, data_dir: str | None = None) -> Dataset:
    """Load a dataset by name (``mnist``, ``cifar10`` or ``npz:PATH``)."""
    if name.startswith("npz:"):
        path = name[4:]
        return _from_arrays(os.path.splitext(os.path.basename(path))[0], read_npz(path), path)
    if name not in BUILTIN:
        raise ApudaeError(f"unknown dataset {name!r}; use one of {', '.join(BUILTIN)} or npz:PATH")
    folder = resolve_data_dir(data_dir)
    if folder:
        path = os.path.join(folder, f"{name}.npz")
        if not os.path.isfile(path):
            raise ApudaeError(
                f"{name}: no {name}.npz in {folder} (from --data-dir or ${DATA_DIR_ENV}); "
                f"put the Keras-layout file there or unset it to use tensorflow-datasets"
            )
        return _from_arrays(name, read_npz(path), path)
    try:
        arrays = _from_tfds(name)
    except Exception as e:  # tfds raises many types when offline
        raise ApudaeError(
            f"{name}: tensorflow-datasets could not load it ({first_line(e, 120)}); "
            f"offline, point --data-dir or ${DATA_DIR_ENV} at a folder holding {name}.npz"
        ) from None
    return _from_arrays(name, arrays, f"tfds:{name}")
