"""What a ClientApp handler needs, built once per process from Flower's ``Context``.

In deployment a ClientApp may be a fresh process per message, so everything expensive is cached:
parsed configs in-process, partitions on disk (``fedhet.data.federated``), and per-node files
under :meth:`ClientContext.cache_dir`.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict

from fedhet.config import ConfigError, RunConfig
from fedhet.core.codec import as_contiguous
from fedhet.methods import parse_run_config
from fedhet.plan import K, NodePlan, PlanError, fleet_class
from fedhet.profile import NodeSettings, parse_node_config

log = logging.getLogger("fedhet.client")


@functools.lru_cache(maxsize=8)
def _cached_run_config(raw_json: str) -> RunConfig:
    return parse_run_config(json.loads(raw_json))


@dataclass
class ClientContext:
    """Run config, node settings and lazily loaded data of one device."""

    context: Context
    run: RunConfig
    node: NodeSettings

    @classmethod
    def from_context(cls, context: Context) -> ClientContext:
        run = _cached_run_config(json.dumps(dict(context.run_config), sort_keys=True))
        node = parse_node_config(dict(context.node_config))
        if run.shared.num_partitions and node.partition_id is not None:
            node = node.model_copy(update={"num_partitions": run.shared.num_partitions})
            if node.partition_id is not None and node.partition_id >= run.shared.num_partitions:
                raise ConfigError(
                    f"partition-id {node.partition_id} >= run config 'num-partitions' "
                    f"{run.shared.num_partitions}"
                )
        return cls(context, run, node)

    # identity -----------------------------------------------------------------------------------
    @property
    def device_id(self) -> str:
        if self.node.device_id:
            return self.node.device_id
        if self.node.partition_id is not None:
            return f"partition-{self.node.partition_id}"
        return f"node-{self.context.node_id}"

    @property
    def device_class(self) -> str:
        if self.node.device_class:
            return self.node.device_class
        return fleet_class(self.run.shared.fleet, self.node.partition_id, self.node.num_partitions)

    @property
    def simulated(self) -> bool:
        return (
            self.node.partition_id is not None
            and self.node.data_path is None
            and not self.node.device_id
        )

    def cache_dir(self) -> Path:
        root = (
            Path(self.node.cache_dir).expanduser()
            if self.node.cache_dir
            else Path.home() / ".cache" / "fedhet"
        )
        path = root / "nodes" / self.run.shared.run_name / self.device_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    # data ---------------------------------------------------------------------------------------
    def local_batches(self, train: Any, server_round: int) -> Any:
        """This round's local batches: ``local-steps`` (or epochs) of ``batch-size``, seeded by
        (run seed, device, round) so CPU runs are reproducible (METHODS.md §0)."""
        from fedhet.client.training import num_local_steps
        from fedhet.core.seeding import derive_seed

        shared = self.run.shared
        steps = num_local_steps(
            len(train), shared.batch_size, shared.local_epochs, shared.local_steps
        )
        seed = derive_seed(shared.seed, self.device_id, server_round, "batches")
        return train.sample_batches(shared.batch_size, steps, seed=seed)

    def declared_sizes(self) -> tuple[int, int] | None:
        """``(num_train, num_test)`` of this device's image data, declared in its profile so the
        server can cap the example counts of its replies; ``None`` for text tasks."""
        from fedhet.data.catalog import IMAGE_NUM_CLASSES

        if self.run.shared.dataset not in IMAGE_NUM_CLASSES:
            return None
        split = self.data()
        return len(split.train), len(split.test)

    def data(self) -> Any:
        """The device's ``ClientSplit`` (train + local test)."""
        return _client_split(
            self.run.shared.dataset,
            self.node.partition_id,
            self.node.num_partitions,
            self.node.data_path,
            self.run.shared.partition,
            self.run.shared.dirichlet_alpha,
            self.run.shared.pathological_k,
            self.run.shared.seed,
            self.run.shared.max_train_per_client,
            self.run.shared.local_test_size,
            self.run.shared.fleet,
        )


@functools.lru_cache(maxsize=4)
def _client_split(
    dataset: str,
    partition_id: int | None,
    num_partitions: int | None,
    data_path: str | None,
    scheme: str,
    alpha: float,
    k: int,
    seed: int,
    max_train: int,
    local_test_size: int,
    fleet: str = "three-tier",
) -> Any:
    from fedhet.data import federated_split

    if data_path:
        from fedhet.data.catalog import IMAGE_NUM_CLASSES
        from fedhet.data.federated import ClientSplit
        from fedhet.data.user import load_user_data

        # labels stay in the run's class space even when this device has fewer classes
        data = load_user_data(data_path, num_classes=IMAGE_NUM_CLASSES.get(dataset))
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(data))
        n_test = min(max(1, len(data) // 5), local_test_size or len(data) // 5)
        return ClientSplit(
            data.subset(np.sort(order[n_test:])), data.subset(np.sort(order[:n_test])), -1
        )
    if partition_id is None or num_partitions is None:
        raise ConfigError(
            "node config needs 'partition-id' and 'num-partitions' (simulated split) or "
            "'data-path' (the device's own data)"
        )
    return federated_split(
        dataset,
        num_partitions,
        partition_id,
        scheme=scheme,
        alpha=alpha,
        k=k,
        seed=seed,
        max_train=max_train,
        local_test_size=local_test_size,
        groups=fleet_groups(fleet, num_partitions) if scheme == "group-correlated" else None,
    )


def fleet_groups(fleet: str, num_partitions: int) -> list[str]:
    """Device class of every partition id under the simulated ``fleet`` (the groups of the
    ``group-correlated`` split, METHODS.md §6.6 C2)."""
    return [fleet_class(fleet, pid, num_partitions) for pid in range(num_partitions)]


# message helpers -----------------------------------------------------------------------------------
def arrays_of(msg: Message) -> dict[str, np.ndarray]:
    rec = msg.content.array_records.get("arrays", ArrayRecord())
    return {k: v.numpy() for k, v in rec.items()}


def config_of(msg: Message) -> dict[str, Any]:
    return (
        dict(msg.content.config_records["config"]) if "config" in msg.content.config_records else {}
    )


def plan_of(msg: Message, knobs_model: type[K]) -> tuple[NodePlan, K]:
    """The node's plan from a message's config and its knobs validated as ``knobs_model``.

    The plan is the only source of a device's knobs: the server validated it against the same
    model when it planned the node.

    Parameters
    ----------
    msg : Message
        A train or evaluate message.
    knobs_model : type[Knobs]
        The method's knobs model (its folder's ``plan.py``).

    Returns
    -------
    tuple[NodePlan, Knobs]
        The plan (budget, participation) and its typed knobs.

    Raises
    ------
    PlanError
        If the config carries no plan, the plan is malformed, or its knobs do not match
        ``knobs_model`` (wrong method, missing or unknown knobs, out-of-range values).
    """
    raw = config_of(msg).get("plan")
    if raw is None:
        raise PlanError(
            f"the {msg.metadata.message_type!r} message carries no 'plan' in its config; "
            f"expected {knobs_model.__name__} knobs from the server"
        )
    plan = NodePlan.from_json(str(raw))
    return plan, plan.knobs_as(knobs_model)


#: Models built in this process, by (name, build options); see :func:`loaded_model`.
_MODELS: dict[tuple[str, tuple[tuple[str, Any], ...]], torch.nn.Module] = {}


def loaded_model(name: str, arrays: dict[str, np.ndarray], **build: Any) -> torch.nn.Module:
    """``build_model(name, **build)`` holding ``arrays``, built once per process.

    A process that serves many simulated devices (Flower's simulation workers, the in-process
    grid) reuses one instance per architecture: every parameter and buffer is overwritten from
    ``arrays`` (``strict`` load, so a missing tensor is an error) and every parameter is made
    trainable again, so nothing of the previous device's round survives. Only for methods whose
    message carries the whole state dict of the model it describes.
    """
    from fedhet.models import build_model

    key = (name, tuple(sorted(build.items())))
    model = _MODELS.get(key)
    if model is None:
        model = _MODELS[key] = build_model(name, **build)
    model.load_state_dict(
        {k: torch.from_numpy(np.array(v, copy=True)) for k, v in arrays.items()}, strict=True
    )
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None
    model.train()
    return model


def state_to_numpy(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in state.items()}


def numpy_to_state(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in arrays.items()}


def reply_content(arrays: dict[str, np.ndarray] | None, metrics: dict[str, Any]) -> RecordDict:
    """``{"arrays": ArrayRecord, "metrics": MetricRecord}`` (arrays omitted when None)."""
    content: dict[str, Any] = {"metrics": MetricRecord(metrics)}
    if arrays is not None:
        content["arrays"] = ArrayRecord(
            array_dict={k: Array(as_contiguous(v)) for k, v in arrays.items()}
        )
    return RecordDict(content)


def infeasible_reply(reason: str) -> RecordDict:
    """A device that cannot train this round (METHODS.md §2): empty arrays, metric ``infeasible``."""
    log.info("cannot train this round: %s", reason)
    return RecordDict(
        {
            "arrays": ArrayRecord(),
            "metrics": MetricRecord(
                {"infeasible": 1, "num-examples": 0, "train-loss": 0.0, "train-seconds": 0.0}
            ),
        }
    )


# threads and timestamps -------------------------------------------------------------------------
def thread_count(node: NodeSettings, simulated: bool) -> int:
    """torch/OpenMP threads of a ClientApp (issue 13, "Threads").

    ``threads`` from the node config when set; a simulated node gets 1 (many share one host);
    otherwise the cores this process really has (CPU affinity and cgroup quota,
    :func:`fedhet.profile.measure_cores`) divided by the SuperNodes sharing the host
    (``supernodes-per-host``), at least 1.
    """
    if node.threads:
        return node.threads
    if simulated:
        return 1
    from fedhet.profile import measure_cores

    return max(1, int(measure_cores()) // node.supernodes_per_host)


def configure_threads(node: NodeSettings, simulated: bool) -> int:
    """Apply :func:`thread_count` to torch and to the OpenMP/MKL environment; return it."""
    import os

    n = thread_count(node, simulated)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def process_started_at() -> float | None:
    """Epoch seconds when this process was created (Linux ``/proc``), else ``None``.

    Lets the deployment benchmark split a deployed call into waiting for the process, starting
    it (imports, FAB) and running the handler.
    """
    try:
        import os

        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None
