"""Datasets by name: float32 NHWC images in [0, 1] with a fixed validation split.

Resolution order for the built-in datasets (``mnist``, ``cifar10``):
``data_dir`` argument, then the ``APUDAE_DATA_DIR`` environment variable (a
folder holding ``<name>.npz`` in Keras' layout), then the copy inside the
package (MNIST: ``embedded/mnist.npz``), then tensorflow-datasets (the default
for online users). ``npz:PATH`` reads a user's own file with the
keys x_train, y_train, x_test, y_test (uint8, NHWC or NHW). ``folder:PATH`` and
``imagenet`` (``<data dir>/imagenet/``) are folders of image files
(imagefolder.py), decoded only when a command takes them; with no such folder,
``imagenet`` is read the same way from tensorflow-datasets' ``imagenet2012`` if it
has been prepared from its manual download (tfdsimages.py).

Every tuning decision in this project uses the validation split carved here
from train, never the test set.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile

import numpy as np

from apudae_tf import profiles
from apudae_tf.errors import ApudaeError, first_line

DATA_DIR_ENV = "APUDAE_DATA_DIR"
BUILTIN = ("mnist", "cifar10")  # the datasets tensorflow-datasets and the data folder provide by name
IMAGE_FOLDERS = ("imagenet",)  # image-folder datasets the data folder provides by name (<data dir>/<name>/)
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
# the validation split is a fixed permutation (of the profile's size), so every command sees the same images
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
        return int(max(y.max() for y in (self.y_train, self.y_test) if len(y))) + 1

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of the split called ``train``, ``val`` or ``test``."""
        if name not in ("train", "val", "test"):
            raise ApudaeError(f"unknown split {name!r}; use train, val or test")
        x, y = getattr(self, f"x_{name}"), getattr(self, f"y_{name}")
        if not len(x):
            raise ApudaeError(f"{self.name}: no {name} split in {self.source}; point --data-dir or ${DATA_DIR_ENV} at "
                              f"a folder holding {self.name}.npz")
        return x, y


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
    val, train = _validation_split(name, len(x_train), source)
    return Dataset(
        name=name,
        x_train=x_train[train],
        y_train=y_train[train],
        x_val=x_train[val],
        y_val=y_train[val],
        x_test=to_float_images(arrays["x_test"]),
        y_test=arrays["y_test"].astype(np.int64),
        source=source,
    )


def _from_folder(name: str, root: str) -> Dataset:
    """An image-folder dataset (imagefolder.py): images decoded when a command takes them. The validation
    split is carved from the training folder, as for arrays; with no training folder, both are empty."""
    from apudae_tf import imagefolder

    size, resize = _folder_geometry(name)
    train_dir, test_dir = imagefolder.dataset_splits(root)
    files, y_test = imagefolder.list_split(test_dir)
    x_test = imagefolder.FolderImages(files, size, resize)
    if train_dir is None:
        empty = imagefolder.FolderImages([], size, resize)
        none = np.zeros(0, np.int64)
        return Dataset(name, empty, none, empty, none, x_test, y_test, root)
    files, y = imagefolder.list_split(train_dir)
    x = imagefolder.FolderImages(files, size, resize)
    val, train = _validation_split(name, len(x), train_dir)
    return Dataset(name, x.take(train), y[train], x.take(val), y[val], x_test, y_test, root)


def _from_tfds_splits(name: str) -> Dataset:
    """A dataset tensorflow-datasets has prepared (the profile's ``tfds_splits``; its folder: $TFDS_DATA_DIR
    or tfds' default), read when a command takes images (tfdsimages.py). The validation split is the
    profile's number of training records, the last ones; with no prepared train split, train and
    validation are empty."""
    from apudae_tf import tfdsimages

    size, resize = _folder_geometry(name)
    source = profiles.get(name).tfds_splits
    if not source:
        raise ApudaeError("its profile names no tensorflow-datasets source")
    builder, train_split, test_split = source
    _quiet_tfds()
    tfds_dir = os.environ.get("TFDS_DATA_DIR") or None
    test = tfdsimages.TfdsSplit(builder, test_split, tfds_dir)
    everything = np.arange(test.size)
    x_test, y_test = tfdsimages.TfdsImages(test, everything, size, resize), tfdsimages.TfdsLabels(test, everything)
    try:
        train = tfdsimages.TfdsSplit(builder, train_split, tfds_dir)
    except ApudaeError:
        return Dataset(name, x_test.take([]), y_test.take([]), x_test.take([]), y_test.take([]), x_test, y_test,
                       f"tfds:{builder}")
    everything = np.arange(train.size)
    x, y = tfdsimages.TfdsImages(train, everything, size, resize), tfdsimages.TfdsLabels(train, everything)
    # tfds shuffled the records when it prepared them: the last ones are a random sample, read in one range
    n_val = profiles.validation_size(name, train.size)
    if n_val >= train.size:
        raise ApudaeError(f"tfds:{builder}: {train.size} training images leave none after a {n_val}-image "
                          "validation split")
    val, kept = everything[train.size - n_val:], everything[: train.size - n_val]
    return Dataset(name, x.take(kept), y.take(kept), x.take(val), y.take(val), x_test, y_test, f"tfds:{builder}")


def _validation_split(name: str, n_train: int, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(validation, training) indices of ``n_train`` training images, both sorted: the profile's
    validation size drawn by the fixed permutation, so every command sees the same split."""
    n_val = profiles.validation_size(name, n_train)
    if n_val >= n_train:
        raise ApudaeError(f"{source}: {n_train} training images leave none after a {n_val}-image validation split")
    perm = np.random.default_rng(SPLIT_SEED).permutation(n_train)
    return np.sort(perm[:n_val]), np.sort(perm[n_val:])


def _folder_geometry(name: str) -> tuple[int, int]:
    """(crop, resize) of an image-folder dataset: its profile's, or the ImageNet standard before it has one."""
    profile = profiles.REGISTRY.get(name) or profiles.REGISTRY["imagenet"]
    return profile.crop, profile.resize


EMBEDDED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "embedded")
# the tfds download host; checked before a download so that an offline machine fails in seconds
TFDS_HOST = ("storage.googleapis.com", 443)
NETWORK_TIMEOUT = 3.0


def _online() -> bool:
    import socket

    try:
        socket.create_connection(TFDS_HOST, timeout=NETWORK_TIMEOUT).close()
        return True
    except OSError:
        return False


def _quiet_tfds() -> None:
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)  # tfds' notes on its cache folder are not the user's business


def _from_tfds(name: str) -> dict[str, np.ndarray]:
    import tensorflow_datasets as tfds

    _quiet_tfds()
    out = {}
    for split in ("train", "test"):
        try:  # prepared earlier on this machine: no network needed
            data = tfds.load(name, split=split, as_supervised=True, batch_size=-1, download=False)
        except Exception:  # tfds raises its own types for a dataset not prepared here
            if not _online():
                raise ApudaeError(f"{name}: not in the tensorflow-datasets folder and no network to download it "
                                  f"({TFDS_HOST[0]} unreachable); offline, point --data-dir or ${DATA_DIR_ENV} at a "
                                  f"folder holding {name}.npz") from None
            data = tfds.load(name, split=split, as_supervised=True, batch_size=-1)
        x, y = tfds.as_numpy(data)
        out[f"x_{split}"], out[f"y_{split}"] = x, y
    return out


def _test_only(name: str, arrays: dict[str, np.ndarray], source: str) -> Dataset:
    """A dataset with its test split alone (train and validation empty), for commands that need no more."""
    x = to_float_images(arrays["x_test"])
    empty = np.zeros((0, *x.shape[1:]), np.float32)
    none = np.zeros(0, np.int64)
    return Dataset(name, empty, none, empty, none, x, arrays["y_test"].astype(np.int64), source)


def check_name(dataset: str | None, model_dir: str | None = None) -> None:
    """A dataset argument names a built-in dataset, a user's npz:PATH or folder:PATH, or a dataset whose model
    folder (--models) declares it; a typo is one error with the nearest name."""
    import difflib

    if dataset is None or dataset.startswith(("npz:", "folder:")) or dataset in profiles.REGISTRY \
            or dataset in BUILTIN:
        return
    if model_dir is not None and os.path.isfile(os.path.join(model_dir, profiles.PROFILE_FILE)):
        return  # the folder's profile.json declares it (checked when it is read)
    known = sorted(set(profiles.BUILTIN) | set(BUILTIN) | set(IMAGE_FOLDERS))
    near = difflib.get_close_matches(dataset, known, n=1)
    raise ApudaeError(f"unknown dataset {dataset!r}" + (f"; did you mean {near[0]}?" if near else "")
                      + f" (use {', '.join(known)}, npz:PATH or folder:PATH)")


def resolve_data_dir(data_dir: str | None) -> str | None:
    return data_dir or os.environ.get(DATA_DIR_ENV) or None


def load_dataset(name: str, data_dir: str | None = None, test_only: bool = False) -> Dataset:
    """Load a dataset by name (``mnist``, ``cifar10`` or ``npz:PATH``).

    With no data folder configured, MNIST comes from the copy inside the package (exact; no network
    needed). ``test_only``: the caller reads the test split alone (train and val are then empty)."""
    if name.startswith("npz:"):
        return _from_arrays(profiles.dataset_name(name), read_npz(name[4:]), name[4:])
    if name.startswith("folder:"):
        return _from_folder(profiles.dataset_name(name), name[7:])
    folder = resolve_data_dir(data_dir)
    if name in IMAGE_FOLDERS:
        if folder and os.path.isdir(os.path.join(folder, name)):
            return _from_folder(name, os.path.join(folder, name))
        try:
            return _from_tfds_splits(name)
        except ApudaeError as e:
            raise ApudaeError(f"{name}: no {name}/ image folder in {folder or 'the data folder'} (--data-dir or "
                              f"${DATA_DIR_ENV}), and {e}; or pass folder:PATH (a folder with val/ and train/ "
                              "splits)") from None
    if name not in BUILTIN:
        raise ApudaeError(f"unknown dataset {name!r}; use one of {', '.join(BUILTIN + IMAGE_FOLDERS)}, "
                          "npz:PATH or folder:PATH")
    embedded = os.path.join(EMBEDDED, f"{name}.npz")
    if not folder and os.path.isfile(embedded):  # MNIST, exact, inside the package: no network needed
        arrays = read_npz(embedded)
        return (_test_only if test_only else _from_arrays)(name, arrays, f"embedded:{name}")
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
    except ApudaeError:
        raise
    except Exception as e:  # tfds raises many types when offline
        raise ApudaeError(
            f"{name}: tensorflow-datasets could not load it ({first_line(e, 120)}); "
            f"offline, point --data-dir or ${DATA_DIR_ENV} at a folder holding {name}.npz"
        ) from None
    return _from_arrays(name, arrays, f"tfds:{name}")
