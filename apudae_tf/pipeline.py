"""The npz format that flows between ``attack``, ``purify`` and ``classify``.

Keys: ``x`` float32 NHWC images in [0, 1]; ``y`` int64 labels (optional);
``meta`` a JSON string (optional for foreign producers): ``dataset`` and
``history``, the list of producing commands with their settings. Anything
that writes this schema can feed ``purify`` and ``classify``. Files are read
with ``allow_pickle=False``.
"""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np

from apudae_tf.data import read_npz
from apudae_tf.errors import ApudaeError
from apudae_tf.store import write_bytes


@dataclasses.dataclass
class Batch:
    x: np.ndarray
    y: np.ndarray | None
    meta: dict

    @property
    def dataset(self) -> str | None:
        return self.meta.get("dataset")

    def then(self, x: np.ndarray, step: dict) -> Batch:
        """The batch after one more pipeline step: new images, same labels, history extended."""
        meta = {**self.meta, "history": [*self.meta.get("history", []), step]}
        return Batch(x=x, y=self.y, meta=meta)


def validate(x, y, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    if isinstance(x, np.ndarray) and x.dtype == np.uint8:
        raise ApudaeError(f"{where}: x must be float32 images in [0, 1], got uint8 (0-255): store "
                          "x.astype(np.float32) / 255")
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
        raise ApudaeError(f"{where}: x must be float32 images in [0, 1], got {getattr(x, 'dtype', type(x))}")
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or x.shape[0] == 0:
        raise ApudaeError(f"{where}: x must be a non-empty NHWC batch with 1 or 3 channels, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ApudaeError(f"{where}: x holds NaN or infinite values")
    if x.min() < 0.0 or x.max() > 1.0:
        raise ApudaeError(f"{where}: x must lie in [0, 1], got values in [{x.min():.4g}, {x.max():.4g}]")
    if y is not None:
        if y.ndim != 1 or len(y) != len(x) or y.dtype.kind not in "iu":
            raise ApudaeError(f"{where}: y must hold one integer label per image ({len(x)}), got {y.dtype} {y.shape}")
        y = y.astype(np.int64)
    return x.astype(np.float32), y


def loads(data: bytes, where: str) -> Batch:
    """Parse and check pipeline bytes (a file's or stdin's content)."""
    if not data:
        raise ApudaeError(f"{where} is empty; pipe the output of `apudae-tf attack` or pass -i FILE")
    if not data.startswith(b"PK"):
        raise ApudaeError(f"{where} is not an npz archive (it does not start like a zip file)")
    arrays = read_npz(io.BytesIO(data), where)
    if "x" not in arrays:
        raise ApudaeError(f"{where} has no 'x' array (keys: {', '.join(arrays) or 'none'})")
    meta = {}
    if "meta" in arrays:
        try:
            meta = json.loads(str(arrays["meta"].item()))
        except (ValueError, TypeError) as e:
            raise ApudaeError(f"{where}: meta is not a JSON string ({e})") from None
        if not isinstance(meta, dict):
            raise ApudaeError(f"{where}: meta must be a JSON object")
    x, y = validate(arrays["x"], arrays.get("y"), where)
    return Batch(x=x, y=y, meta=meta)


def dumps(batch: Batch) -> bytes:
    buf = io.BytesIO()
    arrays = {"x": batch.x.astype(np.float32), "meta": np.array(json.dumps(batch.meta))}
    if batch.y is not None:
        arrays["y"] = batch.y.astype(np.int64)
    np.savez(buf, **arrays)
    return buf.getvalue()


def read(path: str) -> Batch:
    try:
        with open(path, "rb") as f:
            return loads(f.read(), path)
    except FileNotFoundError:
        raise ApudaeError(f"no such file: {path}") from None


def write(batch: Batch, path: str) -> None:
    write_bytes(path, dumps(batch))
