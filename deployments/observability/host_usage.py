"""What a node's CPUs, memory and GPUs are doing, as Triton's per-interval metrics report them. No Ray here.

Every replica samples its node when it reports its statistics (at most every REPORT_DELAY_S while serving,
every HEARTBEAT_S while idle); the collector keeps the latest sample per node. GPUs are read through NVML
(nvidia-ml-py) when the node has an NVIDIA driver; without one there are no GPU samples, never an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import psutil

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuUsage:
    """One GPU, with Triton's ``nv_gpu_*`` quantities."""

    uuid: str
    utilization: float  # 0..1, over NVML's last sample period
    memory_used_bytes: int
    memory_total_bytes: int
    power_usage_watts: float
    power_limit_watts: float


@dataclass(frozen=True)
class HostUsage:
    """One node: CPU utilization (0..1, all cores, since the last sample in this process), memory, GPUs."""

    node: str
    cpu_utilization: float
    cpu_memory_used_bytes: int
    cpu_memory_total_bytes: int
    gpus: tuple[GpuUsage, ...] = field(default_factory=tuple)


class _Nvml:
    """NVML, initialised once per process; ``None`` handles when the node has no NVIDIA driver."""

    handles: list | None = None
    tried = False

    @classmethod
    def gpus(cls) -> tuple[GpuUsage, ...]:
        if not cls.tried:
            cls.tried = True
            try:
                import pynvml

                pynvml.nvmlInit()
                cls.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            except Exception as exc:  # no driver, no library: no GPU metrics
                logger.debug("no NVML, so no GPU metrics: %r", exc)
        if not cls.handles:
            return ()
        import pynvml

        usage = []
        for handle in cls.handles:
            try:
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
                usage.append(GpuUsage(
                    uuid=pynvml.nvmlDeviceGetUUID(handle),
                    utilization=pynvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100,
                    memory_used_bytes=int(memory.used), memory_total_bytes=int(memory.total),
                    power_usage_watts=pynvml.nvmlDeviceGetPowerUsage(handle) / 1000,
                    power_limit_watts=pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000,
                ))
            except Exception as exc:  # a GPU that stops answering is left out of this sample
                logger.warning("NVML could not read a GPU: %r", exc)
        return tuple(usage)


def sample(node: str) -> HostUsage:
    """This node's usage now; ``node`` names it in the metrics (its IP address)."""
    memory = psutil.virtual_memory()
    return HostUsage(node=node, cpu_utilization=psutil.cpu_percent(interval=None) / 100,
                     cpu_memory_used_bytes=int(memory.total - memory.available),
                     cpu_memory_total_bytes=int(memory.total), gpus=_Nvml.gpus())
