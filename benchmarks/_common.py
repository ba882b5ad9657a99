"""Helpers shared by the benchmark scripts: peak-memory sampler, machine info, tables."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import threading
from pathlib import Path

import psutil

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MB = 1024.0**2


class PeakRSS:
    """Peak resident set size of this process plus all its descendants, by sampling.

    A daemon thread sums ``psutil`` RSS of the process and of every child
    (recursively, so dask's spawned worker processes count) every ``interval``
    seconds while the ``with`` block runs. ``peak`` is the largest sum seen,
    ``start`` the sum on entry. Caveats: spikes shorter than ``interval`` can
    be missed, and pages shared between processes (libraries) are counted once
    per process, so with a process pool the total is an upper bound.
    """

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.proc = psutil.Process()
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def total(self) -> int:
        rss = self.proc.memory_info().rss
        for child in self.proc.children(recursive=True):
            try:
                rss += child.memory_info().rss
            except psutil.Error:  # the child exited between listing and reading
                pass
        return rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.total())

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = self.total()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.total())

    @property
    def peak_mb(self) -> float:
        return self.peak / MB

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.start) / MB


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine_info() -> dict:
    """nproc, CPU, memory, python and library versions, date."""
    import astropy
    import dask
    import numba
    import numpy
    import scipy
    import xarray

    import xarray_modelfit

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_total_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "astropy": astropy.__version__,
        "xarray": xarray.__version__,
        "dask": dask.__version__,
        "numba": numba.__version__,
        "xarray_modelfit": getattr(xarray_modelfit, "__version__", "?"),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "loadavg_1_5_15min": [round(x, 2) for x in os.getloadavg()],  # includes any other work on the machine
    }


def fmt(value, digits: int = 3) -> str:
    """Table cell: floats with ``digits`` significant digits, None as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"
    return str(value)


def _cell(value, spec: str | None) -> str:
    if spec is None or value is None or (isinstance(value, float) and value != value):
        return fmt(value)
    if spec == "%":
        return f"{100 * value:.2f}%"
    return format(value, spec)


def markdown_table(rows: list[dict], columns: list[tuple]) -> str:
    """``columns``: (key, header) or (key, header, format spec; "%" = percent, 2 decimals)."""
    cols = [(c[0], c[1], c[2] if len(c) > 2 else None) for c in columns]
    lines = [
        "| " + " | ".join(h for _, h, _ in cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(k), f) for k, _, f in cols) + " |")
    return "\n".join(lines)


def write_json(name: str, payload: dict) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / name
    path.write_text(json.dumps(_finite(payload), indent=2, default=_jsonable) + "\n")
    return path


def _finite(obj):
    """NaN/inf floats become None so the file is strict JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    return obj


def _jsonable(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
