"""System metrics (psutil) sampled in the training loop and sent through the same buffered,
never-blocking logger as the training metrics.

MLflow's own SystemMetricsMonitor gives up for good the first time the tracking server does not
answer, so a server outage would end system metrics for the rest of the run; sampling here keeps
them flowing (and backfilled) like every other metric, keyed by training step.
"""

from __future__ import annotations

import time
from pathlib import Path


class SystemSampler:
    def __init__(self, path: Path, every_s: float = 10.0) -> None:
        import psutil

        self._psutil = psutil
        self.path = str(path)
        self.every_s = every_s
        self._last = 0.0
        self._proc = psutil.Process()
        psutil.cpu_percent(interval=None)  # prime: the next call measures since now

    def maybe_sample(self, force: bool = False) -> dict[str, float]:
        now = time.monotonic()
        if not force and now - self._last < self.every_s:
            return {}
        self._last = now
        ps = self._psutil
        vm = ps.virtual_memory()
        out = {
            "system/cpu_utilization_percentage": ps.cpu_percent(interval=None),
            "system/system_memory_usage_megabytes": (vm.total - vm.available) / 2**20,
            "system/system_memory_usage_percentage": vm.percent,
            "system/rank0_rss_megabytes": self._proc.memory_info().rss / 2**20,
            "system/disk_usage_percentage": ps.disk_usage(self.path).percent,
        }
        try:
            import torch

            if torch.cuda.is_available():
                out["system/gpu_memory_allocated_megabytes"] = torch.cuda.memory_allocated() / 2**20
                out["system/gpu_max_memory_allocated_megabytes"] = (
                    torch.cuda.max_memory_allocated() / 2**20
                )
        except Exception:  # noqa: BLE001
            pass
        return out
