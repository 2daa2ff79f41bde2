"""Run config, node config and profile validation: clear errors that name the key."""

import re
import tomllib
from pathlib import Path

import pytest

from fedhet.config import ConfigError, SharedConfig, default_run_config, kebab
from fedhet.methods import METHODS, parse_run_config
from fedhet.profile import parse_node_config, parse_profile

ROOT = Path(__file__).resolve().parents[2]


def pyproject_run_config() -> dict:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    flat: dict = {}

    def walk(prefix: str, table: dict) -> None:
        for k, v in table.items():
            if isinstance(v, dict):
                walk(f"{prefix}{k}.", v)
            else:
                flat[prefix + k] = v

    walk("", data["tool"]["flwr"]["app"]["config"])
    return flat


def test_pyproject_defaults_parse_and_cover_every_shared_key():
    raw = pyproject_run_config()
    cfg = parse_run_config(raw)
    assert cfg.shared.method == "fedavg"
    missing = {kebab(n) for n in SharedConfig.model_fields} - set(raw)
    assert not missing, f"pyproject lacks defaults for {missing}"


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"'num-server-round'"):
        parse_run_config(default_run_config(**{"num-server-round": 3}))


def test_out_of_range_and_wrong_type_name_the_key():
    with pytest.raises(ConfigError, match="'num-server-rounds' = 0"):
        parse_run_config(default_run_config(num_server_rounds=0))
    with pytest.raises(ConfigError, match=r"'lr' = 'fast'"):
        parse_run_config(default_run_config(lr="fast"))
    with pytest.raises(ConfigError, match=r"'partition' = 'random'"):
        parse_run_config(default_run_config(partition="random"))


def test_unknown_method_lists_registered():
    with pytest.raises(ConfigError, match="allowed: " + re.escape(", ".join(METHODS))):
        parse_run_config(default_run_config(method="fedsgd"))


def test_method_keys_are_validated():
    with pytest.raises(ConfigError, match=r"'fedavg\.momentum' = 2"):
        parse_run_config(default_run_config(**{"fedavg.momentum": 2}))
    with pytest.raises(ConfigError, match=r"'fedavg\.mommentum'"):
        parse_run_config(default_run_config(**{"fedavg.mommentum": 0.5}))
    cfg = parse_run_config(default_run_config(**{"fedavg.momentum": 0.9}))
    assert cfg.method.momentum == 0.9


def test_bad_run_name_and_fleet():
    with pytest.raises(ConfigError, match="run-name"):
        parse_run_config(default_run_config(run_name="../etc"))
    with pytest.raises(ConfigError, match="fleet"):
        parse_run_config(default_run_config(fleet="{not json"))


def test_node_config_errors():
    assert parse_node_config({"partition-id": 1, "num-partitions": 3}).partition_id == 1
    with pytest.raises(ConfigError, match="partition-id 3 must be < num-partitions 3"):
        parse_node_config({"partition-id": 3, "num-partitions": 3})
    with pytest.raises(ConfigError, match="'device-class' = 'huge'"):
        parse_node_config({"device-class": "huge"})
    with pytest.raises(ConfigError, match="'colour'"):
        parse_node_config({"colour": "red"})
    with pytest.raises(ConfigError, match="data-path"):
        parse_node_config({"data-path": "/nonexistent/fedhet/data.npz"})


def good_profile(**kw):
    p = {
        "device-id": "d1",
        "device-class": "weak",
        "cores": 2.0,
        "mem-total-bytes": 8_000_000_000,
        "mem-avail-bytes": 4_000_000_000,
        "bench-ms": 30.0,
    }
    p.update(kw)
    return p


def test_profile_rejects_absurd_values():
    assert parse_profile(good_profile()).device_class == "weak"
    with pytest.raises(ConfigError, match="'cores' = -1"):
        parse_profile(good_profile(cores=-1))
    with pytest.raises(ConfigError, match="mem-avail-bytes exceeds"):
        parse_profile(good_profile(**{"mem-avail-bytes": 9_000_000_000}))
    with pytest.raises(ConfigError, match="'bench-ms'"):
        parse_profile(good_profile(**{"bench-ms": 0}))
    with pytest.raises(ConfigError, match="'device-id'"):
        parse_profile({k: v for k, v in good_profile().items() if k != "device-id"})


def test_pyproject_has_every_method_setting_with_its_default():
    """`flwr run -c key=value` only overrides keys present in pyproject.toml."""
    from fedhet.cli import method_config_tables

    expected: dict = {}
    for line in method_config_tables().splitlines():
        if line.startswith("[tool.flwr.app.config."):
            table = line[len("[tool.flwr.app.config.") : -1]
        elif "=" in line:
            key, value = (x.strip() for x in line.split("=", 1))
            expected[f"{table}.{key}"] = tomllib.loads(f"v = {value}")["v"]
    raw = pyproject_run_config()
    method_keys = {k: v for k, v in raw.items() if "." in k}
    assert method_keys == expected, "run `fedhet config-defaults` and update pyproject.toml"
