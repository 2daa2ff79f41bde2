"""FL-TAC server: per-device task slots, K-means over uploaded adapters, cluster means back.

FL-TAC (arXiv 2404.15384, METHODS.md §4.2). The server keeps V[device-id, slot] (a slot is a
device's local task index; the server never learns which task is behind it). Every round it sends
each sampled device its slots as ``slot{s}/<canonical key>`` (:mod:`fedhet.methods.fltac.wire`),
stacks the uploaded slots as rows of their flattened LoRA A/B tensors (canonical order, unscaled,
heads excluded), runs K-means with K = number of tasks (METHODS.md B9), averages LoRA tensors and
heads within each cluster (unweighted, paper; ``fltac.weighted`` weights by slot samples) and
stores the cluster mean in every uploaded slot. Slots that were not uploaded follow
``fltac.stale``.

Blindness (issue 10 item 8): the clustering reads only the slot arrays and per-slot example
counts. Task identity never leaves a device outside simulation: devices tag evaluated slots with
their task only when simulated and ``fltac.oracle-eval`` is on, the server reads those tags only
then (from nodes whose profile says simulated), uses them after the round's clustering to log
per-task accuracy and cluster purity, and never writes a slot→task map into a checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from fedhet.config import ConfigError
from fedhet.core.aggregate import Contribution, weighted_mean
from fedhet.core.cluster import cluster_purity, kmeans_labels, nearest_centroid
from fedhet.core.lora import count_trainable, flatten_lora, head_keys, lora_keys
from fedhet.core.seeding import derive_seed
from fedhet.core.task_eval import SLOT_INDEX, SLOT_TASK
from fedhet.methods.fltac.config import FltacConfig
from fedhet.methods.fltac.plan import FltacKnobs
from fedhet.methods.fltac.wire import (
    MAX_SLOTS,
    SLOT_NAME,
    SlotState,
    init_arrays,
    slot_arrays,
    slot_key,
    split_slot_arrays,
)
from fedhet.plan import Budget
from fedhet.profile import DeviceProfile
from fedhet.server.adapters import AdapterStrategy
from fedhet.server.strategy import Node, Reply
from fedhet.server.validate import ArraySpec, ReplyError, spec_of, validate_arrays

log = logging.getLogger("fedhet.fltac")


def lora_row(state: SlotState) -> np.ndarray:
    """Flattened LoRA A/B of a slot in canonical order (:func:`fedhet.core.lora.flatten_lora`)."""
    return flatten_lora(_as_torch(state))


def cluster_slot_states(
    states: Sequence[SlotState],
    k: int,
    seed: int,
    *,
    weights: Sequence[float] | None = None,
    normalise: bool = False,
) -> tuple[np.ndarray, list[SlotState]]:
    """K-means over slot adapters and per-cluster means (FL-TAC §4.2 steps 3–4).

    Parameters
    ----------
    states : sequence of dict
        Uploaded slot states (LoRA A/B and head arrays, same keys and shapes).
    k : int
        Clusters (K = number of tasks). With at most ``k`` states each is its own cluster.
    seed : int
        K-means ``random_state``.
    weights : sequence of float, optional
        Per-state weights of the cluster mean (``fltac.weighted``: slot samples); ``None`` is the
        paper's unweighted mean. A cluster whose weights sum to 0 is averaged unweighted.
    normalise : bool
        Cosine K-means on L2-normalised rows.

    Returns
    -------
    tuple of (numpy.ndarray, list of dict)
        ``labels`` (n,) and ``means[c]``: mean LoRA tensors **and heads** of cluster c (the head
        is averaged along, never clustered on; METHODS.md §4.4).
    """
    if not states:
        return np.zeros(0, dtype=np.int64), []
    rows = np.stack([lora_row(s) for s in states])
    labels, _ = kmeans_labels(rows, k, seed, normalise=normalise)
    w = [1.0] * len(states) if weights is None else [float(x) for x in weights]
    means: list[SlotState] = []
    for c in range(int(labels.max()) + 1):
        members = [int(i) for i in np.flatnonzero(labels == c)]
        contribs = [Contribution(states[i], w[i]) for i in members]
        means.append(weighted_mean(contribs, states[members[0]]))
    return labels, means


def _as_torch(state: SlotState) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}


class FltacStrategy(AdapterStrategy):
    """FL-TAC server (arXiv 2404.15384): adapter clustering over blind task slots.

    ``global_arrays`` holds the K current cluster means as ``cluster{c}/<key>`` (what a
    checkpoint restores alongside the slot table); what each device receives is its own slots.
    """

    name: ClassVar[str] = "fltac"
    knobs_model = FltacKnobs
    personalised: ClassVar[bool] = True

    mcfg: FltacConfig

    # ------------------------------------------------------------------------------------------
    # setup
    # ------------------------------------------------------------------------------------------
    def initial_arrays(self) -> dict[str, np.ndarray]:
        """v⁰ (seeded peft init, B = 0, seeded C_max-way head) for each of the K clusters."""
        mcfg: FltacConfig = self.mcfg  # type: ignore[assignment]
        try:
            classes = self.dataset_task_classes()
        except ConfigError as exc:
            if not (mcfg.k and mcfg.num_labels):
                raise ConfigError(
                    f"FL-TAC server cannot read the tasks of dataset {self.shared.dataset!r} "
                    f"({exc}); set 'fltac.k' and 'fltac.num-labels' explicitly"
                ) from None
            classes = {}
        self.task_names = list(classes)
        self.num_labels = mcfg.num_labels or max(classes.values())
        self.k = mcfg.k or len(classes)
        model, self.v0 = self.build_adapter_model(self.num_labels)
        self.slot_spec: dict[str, ArraySpec] = spec_of(self.v0)
        self.lora_params = int(sum(self.v0[k].size for k in lora_keys(_as_torch(self.v0))))
        self.head_params = int(sum(self.v0[k].size for k in head_keys(_as_torch(self.v0))))
        if count_trainable(model) != self.lora_params + self.head_params:
            raise RuntimeError("FL-TAC: trainable parameters differ from one slot's state")
        # V[device-id][slot] and the cluster labels of this round's uploads
        self.slots: dict[str, dict[int, SlotState]] = {}
        self.round_labels: dict[tuple[str, int], int] = {}
        # oracle evaluator only (fltac.oracle-eval, simulated nodes): never checkpointed
        self.eval_slot_tasks: dict[tuple[str, int], int] = {}
        return {f"cluster{c}/{k}": v.copy() for c in range(self.k) for k, v in self.v0.items()}

    def plan_knobs(self, profile: DeviceProfile, budget: Budget) -> tuple[bool, FltacKnobs, str]:
        """τ_i and the share of slots per round from the time budget T (METHODS.md §2).

        Rank is fleet-wide (K-means needs equal shapes). ``fltac.scale-steps``:
        τ_i = max(1, round(τ·T)); ``fltac.scale-slots``: at most ⌈T·n_i⌉ slots per round.
        Every device participates.
        """
        mcfg: FltacConfig = self.mcfg  # type: ignore[assignment]
        steps = max(1, round(mcfg.steps * budget.time)) if mcfg.scale_steps else mcfg.steps
        share = float(budget.time) if mcfg.scale_slots else 1.0
        return True, FltacKnobs(steps=steps, slot_share=share, rank=mcfg.rank), ""

    def summary(self) -> None:
        """Log the settings, K, C_max and the per-slot parameter counts."""
        super().summary()
        mcfg: FltacConfig = self.mcfg  # type: ignore[assignment]
        log.info(
            "  FL-TAC: K=%d, C_max=%d, rank %d: %d LoRA + %d head values per slot; backbone %d "
            "(frozen, never sent); oracle evaluator %s",
            self.k,
            self.num_labels,
            mcfg.rank,
            self.lora_params,
            self.head_params,
            self.backbone_params,
            f"on (simulated nodes; tasks {self.task_names})" if mcfg.oracle_eval else "off",
        )

    # ------------------------------------------------------------------------------------------
    # messages
    # ------------------------------------------------------------------------------------------
    def _known_slots(self, node: Node) -> dict[int, SlotState]:
        known = self.slots.get(node.device_id)
        if known is None and node.profile.n_tasks > 0:
            # declared tasks: the slot count is known before the first reply
            known = {
                s: {k: v.copy() for k, v in self.v0.items()} for s in range(node.profile.n_tasks)
            }
            self.slots[node.device_id] = known
        return known or {}

    def _slot_payload(self, node: Node) -> dict[str, np.ndarray]:
        known = self._known_slots(node)
        if known:
            return slot_arrays(known)
        return init_arrays(self.v0)

    def train_payload(
        self, node: Node, server_round: int
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The device's slots (or v⁰ as ``init/`` before its slot count is known), lr, slot count.

        τ_i and the slot share travel in the plan (:class:`~fedhet.methods.fltac.plan.FltacKnobs`).
        """
        mcfg: FltacConfig = self.mcfg  # type: ignore[assignment]
        extra = {
            "lr": float(mcfg.lr),
            "num-slots": len(self._known_slots(node)),
        }
        return self._slot_payload(node), extra

    def eval_payload(
        self, node: Node, server_round: int
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The device's current slots (its cluster means after this round's aggregation)."""
        return self._slot_payload(node), {"num-slots": len(self._known_slots(node))}

    def expected_reply(self, node: Node, server_round: int) -> dict[str, ArraySpec]:
        """Every known slot with the canonical keys (a device may upload a subset)."""
        return {
            slot_key(s, k): spec
            for s in self._known_slots(node)
            for k, spec in self.slot_spec.items()
        }

    def reply_spec(
        self, node: Node, server_round: int, names: list[str]
    ) -> tuple[dict[str, ArraySpec], dict[str, int]]:
        """Checked before decoding: the device's known slots, or (slot count not yet known) the
        slots its array names give, below ``MAX_SLOTS``."""
        if self._known_slots(node):
            return self.expected_reply(node, server_round), {}
        slots = {int(m.group(1)) for n in names if (m := SLOT_NAME.match(n))}
        spec = {
            f"slot{s}/{k}": v
            for s in sorted(slots)
            if s < MAX_SLOTS
            for k, v in self.slot_spec.items()
        }
        return spec, {}

    def validate_reply(
        self, node: Node, server_round: int, arrays: dict[str, np.ndarray], metrics: dict[str, Any]
    ) -> None:
        """Names ``slot{s}/<key>``, each uploaded slot complete; shapes, dtypes, finite values."""
        try:
            uploaded = split_slot_arrays(arrays)
        except ValueError as exc:
            raise ReplyError(str(exc)) from None
        if not uploaded:
            raise ReplyError("no slot uploaded")
        known = self._known_slots(node)
        for s in uploaded:
            if s >= MAX_SLOTS or (known and s not in known):
                raise ReplyError(f"slot {s} is not one of this device's slots {sorted(known)}")
        expected = {slot_key(s, k): spec for s in uploaded for k, spec in self.slot_spec.items()}
        validate_arrays(arrays, expected, required=True)
        for key in ("slot-loss", "slot-examples"):
            values = list(metrics.get(key, []))
            if len(values) != len(uploaded):
                raise ReplyError(
                    f"metric {key!r} has {len(values)} values for {len(uploaded)} slots"
                )
            if not all(np.isfinite(float(v)) and float(v) >= 0 for v in values):
                raise ReplyError(f"metric {key!r} has negative or non-finite values")
        if any(float(n) <= 0 for n in metrics["slot-examples"]):
            # a slot without examples cannot have trained; its weight would be zero
            raise ReplyError("metric 'slot-examples' has a slot with no examples")

    # ------------------------------------------------------------------------------------------
    # aggregation
    # ------------------------------------------------------------------------------------------
    def aggregate(self, server_round: int, replies: list[Reply]) -> None:
        """K-means over uploaded slots; each uploaded slot gets its cluster mean (§4.2 3–5)."""
        mcfg: FltacConfig = self.mcfg  # type: ignore[assignment]
        owners: list[tuple[str, int]] = []
        states: list[SlotState] = []
        weights: list[float] = []
        for reply in replies:
            uploaded = split_slot_arrays(reply.arrays)
            examples = list(reply.metrics.get("slot-examples", [1] * len(uploaded)))
            for (s, state), n in zip(uploaded.items(), examples, strict=True):
                owners.append((reply.node.device_id, s))
                states.append(state)
                weights.append(float(n))
        seed = derive_seed(self.shared.seed, server_round, "kmeans")
        labels, means = cluster_slot_states(
            states,
            self.k,
            seed,
            weights=weights if mcfg.weighted else None,
            normalise=mcfg.normalise,
        )
        self.round_labels = {owner: int(c) for owner, c in zip(owners, labels, strict=True)}
        for (device, s), c in self.round_labels.items():
            self.slots.setdefault(device, {})[s] = {k: v.copy() for k, v in means[c].items()}
        stale = self._update_stale(means, set(owners))
        for c, mean in enumerate(means[: self.k]):
            for key, value in mean.items():
                self.global_arrays[f"cluster{c}/{key}"] = value.copy()
        sizes = np.bincount(labels, minlength=len(means)).tolist() if len(labels) else []
        n_devices = len(replies)
        self.current.extras.update(
            {
                "fltac-cluster-sizes": sorted(sizes, reverse=True),
                "fltac-uploaded-slots": len(states),
                "fltac-stale-slots": stale,
                "trainable-params-per-slot": self.lora_params + self.head_params,
                "lora-params-per-slot": self.lora_params,
                "head-params-per-slot": self.head_params,
                "uploaded-params": len(states) * (self.lora_params + self.head_params),
                **self.full_finetune_extras(n_devices),
            }
        )
        log.info(
            "round %d: %d slots from %d devices → clusters of sizes %s",
            server_round,
            len(states),
            n_devices,
            sorted(sizes, reverse=True),
        )

    def _update_stale(self, means: list[SlotState], uploaded: set[tuple[str, int]]) -> int:
        """Apply ``fltac.stale`` to stored slots that were not uploaded this round."""
        mcfg: FltacConfig = self.mcfg  # type: ignore[assignment]
        if not means or mcfg.stale == "keep":
            return sum(1 for d, ss in self.slots.items() for s in ss if (d, s) not in uploaded)
        centroids = np.stack([lora_row(m) for m in means])
        metric = "cosine" if mcfg.normalise else "euclidean"
        count = 0
        for device, slots in self.slots.items():
            for s, state in slots.items():
                if (device, s) in uploaded:
                    continue
                c = nearest_centroid(lora_row(state), centroids, metric=metric)
                slots[s] = {k: v.copy() for k, v in means[c].items()}
                count += 1
        return count

    # ------------------------------------------------------------------------------------------
    # evaluation (oracle evaluator: simulation only, behind fltac.oracle-eval)
    # ------------------------------------------------------------------------------------------
    def reads_task_tags(self, node: Node) -> bool:
        """Only with ``fltac.oracle-eval`` and only from nodes whose profile says simulated."""
        return bool(self.mcfg.oracle_eval) and node.profile.simulated  # type: ignore[attr-defined]

    def evaluate_tasks(self, server_round: int, tagged: list[tuple[Node, dict[str, Any]]]) -> None:
        """Per-task accuracy and the purity of this round's clusters against the true tasks.

        Runs after the round's clustering; nothing here feeds back into the algorithm.
        """
        super().evaluate_tasks(server_round, tagged)
        for node, m in tagged:
            indices, tags = m.get(SLOT_INDEX), m.get(SLOT_TASK)
            if isinstance(indices, list) and isinstance(tags, list):
                for s, tag in zip(indices, tags, strict=False):
                    self.eval_slot_tasks[(node.device_id, int(s))] = int(tag)
        known = [o for o in self.round_labels if o in self.eval_slot_tasks]
        if known:
            purity = cluster_purity(
                np.array([self.round_labels[o] for o in known]),
                np.array([self.eval_slot_tasks[o] for o in known]),
            )
            self.current.extras["cluster-purity"] = purity
            log.info(
                "round %d: cluster purity %.3f over %d slots", server_round, purity, len(known)
            )

    # ------------------------------------------------------------------------------------------
    # checkpoints: the slot table only (no task map, whatever the evaluator knew)
    # ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """V[device-id][slot] as tensors."""
        return {
            "slots": {
                device: {
                    s: {k: torch.from_numpy(np.array(v)) for k, v in st.items()}
                    for s, st in slots.items()
                }
                for device, slots in self.slots.items()
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore V[device-id][slot]; a task map in an older checkpoint is ignored."""
        self.slots = {
            device: {
                int(s): {k: v.numpy().copy() for k, v in st.items()} for s, st in slots.items()
            }
            for device, slots in state.get("slots", {}).items()
        }
        if "eval-slot-tasks" in state:
            log.warning("checkpoint holds a slot→task map (older fedhet); ignored")
