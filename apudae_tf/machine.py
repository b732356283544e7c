"""The machine a number was measured on: library versions, CPU, cores, memory, and its matmul rate (the
reference the cost figures are a fraction of)."""

from __future__ import annotations

import time


def environment() -> dict:
    """What a report's numbers were computed with: a re-run under other library versions or another CPU
    can move a cell by an image or two (docs/remake.md), so each report records its own."""
    import platform
    from importlib import metadata

    import tensorflow as tf

    from apudae_tf import stats

    versions = {}
    for dist in ("tensorflow", "keras", "numpy", "cleverhans", "tensorflow-datasets"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {"python": platform.python_version(), **versions, "machine": platform.machine(),
            "processor": cpu_model(), "cpu_cores": usable_cores(), "gpus": len(tf.config.list_physical_devices("GPU")),
            "peak_rss_gib": stats.peak_rss_gib()}  # this run's; a report's own peak_rss_gib covers its cache's runs


def usable_cores() -> int:
    """The cores this process may run on (its affinity), not the machine's count."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform says, else "unknown"."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timed(fn, min_seconds: float = 1.0, min_reps: int = 2) -> float:
    """Seconds per call: one warm-up call (tracing, compiling), then repeat until min_seconds."""
    fn()
    reps, start = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - start < min_seconds:
        fn()
        reps += 1
    return (time.perf_counter() - start) / reps


def matmul_gflops(n: int = 2048, tries: int = 5, dtype: str = "float32") -> float:
    """This machine's matmul rate in ``dtype`` (tf.linalg.matmul of two n×n matrices, best of ``tries``): what
    a dense kernel reaches here, the bound against which a throughput is judged."""
    import tensorflow as tf

    a = tf.cast(tf.random.normal([n, n]), dtype)
    b = tf.cast(tf.random.normal([n, n]), dtype)
    mm = tf.function(lambda: tf.reduce_sum(tf.linalg.matmul(a, b)))
    return max(2 * n**3 / timed(lambda: mm().numpy(), 0.5) / 1e9 for _ in range(tries))
