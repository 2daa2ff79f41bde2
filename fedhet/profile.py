"""Device profiles: what a device measures and declares when it registers (METHODS.md §2).

The ClientApp answers the server's ``query.profile`` message with a :class:`DeviceProfile`. Measured
fields come from the OS as the process really sees it (CPU affinity and cgroup CPU quota, cgroup
memory limit) and a short compute micro-benchmark; declared fields come from ``--node-config``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import statistics
import time
from pathlib import Path
from typing import Annotated, Any

import psutil
from pydantic import AfterValidator, Field, model_validator

from fedhet.config import KebabModel, kebab, validate_model
from fedhet.plan import DEVICE_CLASSES

log = logging.getLogger(__name__)


def _device_class(value: str) -> str:
    if value not in DEVICE_CLASSES:
        raise ValueError(f"use one of {', '.join(DEVICE_CLASSES)}")
    return value


#: A device class name, one of :data:`fedhet.plan.DEVICE_CLASSES` (the class table's keys + custom).
DeviceClass = Annotated[str, AfterValidator(_device_class)]

#: Fastest plausible benchmark step (ms): one fwd+bwd+SGD step of a CNN on a batch cannot be
#: quicker; a smaller claim is an absurd measurement and the profile is rejected.
MIN_BENCH_MS = 0.01
#: Largest plausible memory (1 PiB) and core count.
MAX_MEM_BYTES = 1 << 50
MAX_CORES = 4096.0
#: Largest training or test set a device may declare.
MAX_DECLARED_EXAMPLES = 10**9


class NodeSettings(KebabModel):
    """What only the device knows: its ``--node-config`` (simulation adds partition-id/num-partitions)."""

    partition_id: int | None = Field(None, ge=0, description="Partition of the run's dataset.")
    num_partitions: int | None = Field(None, ge=1, description="Number of partitions.")
    device_id: str | None = Field(None, min_length=1, max_length=128, description="Stable id.")
    device_class: DeviceClass | None = None
    bandwidth_mbps: float | None = Field(None, gt=0, le=1e6)
    memory_mb: float | None = Field(
        None, gt=0, le=1e8, description="Declared memory available to training (MB, finite)."
    )
    time_frac: float | None = Field(None, gt=0, le=1)
    mem_frac: float | None = Field(None, gt=0, le=1)
    upload_min: float | None = Field(None, gt=0, le=1)
    upload_max: float | None = Field(None, gt=0, le=1)
    availability: float = Field(1.0, gt=0, le=1)
    tasks: str | None = Field(None, description="Comma-separated local task names.")
    arch: str | None = None
    data_path: str | None = None
    cache_dir: str | None = None
    threads: int | None = Field(None, ge=1, le=4096, description="torch/OpenMP threads.")
    supernodes_per_host: int = Field(1, ge=1, le=4096, description="SuperNodes on this host.")

    @model_validator(mode="after")
    def _check(self) -> NodeSettings:
        if (
            self.partition_id is not None
            and self.num_partitions is not None
            and self.partition_id >= self.num_partitions
        ):
            raise ValueError(
                f"partition-id {self.partition_id} must be < num-partitions {self.num_partitions}"
            )
        if self.upload_min and self.upload_max and self.upload_min > self.upload_max:
            raise ValueError("upload-min must be <= upload-max")
        if self.data_path is not None and not Path(self.data_path).expanduser().exists():
            raise ValueError(f"data-path {self.data_path!r} does not exist")
        return self

    @property
    def task_list(self) -> list[str]:
        return [t.strip() for t in (self.tasks or "").split(",") if t.strip()]


def parse_node_config(raw: dict[str, Any]) -> NodeSettings:
    """Validate a node config; unknown keys and bad values raise :class:`ConfigError`."""
    return validate_model(NodeSettings, raw, "", "node config (--node-config)")


class DeviceProfile(KebabModel):
    """A device's registration record. Sent as a flat ConfigRecord; ``None`` fields are omitted.

    Absurd measurements are rejected as such (issue 10 item 5): ``bench-ms`` below
    :data:`MIN_BENCH_MS`, non-finite values, memory above :data:`MAX_MEM_BYTES`, cores outside
    [0.01, 4096]. ``num-train`` / ``num-test`` are the sizes of the device's local training and test
    sets; the server caps reported example counts at them.
    """

    device_id: str = Field(min_length=1, max_length=128)
    device_class: DeviceClass
    simulated: bool = False
    partition_id: int | None = Field(None, ge=0)
    num_partitions: int | None = Field(None, ge=1)
    time_frac: float | None = Field(None, gt=0, le=1)
    mem_frac: float | None = Field(None, gt=0, le=1)
    upload_min: float | None = Field(None, gt=0, le=1)
    upload_max: float | None = Field(None, gt=0, le=1)
    bandwidth_mbps: float | None = Field(None, gt=0, le=1e6)
    memory_mb: float | None = Field(None, gt=0, le=1e8)
    arch: str | None = None
    n_tasks: int = Field(0, ge=0, le=10_000)
    has_data_path: bool = False
    availability: float = Field(1.0, gt=0, le=1)
    cores: float = Field(ge=0.01, le=MAX_CORES)
    mem_total_bytes: int = Field(gt=0, le=MAX_MEM_BYTES)
    mem_avail_bytes: int = Field(gt=0, le=MAX_MEM_BYTES)
    bench_ms: float | None = Field(None, ge=MIN_BENCH_MS, le=600_000)
    bench_model: str | None = None
    num_train: int | None = Field(None, ge=0, le=MAX_DECLARED_EXAMPLES)
    num_test: int | None = Field(None, ge=0, le=MAX_DECLARED_EXAMPLES)

    @model_validator(mode="after")
    def _check(self) -> DeviceProfile:
        if self.mem_avail_bytes > self.mem_total_bytes:
            raise ValueError("mem-avail-bytes exceeds mem-total-bytes")
        if self.upload_min and self.upload_max and self.upload_min > self.upload_max:
            raise ValueError("upload-min must be <= upload-max")
        return self

    def to_record(self) -> dict[str, Any]:
        """Flat dict of scalars for a ConfigRecord (``None`` omitted)."""
        return {k: v for k, v in self.model_dump(by_alias=True).items() if v is not None}


def parse_profile(raw: dict[str, Any]) -> DeviceProfile:
    """Validate a profile received from a device; raises :class:`ConfigError` with the reason."""
    return validate_model(DeviceProfile, raw, "", "device profile")


def _cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPU quota in cores: cgroup v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``
    (hybrid hosts and container engines on cgroupfs, e.g. podman here); None without a quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    for folder in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        try:
            quota_us = int((root / folder / "cpu.cfs_quota_us").read_text().strip())
            period_us = int((root / folder / "cpu.cfs_period_us").read_text().strip())
        except (OSError, ValueError):
            continue
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    return None


def _cgroup_mem_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(path).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 1 << 60:
            return int(raw)
    return None


def measure_cores() -> float:
    """CPU cores this process may use: affinity, capped by a cgroup CPU quota."""
    cores = (
        float(len(os.sched_getaffinity(0)))
        if hasattr(os, "sched_getaffinity")
        else float(os.cpu_count() or 1)
    )
    quota = _cgroup_cpu_limit()
    return min(cores, quota) if quota else cores


def measure_memory() -> tuple[int, int]:
    """``(total, available)`` bytes, capped by a cgroup memory limit."""
    vm = psutil.virtual_memory()
    total, avail = int(vm.total), int(vm.available)
    limit = _cgroup_mem_limit()
    if limit:
        try:
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        except (OSError, ValueError):
            used = 0
        total = min(total, limit)
        avail = min(avail, max(1, limit - used))
    return total, max(1, min(avail, total))


def bench_step_ms(model_name: str, batch_size: int, repeats: int = 5) -> float:
    """Median ms of one fwd+bwd+SGD step of ``model_name`` on a synthetic batch (1 warm-up).

    Text models are benchmarked through the image CNN ``cnn_s`` as a compute probe.
    """
    import torch

    from fedhet.models import IMAGE_MODELS, build_model

    name = model_name if model_name in IMAGE_MODELS else "cnn_s"
    torch.manual_seed(0)
    model = build_model(name)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(batch_size, 1, 28, 28)
    y = torch.randint(0, 10, (batch_size,))
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if i:
            times.append((time.perf_counter() - start) * 1000)
    return float(statistics.median(times))


@functools.lru_cache(maxsize=8)
def _host_bench_ms(model_name: str, batch_size: int) -> float:
    """:func:`bench_step_ms` measured once per process: simulated devices share one host."""
    return bench_step_ms(model_name, batch_size)


def build_profile(
    node: NodeSettings,
    *,
    fallback_device_id: str,
    device_class: str,
    simulated: bool,
    bench_model: str | None,
    batch_size: int,
    data_sizes: tuple[int, int] | None = None,
) -> DeviceProfile:
    """Measure this device and combine it with its declared node config.

    ``data_sizes`` = ``(num_train, num_test)`` of the device's local data, declared so that the
    server can cap the example counts of its replies.

    A simulated device (``simulated``) shares its host with the others, so the compute
    micro-benchmark runs once per process and every simulated node reports that figure (measuring
    it again per node, one after another on the same cores, cost 0.27 s per device and told
    nothing: the fleet table decides simulated classes).
    """
    total, avail = measure_memory()
    if node.memory_mb:
        avail = min(avail, int(node.memory_mb * 1e6))
    if not bench_model:
        bench = None
    elif simulated:
        bench = _host_bench_ms(bench_model, batch_size)
    else:
        bench = bench_step_ms(bench_model, batch_size)
    fields: dict[str, Any] = {
        "device-id": node.device_id or fallback_device_id,
        "device-class": node.device_class or device_class,
        "simulated": simulated,
        "cores": measure_cores(),
        "mem-total-bytes": total,
        "mem-avail-bytes": avail,
        "n-tasks": len(node.task_list),
        "has-data-path": node.data_path is not None,
        "availability": node.availability,
    }
    for name in (
        "partition_id",
        "num_partitions",
        "time_frac",
        "mem_frac",
        "upload_min",
        "upload_max",
        "bandwidth_mbps",
        "memory_mb",
        "arch",
    ):
        value = getattr(node, name)
        if value is not None:
            fields[kebab(name)] = value
    if bench is not None and math.isfinite(bench):
        fields["bench-ms"] = max(bench, MIN_BENCH_MS)
        fields["bench-model"] = bench_model
    if data_sizes is not None:
        fields["num-train"], fields["num-test"] = (int(n) for n in data_sizes)
    return parse_profile(fields)
