"""The reports' cache: finished cells (one json, merged under a lock) and attack examples (pipeline npz, kept a
batch at a time while an attack runs), keyed by ``digest`` of everything that changes them, so an interrupted
report resumes and a changed model or setting never reuses a stale cell."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from apudae_tf import io, pipeline
from apudae_tf.errors import ApudaeError


def digest(*parts) -> str:
    """A short hash of JSON-able parts: the caches' keys."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Cache:
    """Attack examples (pipeline npz) and finished cells (one json) under ``folder``."""

    def __init__(self, folder: str | None):
        self.folder = folder
        self.cells = self._read() if folder else {}

    def _read(self) -> dict:
        if not os.path.isfile(self._cells_path):
            return {}
        try:
            with open(self._cells_path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}  # a damaged cache is recomputed, not trusted

    @property
    def _cells_path(self):
        return os.path.join(self.folder, "cells.json")

    def cell(self, key):
        return self.cells.get(key)

    def put_cell(self, key, record):
        self.cells[key] = record
        if self.folder:
            # two reports may share one folder (the table and the adaptive report): merge with what
            # is on disk under a lock, or each process would overwrite the other's cells
            import fcntl

            os.makedirs(self.folder, exist_ok=True)
            with open(os.path.join(self.folder, "cells.lock"), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                on_disk = self._read()
                self.cells = {**on_disk, **self.cells}
                io.write_json(self._cells_path, self.cells)

    def examples(self, key):
        """(images, seconds it took to make them), or (None, 0) when not cached."""
        path = self.folder and os.path.join(self.folder, f"{key}.npz")
        if path and os.path.isfile(path):
            try:
                batch = pipeline.read(path)
                return batch.x, float(batch.meta.get("seconds", 0.0))
            except ApudaeError:
                pass
        return None, 0.0

    def put_examples(self, key, x, meta):
        if self.folder:
            pipeline.write(pipeline.Batch(x=x, y=None, meta=meta), os.path.join(self.folder, f"{key}.npz"))
            for path in self._batch_paths(key):  # the finished examples replace their batches
                os.remove(path)

    def batches(self, key) -> "BatchStore | None":
        """Where an attack keeps its finished batches while it runs (``attacks.run_attack(done=...)``), so a
        cell that takes hours resumes from its last batch; None without a folder."""
        return BatchStore(self.folder, key) if self.folder else None

    def _batch_paths(self, key):
        import glob

        return glob.glob(os.path.join(glob.escape(self.folder), f"{key}.batch-*.npz"))


class BatchStore:
    """One attack's finished batches, by their first image's index: ``get(i)`` and ``put(i, x, seconds)``.
    ``reused_seconds``: what the batches ``get`` returned took when they were made (a resumed attack's
    time is the sum of both runs')."""

    def __init__(self, folder: str, key: str):
        self.folder, self.key, self.reused_seconds = folder, key, 0.0

    def _path(self, i: int) -> str:
        return os.path.join(self.folder, f"{self.key}.batch-{i}.npz")

    def get(self, i: int):
        path = self._path(i)
        if os.path.isfile(path):
            try:
                batch = pipeline.read(path)
            except ApudaeError:
                return None  # a damaged batch is recomputed
            self.reused_seconds += float(batch.meta.get("seconds", 0.0))
            return batch.x
        return None

    def put(self, i: int, x, seconds: float = 0.0) -> None:
        pipeline.write(pipeline.Batch(x=np.asarray(x, np.float32), y=None,
                                      meta={"first": int(i), "seconds": float(seconds)}), self._path(i))
