"""ClientApp threads from the node config (issue 13): ``threads``, else cores / SuperNodes."""

from __future__ import annotations

import pytest

from fedhet.client.runtime import thread_count
from fedhet.config import ConfigError
from fedhet.profile import measure_cores, parse_node_config


def test_explicit_threads_win() -> None:
    assert thread_count(parse_node_config({"threads": 3}), simulated=True) == 3


def test_simulated_nodes_keep_one_thread() -> None:
    assert thread_count(parse_node_config({"partition-id": 0, "num-partitions": 2}), True) == 1


def test_default_divides_the_real_cores() -> None:
    cores = int(measure_cores())
    one = parse_node_config({"device-id": "press-1"})
    assert thread_count(one, simulated=False) == max(1, cores)
    many = parse_node_config({"device-id": "press-1", "supernodes-per-host": 64})
    assert thread_count(many, simulated=False) == max(1, cores // 64)


def test_bad_values_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="threads"):
        parse_node_config({"threads": 0})
    with pytest.raises(ConfigError, match="supernodes-per-host"):
        parse_node_config({"supernodes-per-host": 0})


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),  # cgroup v2 quota
        ({"cpu.max": "max 100000\n"}, None),  # v2, no quota
        ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.5),  # v1
        (
            {"cpu,cpuacct/cpu.cfs_quota_us": "200000", "cpu,cpuacct/cpu.cfs_period_us": "100000"},
            2.0,
        ),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1, none
        ({}, None),
    ],
)
def test_cgroup_cpu_quota_v2_and_v1(tmp_path, files: dict[str, str], expected) -> None:
    """A container's CPU limit is the device's core count, under cgroup v2 or v1 (podman on
    cgroupfs here): the compose demo's 0.5-CPU node reported the host's 2 cores before."""
    from fedhet.profile import _cgroup_cpu_limit

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert _cgroup_cpu_limit(tmp_path) == expected
