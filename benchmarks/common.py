"""Helpers shared by the benchmarks: timing, machine description, TFLite PTQ peer."""

from __future__ import annotations

import datetime
import os
import platform
import time
from typing import Callable

import numpy as np


def best_seconds(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Best wall time of ``repeats`` calls after ``warmup`` untimed calls (robust to a noisy machine)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def machine_description() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def versions() -> str:
    import ai_edge_litert
    import keras
    import tensorflow as tf

    litert = getattr(ai_edge_litert, "__version__", None)
    if litert is None:
        from importlib.metadata import version

        litert = version("ai-edge-litert")
    return f"tensorflow {tf.__version__}, keras {keras.__version__}, ai-edge-litert {litert}, numpy {np.__version__}"


def today() -> str:
    return datetime.date.today().isoformat()
