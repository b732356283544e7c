"""What every training shares: the ``tf.distribute`` strategy, ``model.fit`` with resumption after an
interruption, and one line per epoch on stderr.

Every model of the package trains through ``model.fit`` on a ``tf.data`` pipeline, built and compiled
inside ``strategy().scope()``: the default strategy on one device, ``MirroredStrategy`` when several
GPUs are visible (or the devices named in ``APUDAE_DEVICES``, e.g. two logical CPUs in a test).

A long training survives the end of a session: Keras' ``BackupAndRestore`` saves the model, its
optimizer and the epoch after every epoch in a folder beside the output. A run resumes only when asked
(``--resume``) and only with the settings it was started with: silently mixing two recipes in one model
would be a result nobody asked for. The epochs' records are kept there too, so a resumed run reports
its whole history.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys

import keras
import tensorflow as tf

from apudae_tf import io
from apudae_tf.errors import ApudaeError

DEVICES_ENV = "APUDAE_DEVICES"  # comma-separated devices to mirror training over, e.g. /cpu:0,/cpu:1


_STRATEGIES: dict = {}


def strategy() -> tf.distribute.Strategy:
    """MirroredStrategy over ``$APUDAE_DEVICES`` or over every visible GPU when there are several, else the
    default strategy (one device: the code path is the same). One object per device set, so models loaded
    in its scope are used by the same strategy that mirrored them."""
    named = tuple(d for d in os.environ.get(DEVICES_ENV, "").split(",") if d.strip())
    gpus = len(tf.config.list_logical_devices("GPU"))
    if len(named) < 2 and gpus < 2:
        return tf.distribute.get_strategy()
    key = named if len(named) > 1 else ("gpus", gpus)
    if key not in _STRATEGIES:
        _STRATEGIES[key] = (tf.distribute.MirroredStrategy(devices=list(named)) if len(named) > 1
                            else tf.distribute.MirroredStrategy())
    return _STRATEGIES[key]


def across_replicas(fn, *batch):
    """``fn(*batch)`` with the batch split into contiguous slices over the strategy's replicas and the
    results concatenated in order: batched purification and attack gradients on several devices. On one
    device (or a batch smaller than the replicas) it is ``fn(*batch)``. ``fn`` returns a tensor or a
    tuple of tensors whose first axis is the batch's.

    A random purification (F, G) draws its noise per replica from the same seed, so on k devices it
    differs from one device's (still reproducible); deterministic work gives the same numbers."""
    s = strategy()
    k = s.num_replicas_in_sync
    n = int(batch[0].shape[0])
    if k == 1 or n < k:
        return fn(*batch)
    bounds = [round(i * n / k) for i in range(k + 1)]
    values = s.experimental_distribute_values_from_function(
        lambda ctx: tuple(b[bounds[ctx.replica_id_in_sync_group]: bounds[ctx.replica_id_in_sync_group + 1]]
                          for b in batch))
    # a plain callable: MirroredStrategy would wrap a tf.function in its own and bind the per-replica values
    # to its signature
    parts = s.experimental_local_results(s.run(lambda *b: fn(*b), args=values))
    if isinstance(parts[0], (tuple, list)):
        return type(parts[0])(tf.concat([p[j] for p in parts], 0) for j in range(len(parts[0])))
    return tf.concat(parts, 0)


def mixed_policy() -> str:
    """The mixed-precision policy of this machine: float16 on a GPU, bfloat16 on a CPU (float16 has few fast
    CPU kernels)."""
    return "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"


@contextlib.contextmanager
def precision(mixed: bool):
    """Keras' global dtype policy for the models built inside: ``mixed_policy()``, or float32 when not
    ``mixed``; restored on exit."""
    before = keras.config.dtype_policy()
    if mixed:
        keras.config.set_dtype_policy(mixed_policy())
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def verbose() -> int:
    """Keras' progress: a live bar on a terminal; nothing in a log, where ``EpochLog`` writes the one line per
    epoch (always on stderr: the CLI keeps stdout for data)."""
    return 1 if sys.stderr.isatty() else 0


class EpochLog(keras.callbacks.Callback):
    """Each epoch's logs (and ``extra()``'s, e.g. a robust-accuracy check) in ``folder``/history.json, and
    one ``what: epoch k/N: ...`` line through ``echo``."""

    def __init__(self, folder: str, what: str, epochs: int, echo, extra=None, keys=None):
        super().__init__()
        self.folder, self.what, self.epochs, self.echo, self.extra, self.keys = folder, what, epochs, echo, extra, keys
        self.history: list[dict] = []

    def on_train_begin(self, logs=None):
        if self.folder is None:
            return
        path = os.path.join(self.folder, "history.json")
        done = int(getattr(self.model, "_initial_epoch", 0) or 0)  # set by BackupAndRestore on a resume
        if done and os.path.isfile(path):
            with open(path) as f:
                self.history = json.load(f)[:done]
            self.echo(f"{self.what}: resuming after epoch {done} from {self.folder}")

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items() if self.keys is None or k in self.keys}
        record = {"epoch": epoch + 1, **logs, **(self.extra() if self.extra else {})}
        self.history.append(record)
        if self.folder is not None:
            io.write_json(os.path.join(self.folder, "history.json"), self.history)
        self.echo(f"{self.what}: epoch {epoch + 1}/{self.epochs}: "
                  + ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k != "epoch"))


def _same_setting(saved: dict, settings: dict, key: str) -> bool:
    """Equal values; or a setting a later version added, absent from one side and off on the other (None,
    False or 0): the recipe is then the one the checkpoint was started with."""
    if key in saved and key in settings:
        return saved[key] == settings[key]
    present = saved.get(key, settings.get(key))
    return present in (None, False)


def _check_resume(folder: str, settings: dict, resume: bool, what: str) -> None:
    """Refuse a leftover backup unless --resume, and a resume with other settings."""
    if not os.path.isdir(folder) or not os.listdir(folder):
        return
    if not resume:
        raise ApudaeError(f"{what}: an interrupted run left a checkpoint in {folder}; pass --resume to continue "
                          "it, or delete that folder to start over")
    path = os.path.join(folder, "settings.json")
    if os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
        changed = sorted(k for k in set(saved) | set(settings) if not _same_setting(saved, settings, k))
        if changed:
            raise ApudaeError(f"{what}: the checkpoint in {folder} was started with other settings "
                              f"({', '.join(f'{k}: {saved.get(k)} -> {settings.get(k)}' for k in changed)}); "
                              "use the same ones, or delete that folder to start over")


def fit(model, data, epochs: int, backup: str | None, settings: dict, what: str, echo=print, resume: bool = False,
        validation_data=None, extra=None, callbacks=(), keys=None) -> list[dict]:
    """``model.fit`` for ``epochs``, resumable: ``backup`` holds Keras' BackupAndRestore state, the
    settings it was started with and the epochs' history (``None``: a throw-away fit, not resumable); the
    caller removes it with ``finish`` once the trained model is saved, so a run cut off in between still
    resumes. Returns the history (one record per epoch, resumed epochs included). ``keys`` limits the logs
    kept."""
    resumable = []
    if backup is not None:
        _check_resume(backup, settings, resume, what)
        os.makedirs(backup, exist_ok=True)
        io.write_json(os.path.join(backup, "settings.json"), json.loads(json.dumps(settings, default=str)))
        resumable = [keras.callbacks.BackupAndRestore(backup, delete_checkpoint=False)]
    log = EpochLog(backup, what, epochs, echo, extra, keys)
    model.fit(data, epochs=epochs, validation_data=validation_data, callbacks=[*resumable, log, *callbacks],
              shuffle=False, verbose=verbose())
    model._initial_epoch = None  # a later fit of the same model starts from its own first epoch
    return log.history


def finish(backup: str | None) -> None:
    """The trained model is saved: its backup is no longer needed."""
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
