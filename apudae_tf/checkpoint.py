"""Resumable training runs: a checkpoint after every epoch, so that a training longer than a
session (the CIFAR-10 ResNet, adversarial training) continues where it stopped.

The folder holds a ``tf.train.Checkpoint`` of the model, its optimizer (moments and step
count, hence the learning-rate schedule's position) and the epoch, plus ``history.json`` and
``settings.json``. A run resumes only when asked (``--resume``) and only with the settings it
was started with: silently mixing two recipes in one model would be a result nobody asked for.
"""

from __future__ import annotations

import json
import os
import shutil

import tensorflow as tf

from apudae_tf import store
from apudae_tf.errors import ApudaeError


class EpochCheckpoint:
    """``restore`` once before training, ``save`` after every epoch, ``finish`` when done."""

    def __init__(self, folder: str, model, optimizer, settings: dict, what: str):
        self.folder, self.settings, self.what = folder, settings, what
        self.epoch = tf.Variable(0, dtype=tf.int64)
        self._ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=self.epoch)
        self._manager = tf.train.CheckpointManager(self._ckpt, folder, max_to_keep=1)
        self.history: list[dict] = []

    def _path(self, name):
        return os.path.join(self.folder, name)

    def restore(self, resume: bool, echo=print) -> int:
        """The number of epochs already done (0 for a fresh run)."""
        latest = self._manager.latest_checkpoint
        if not latest:
            return 0
        if not resume:
            raise ApudaeError(f"{self.what}: an interrupted run left a checkpoint in {self.folder}; pass --resume "
                              f"to continue it, or delete that folder to start over")
        if os.path.isfile(self._path("settings.json")):
            with open(self._path("settings.json")) as f:
                saved = json.load(f)
            changed = sorted(k for k in set(saved) | set(self.settings) if saved.get(k) != self.settings.get(k))
            if changed:
                raise ApudaeError(f"{self.what}: the checkpoint in {self.folder} was started with other settings "
                                  f"({', '.join(f'{k}: {saved.get(k)} -> {self.settings.get(k)}' for k in changed)}); "
                                  f"use the same ones, or delete that folder to start over")
        self._ckpt.restore(latest).expect_partial()
        done = int(self.epoch.numpy())
        if os.path.isfile(self._path("history.json")):
            with open(self._path("history.json")) as f:
                self.history = json.load(f)[:done]
        echo(f"{self.what}: resuming after epoch {done} from {latest}")
        return done

    def save(self, epoch: int, record: dict) -> None:
        """Epoch ``epoch`` (1-based) is done; ``record`` joins the history."""
        self.history.append({"epoch": epoch, **record})
        self.epoch.assign(epoch)
        self._manager.save()
        store.write_json(self._path("settings.json"), self.settings)
        store.write_json(self._path("history.json"), self.history)

    def finish(self) -> None:
        """The model is saved: the checkpoint is no longer needed."""
        shutil.rmtree(self.folder, ignore_errors=True)
