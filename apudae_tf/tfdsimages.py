"""A split that tensorflow-datasets has prepared (ImageNet's ``imagenet2012`` after its manual download)
as images and labels read when indexed, the same interface as an image folder (imagefolder.py).

tfds keeps a split as record files read in order, so taking images ``i`` to ``j`` reads the records from
the lowest index asked for to the highest (``split[a:b]``): the first n test images cost n records,
nothing is held in memory, and the labels are read the same way without decoding the images. Images get
the image folders' evaluation preprocessing (``imagefolder.preprocess``).
"""

from __future__ import annotations

import numpy as np

from apudae_tf import imagefolder
from apudae_tf.errors import ApudaeError, first_line


class TfdsSplit:
    """One prepared split (``download=False``: a split that is not prepared is one error, never a download)."""

    def __init__(self, name: str, split: str, data_dir: str | None = None):
        import tensorflow_datasets as tfds

        self.name, self.split, self.data_dir = name, split, data_dir
        try:
            builder = tfds.builder(name, data_dir=data_dir)
            info = builder.info.splits[split] if builder.is_prepared() else None
        except Exception as e:  # tfds raises its own types for an unknown dataset or a split it lacks
            info, why = None, first_line(e, 80)
        else:
            why = "not prepared" if info is None else ""
        if info is None:
            raise ApudaeError(f"tfds:{name}: no prepared {split} split in {data_dir or 'the tensorflow-datasets folder'}"
                              f" ({why}); prepare it first (its manual download, then "
                              f"`tfds build {name} --manual_dir DIR`)")
        self.size = int(info.num_examples)
        self.num_classes = int(builder.info.features["label"].num_classes)

    def records(self, lo: int = 0, hi: int | None = None, images: bool = True):
        """``tf.data`` of (encoded image or b"", label) for records ``lo`` to ``hi`` (in the split's order)."""
        import tensorflow as tf
        import tensorflow_datasets as tfds

        hi = self.size if hi is None else hi
        decoders = {"image": tfds.decode.SkipDecoding()}
        ds = tfds.load(self.name, split=f"{self.split}[{lo}:{hi}]", data_dir=self.data_dir, download=False,
                       decoders=decoders, read_config=tfds.ReadConfig(try_autocache=False))
        return ds.map(lambda ex: (ex["image"] if images else tf.constant(b""), ex["label"]))

    def read(self, positions: np.ndarray, images: bool, size: int = 0, resize: int = 0):
        """(images or None, labels) at ``positions`` (any order, repeats allowed), reading one range."""
        positions = np.asarray(positions, np.int64)
        if not positions.size:
            return (np.zeros((0, size, size, 3), np.float32) if images else None), np.zeros(0, np.int64)
        lo, hi = int(positions.min()), int(positions.max()) + 1
        wanted = np.zeros(hi - lo, bool)
        wanted[positions - lo] = True
        got_x, got_y = {}, {}
        for k, (blob, label) in enumerate(self.records(lo, hi, images).as_numpy_iterator()):
            if wanted[k]:
                got_y[lo + k] = label
                if images:
                    where = f"tfds:{self.name} {self.split}[{lo + k}]"
                    got_x[lo + k] = imagefolder.decode_blob(blob, size, resize, where).numpy()
        y = np.asarray([got_y[int(p)] for p in positions], np.int64)
        return (np.stack([got_x[int(p)] for p in positions]) if images else None), y


class _View:
    """Records of a split at ``positions``: numpy-style indexing reads just those (``_read``, per kind)."""

    ndim = 1

    def __init__(self, split: TfdsSplit, positions: np.ndarray):
        self.source, self.positions = split, np.asarray(positions, np.int64)

    def __len__(self) -> int:
        return len(self.positions)

    def _chosen(self, index) -> np.ndarray:
        return self.positions[np.arange(len(self.positions))[index]]

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self[np.asarray([index])][0]
        return self._read(self._chosen(index))

    def __array__(self, dtype=None, copy=None):
        return self[:] if dtype is None else self[:].astype(dtype)

    def take(self, index, axis: int = 0):
        if axis != 0:
            raise ValueError("a tfds split is taken along its first axis only")
        return self._with(self._chosen(index))


class TfdsLabels(_View):
    """A split's labels, read (without decoding images) when indexed."""

    dtype = np.dtype(np.int64)

    @property
    def shape(self):
        return (len(self),)

    def _with(self, positions):
        return TfdsLabels(self.source, positions)

    def _read(self, positions):
        return self.source.read(positions, images=False)[1]

    def max(self):
        """The largest label the split can hold (its class count − 1), without reading it."""
        return self.source.num_classes - 1


class TfdsImages(_View):
    """A split's images as a read-only float32 NHWC array in [0, 1], decoded when indexed."""

    ndim = 4
    dtype = np.dtype(np.float32)

    def __init__(self, split: TfdsSplit, positions: np.ndarray, size: int, resize: int):
        super().__init__(split, positions)
        self.size, self.resize = int(size), int(resize)

    @property
    def shape(self):
        return (len(self), self.size, self.size, 3)

    def _with(self, positions):
        return TfdsImages(self.source, positions, self.size, self.resize)

    def _read(self, positions):
        return self.source.read(positions, images=True, size=self.size, resize=self.resize)[0]

    def images(self, seed: int | None = None):
        """A ``tf.data`` pass over the images (decoded in parallel), reshuffled each epoch when ``seed`` is
        given: one sequential read of the split, keeping this view's records."""
        import tensorflow as tf

        keep = np.zeros(self.source.size, bool)
        keep[self.positions] = True
        keep = tf.constant(keep)
        ds = (self.source.records().enumerate()
              .filter(lambda k, rec: tf.gather(keep, k))
              .map(lambda k, rec: imagefolder.preprocess(imagefolder.pixels(rec[0]), self.size, self.resize),
                   num_parallel_calls=tf.data.AUTOTUNE))
        if seed is not None:  # records come in file order: a shuffle buffer mixes them
            ds = ds.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
        return ds


SHUFFLE_BUFFER = 2048  # images (224 px: ~1.2 GB), enough to mix neighbouring records for DAE training
