"""Per-method defaults (`dataset`/`model` = auto) and what each registered method accepts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from fedhet.config import AUTO, ConfigError, default_run_config
from fedhet.config import parse_run_config as parse_with
from fedhet.data.catalog import DATASETS, IMAGE_DATASETS, PARTITIONS, TEXT_DATASETS
from fedhet.methods import METHODS, MethodEntry, parse_run_config
from fedhet.models.catalog import IMAGE_MODELS, TEXT_MODELS, UNIT_MODELS, WIDTH_MODELS

ROOT = Path(__file__).resolve().parents[2]


def test_shared_defaults_are_auto():
    raw = default_run_config()
    assert raw["dataset"] == AUTO and raw["model"] == AUTO


@pytest.mark.parametrize("name", list(METHODS))
def test_auto_resolves_to_the_registered_defaults(name):
    entry = METHODS[name]
    cfg = parse_run_config(default_run_config(method=name))
    assert cfg.shared.dataset == entry.default_dataset
    assert cfg.shared.model == entry.default_model
    # the config devices re-parse and a resumed run compares holds the resolved values
    assert cfg.raw["dataset"] == entry.default_dataset and cfg.raw["model"] == entry.default_model
    assert parse_run_config(cfg.raw).shared == cfg.shared


def test_registered_defaults_of_the_issue_cases():
    assert parse_run_config(default_run_config(method="cocofl")).shared.model in UNIT_MODELS
    fltac = parse_run_config(default_run_config(method="fltac")).shared
    assert fltac.dataset in TEXT_DATASETS and fltac.model in TEXT_MODELS


def test_explicit_compatible_choice_is_kept():
    cfg = parse_run_config(default_run_config(method="fiarse", dataset="digits", model="cnn_b"))
    assert (cfg.shared.dataset, cfg.shared.model) == ("digits", "cnn_b")


@pytest.mark.parametrize(
    ("method", "key", "value", "accepted"),
    [
        ("cocofl", "model", "cnn_s", UNIT_MODELS),
        ("fltac", "dataset", "fashion-mnist", TEXT_DATASETS),
        ("fltac", "model", "cnn_s", TEXT_MODELS),
        ("fedit", "model", "cnn_b", TEXT_MODELS),
        ("fedavg", "dataset", "text-tasks", IMAGE_DATASETS),
        ("fedavg", "model", "minilm", IMAGE_MODELS),
        ("heterofl", "model", "resnet_s", WIDTH_MODELS),
    ],
)
def test_incompatible_choice_names_key_method_and_accepted(method, key, value, accepted):
    raw = default_run_config(method=method, **{key: value})
    with pytest.raises(ConfigError) as err:
        parse_run_config(raw)
    msg = str(err.value)
    assert f"'{key}' = {value!r}" in msg
    assert repr(method) in msg
    assert ", ".join(accepted) in msg


def test_unknown_dataset_is_a_config_error():
    with pytest.raises(ConfigError, match="'dataset' = 'cifar'"):
        parse_run_config(default_run_config(dataset="cifar"))


class _Knobs(BaseModel):
    x: int = 1


class _Info:
    """A stand-in registry entry: the parser takes any lookup with these attributes."""

    default_dataset = "digits"
    default_model = "cnn_s"
    datasets = ("digits",)
    models = ("cnn_s", "cnn_b")
    config_cls = _Knobs


def test_parser_takes_the_registry_as_an_argument():
    cfg = parse_with(default_run_config(method="toy", **{"toy.x": 3}), {"toy": _Info()})
    assert cfg.method == _Knobs(x=3) and cfg.shared.dataset == "digits"
    with pytest.raises(ConfigError, match="'method' = 'fedavg'"):
        parse_with(default_run_config(), {"toy": _Info()})


def test_registry_entries_are_consistent():
    for entry in METHODS.values():
        assert set(entry.datasets) <= set(DATASETS), entry.name
        assert set(entry.models) <= set(IMAGE_MODELS + TEXT_MODELS), entry.name
    with pytest.raises(ValueError, match="default model"):
        MethodEntry("x", "a:b", "a:c", "a", "x", models=("cnn_b",))


def test_catalogs_match_the_code_that_builds_them():
    """The name lists are the one definition; the builders must agree with them."""
    from fedhet.core.width import WIDTH_MODELS as CORE_WIDTH
    from fedhet.data.partition import _REGISTRY
    from fedhet.models import build_model
    from fedhet.models.text import TEXT_MODELS as TEXT_BUILT

    assert set(_REGISTRY) == set(PARTITIONS)
    assert tuple(CORE_WIDTH) == WIDTH_MODELS
    assert tuple(TEXT_BUILT) == TEXT_MODELS
    with_units = tuple(m for m in IMAGE_MODELS if hasattr(build_model(m), "units"))
    assert with_units == UNIT_MODELS


def test_parsing_imports_no_torch_flower_or_transformers():
    code = (
        "import sys, json\n"
        "from fedhet.config import default_run_config\n"
        "from fedhet.methods import METHODS, parse_run_config\n"
        "for m in METHODS:\n"
        "    parse_run_config(default_run_config(method=m))\n"
        "heavy = sorted({k.split('.')[0] for k in sys.modules} & {'torch', 'flwr', 'transformers'})\n"
        "print(json.dumps(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_device_classes_come_from_the_class_table():
    from fedhet.plan import CLASS_BUDGETS, DEVICE_CLASSES, fleet_class
    from fedhet.profile import parse_node_config

    assert (*CLASS_BUDGETS, "custom") == DEVICE_CLASSES
    for name in DEVICE_CLASSES:
        assert parse_node_config({"device-class": name}).device_class == name
    with pytest.raises(ConfigError, match="use one of " + ", ".join(DEVICE_CLASSES)):
        parse_node_config({"device-class": "huge"})
    with pytest.raises(ConfigError, match="allowed: " + ", ".join(DEVICE_CLASSES)):
        fleet_class('["strong", "huge"]', 1, 2)


def test_local_fleet_classes_are_device_classes():
    from fedhet.deploy.fleet import LOCAL_FLEET_CLASSES
    from fedhet.plan import DEVICE_CLASSES

    assert set(LOCAL_FLEET_CLASSES) <= set(DEVICE_CLASSES) - {"custom"}
