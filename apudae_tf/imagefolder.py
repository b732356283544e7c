"""Folders of image files (ImageNet's layouts) as datasets whose images are decoded when indexed.

A split folder is either a folder of class sub-folders (labels: the sub-folders in sorted order), or a
folder of files with ``labels.txt`` (``FILE LABEL`` per line, ILSVRC-2012's validation layout). A dataset
folder holds a test split (``val/`` or ``test/``) and optionally a training split (``train/`` or
``train-sample/``); a folder that is itself a split is a test split alone.

Every image is decoded to RGB (grayscale and CMYK JPEGs are converted; a file that does not decode is one
error naming it), then brought to ``size`` x ``size`` by the standard evaluation preprocessing: the
shorter side resized to ``resize`` (bilinear, antialiased), then a central crop. An image whose shorter
side already lies in [size, resize] is taken as pre-scaled and only cropped (the 227-px ILSVRC files).
"""

from __future__ import annotations

import os

import numpy as np

from apudae_tf.errors import ApudaeError, first_line

LABELS_FILE = "labels.txt"
TEST_DIRS = ("val", "test")
TRAIN_DIRS = ("train", "train-sample")
EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".gif")


def is_split(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, LABELS_FILE)) or any(
        os.path.isdir(os.path.join(folder, d)) and d not in TEST_DIRS + TRAIN_DIRS for d in _listdir(folder))


def _listdir(folder: str) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except OSError as e:
        raise ApudaeError(f"cannot read the image folder {folder} ({first_line(e)})") from None


def list_split(folder: str) -> tuple[list[str], np.ndarray]:
    """The image files of one split folder and their integer labels."""
    labels_file = os.path.join(folder, LABELS_FILE)
    files, labels = [], []
    if os.path.isfile(labels_file):
        with open(labels_file) as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                parts = line.split()
                if len(parts) != 2 or not parts[1].lstrip("-").isdigit() or int(parts[1]) < 0:
                    raise ApudaeError(f"{labels_file}:{number}: expected 'FILE LABEL' with a label >= 0, "
                                      f"got {line.strip()!r}")
                files.append(os.path.join(folder, parts[0]))
                labels.append(int(parts[1]))
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise ApudaeError(f"{labels_file} names {len(missing)} missing file(s), first {missing[0]}")
    else:
        classes = [d for d in _listdir(folder) if os.path.isdir(os.path.join(folder, d))]
        for k, name in enumerate(classes):
            for f in _listdir(os.path.join(folder, name)):
                if f.lower().endswith(EXTENSIONS):
                    files.append(os.path.join(folder, name, f))
                    labels.append(k)
    if not files:
        raise ApudaeError(f"no images in {folder}: expected class sub-folders or {LABELS_FILE} ('FILE LABEL' lines)")
    return files, np.asarray(labels, np.int64)


def dataset_splits(root: str) -> tuple[str | None, str]:
    """(training split folder or None, test split folder) of a dataset folder."""
    if not os.path.isdir(root):
        raise ApudaeError(f"no such image folder: {root}")
    if is_split(root):
        return None, root
    test = next((os.path.join(root, d) for d in TEST_DIRS if os.path.isdir(os.path.join(root, d))), None)
    if test is None:
        raise ApudaeError(f"{root}: no test split; expected a sub-folder {' or '.join(TEST_DIRS)}, class "
                          f"sub-folders, or {LABELS_FILE}")
    train = next((os.path.join(root, d) for d in TRAIN_DIRS if os.path.isdir(os.path.join(root, d))), None)
    return train, test


def decode(path: str, size: int, resize: int):
    """One file as a float32 ``size`` x ``size`` x 3 tensor in [0, 1] (module docstring's preprocessing)."""
    import tensorflow as tf

    try:
        blob = tf.io.read_file(path)
    except tf.errors.NotFoundError as e:
        raise ApudaeError(f"cannot decode the image {path} ({first_line(e.message, 80)})") from None
    return decode_blob(blob, size, resize, path)


def decode_blob(blob, size: int, resize: int, where: str):
    """Encoded image bytes (eager) as ``decode`` gives a file; one error naming ``where`` if they do not decode."""
    import tensorflow as tf

    try:
        img = pixels(blob)
    except tf.errors.InvalidArgumentError as e:
        raise ApudaeError(f"cannot decode the image {where} ({first_line(e.message, 80)})") from None
    return preprocess(img, size, resize)


def pixels(blob):
    """Encoded image bytes as uint8 RGB pixels (grayscale and CMYK converted), eager or as graph ops."""
    import tensorflow as tf

    img = tf.io.decode_image(blob, channels=3, expand_animations=False)
    img.set_shape([None, None, 3])
    return img


def _read(path):
    """A file's pixels, eager or as graph ops."""
    import tensorflow as tf

    return pixels(tf.io.read_file(path))


class FolderImages:
    """The images of a split folder as a read-only float32 NHWC array in [0, 1], decoded when indexed.

    ``x[a:b]``, ``x[indices]`` and ``x[i]`` decode just those files; nothing is held in memory, so a
    folder of any size costs only what a command takes from it."""

    ndim = 4
    dtype = np.dtype(np.float32)

    def __init__(self, files: list[str], size: int, resize: int):
        self.files, self.size, self.resize = list(files), int(size), int(resize)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.files), self.size, self.size, 3)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self[np.asarray([index])][0]
        chosen = np.arange(len(self.files))[index]
        out = np.empty((len(chosen), self.size, self.size, 3), np.float32)
        for j, i in enumerate(chosen):
            out[j] = decode(self.files[i], self.size, self.resize).numpy()
        return out

    def __array__(self, dtype=None, copy=None):
        return self[:] if dtype is None else self[:].astype(dtype)

    def take(self, index, axis: int = 0) -> "FolderImages":
        """A sub-folder view (no decoding): the files at ``index``; ``numpy.take``'s signature, so code that
        selects images works on arrays and folders alike (``x.take(idx, axis=0)``)."""
        if axis != 0:
            raise ValueError("an image folder is taken along its first axis only")
        return FolderImages([self.files[i] for i in np.arange(len(self.files))[index]], self.size, self.resize)

    def load(self, path):
        """One file (a string tensor) decoded and preprocessed as graph ops, for ``tf.data`` pipelines."""
        return preprocess(_read(path), self.size, self.resize)

    def images(self, seed: int | None = None):
        """A ``tf.data`` pass over the images (decoded in parallel), reshuffled each epoch when ``seed`` is
        given; the same for a prepared tfds split (tfdsimages.py), so training streams either."""
        import tensorflow as tf

        ds = tf.data.Dataset.from_tensor_slices(self.files)
        if seed is not None:
            ds = ds.shuffle(len(self.files), seed=seed, reshuffle_each_iteration=True)
        return ds.map(self.load, num_parallel_calls=tf.data.AUTOTUNE)


def preprocess(img, size: int, resize: int):
    """uint8 HWC -> float32 ``size`` x ``size`` x 3 in [0, 1]: the module docstring's rule, as graph ops
    (eager or inside ``tf.data``)."""
    import tensorflow as tf

    img = tf.cast(img, tf.float32) / 255.0
    h, w = tf.shape(img)[0], tf.shape(img)[1]
    short = tf.minimum(h, w)

    def rescaled():
        scale = resize / tf.cast(short, tf.float32)
        new = tf.cast(tf.round(tf.cast(tf.stack([h, w]), tf.float32) * scale), tf.int32)
        return tf.clip_by_value(tf.image.resize(img, new, antialias=True), 0.0, 1.0)

    img = tf.cond((short >= size) & (short <= resize), lambda: img, rescaled)
    return tf.image.resize_with_crop_or_pad(img, size, size)
