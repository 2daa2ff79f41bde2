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
