"""FIARSE server: per-device top-γ submodels by magnitude, sparse payloads, holder averaging.

Wu et al., "FIARSE: Model-Heterogeneous Federated Learning via Importance-Aware Submodel
Extraction", NeurIPS 2024, arXiv 2407.19389; METHODS.md §7. Each round and sampled device the
server computes thresholds τ on the global model's magnitudes (B3), sends the kept values with a
bitmask plus the dense tensors and τ (B1), receives the update on that mask as values only, and
averages every coordinate over the devices that held it (B2 ``holders``). Evaluation extracts the
top-γ submodel for every ladder size (§7.2 step 7).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from fedhet.config import RunConfig
from fedhet.core.aggregate import Contribution
from fedhet.core.codec import VALUES, decode_payload, encode_sparse
from fedhet.core.masks import (
    magnitude_thresholds,
    masks_from_thresholds,
    realised_density,
    submodel_mask_spec,
)
from fedhet.methods.fiarse.config import FiarseConfig
from fedhet.methods.fiarse.plan import FiarseKnobs
from fedhet.methods.fiarse.wire import THRESHOLDS_KEY
from fedhet.server.run_dir import RunDir
from fedhet.server.sizes import SizedStrategy
from fedhet.server.strategy import Node, Reply
from fedhet.server.validate import ArraySpec, ReplyError, validate_arrays

log = logging.getLogger("fedhet")


class FiarseStrategy(SizedStrategy):
    """FIARSE (arXiv 2407.19389, Algorithm 1) on the fedhet base strategy.

    Plan (METHODS.md §2): knob ``gamma`` from ``fiarse.gamma`` if declared, else from
    ``fiarse.size-assignment`` (largest ladder size ≤ min(T, M, D_min), or equal groups by
    partition id). Per round the server keeps, for every sampled device, the mask it sent; a reply
    must carry exactly the mask's kept count of values per masked tensor, else it is dropped.

    Metrics added to ``metrics.jsonl`` (METHODS.md §7.2 step 7): ``server-accuracy`` = Global
    (global-test accuracy of the top-γ submodel, averaged over ladder sizes),
    ``server-accuracy-g<γ>`` per size (also for ``fiarse.eval-sizes``), ``model-accuracy-g<γ>`` =
    Model(γ) (pooled accuracy of size γ on the local tests of size-γ devices), ``local-accuracy``
    = Local (mean over devices of their own size's local-test accuracy), ``train-bytes-down`` /
    ``train-bytes-up`` (training messages only), and per node ``fiarse-gamma`` and
    ``fiarse-density`` (realised density, ties included).
    """

    name: ClassVar[str] = "fiarse"
    #: Train and evaluate messages carry the same own-size top-γ submodel (``_payload``).
    fused_evaluation: ClassVar[bool] = True
    knobs_model = FiarseKnobs
    replies_are_updates: ClassVar[bool] = True  # values and dense arrays are differences
    aggregates_with_combine: ClassVar[bool] = True

    def __init__(self, cfg: RunConfig, run_dir: RunDir | None = None) -> None:
        super().__init__(cfg, run_dir)
        self.fcfg: FiarseConfig = cfg.method_as(FiarseConfig)
        from fedhet.models import build_model

        self.maskable, self.dense, self.groups = submodel_mask_spec(
            build_model(self.shared.model), dense_first_last=self.fcfg.dense == "first,last"
        )
        self.shapes = {k: tuple(v.shape) for k, v in self.global_arrays.items()}
        self._round_masks: dict[str, dict[str, np.ndarray]] = {}
        self._cache_owner: dict[str, np.ndarray] | None = None
        self._cache: dict[float, tuple[dict[str, float], dict[str, np.ndarray]]] = {}

    # plan -------------------------------------------------------------------------------------
    # submodels --------------------------------------------------------------------------------
    def submodel(self, gamma: float) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """τ per masked tensor and the masks ``1[|x| >= τ]`` of the current global model.

        Cached per size until the global model changes (every device of a size shares them).
        """
        if self._cache_owner is not self.global_arrays:
            self._cache_owner, self._cache = self.global_arrays, {}
        if gamma not in self._cache:
            state = {k: torch.from_numpy(np.asarray(v)) for k, v in self.global_arrays.items()}
            tau = magnitude_thresholds(
                state, gamma, self.maskable, self.fcfg.scope, self.groups, self.dense
            )
            masked_tau = {n: tau[n] for n in self.maskable}
            masks = {k: v.numpy() for k, v in masks_from_thresholds(state, masked_tau).items()}
            self._cache[gamma] = (masked_tau, masks)
        return self._cache[gamma]

    def encode_submodel(self, masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Download payload: kept values + bitmask per masked tensor, the rest dense (B1, §7.3)."""
        encoding = "bitmask" if self.fcfg.encoding == "bitmask" else None
        payload: dict[str, np.ndarray] = {}
        for name, arr in self.global_arrays.items():
            if name in masks:
                payload.update(encode_sparse(name, np.asarray(arr), masks[name], encoding))
            else:
                payload[name] = arr
        return payload

    def _masked_state(self, masks: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {
            k: torch.from_numpy(
                np.where(masks[k], v, 0).astype(v.dtype) if k in masks else v.copy()
            )
            for k, v in self.global_arrays.items()
        }

    def _payload(
        self, node: Node
    ) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, np.ndarray]]:
        gamma = node.plan.knobs_as(FiarseKnobs).gamma
        tau, masks = self.submodel(gamma)
        config = {THRESHOLDS_KEY: json.dumps(tau)}
        return self.encode_submodel(masks), config, masks

    # rounds -----------------------------------------------------------------------------------
    def train_payload(
        self, node: Node, server_round: int
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        payload, config, masks = self._payload(node)
        self._round_masks[node.device_id] = masks
        entry = self.current.node(node)
        entry["fiarse-gamma"] = node.plan.knobs_as(FiarseKnobs).gamma
        entry["fiarse-density"] = realised_density(
            {k: torch.from_numpy(m) for k, m in masks.items()},
            {k: torch.from_numpy(np.asarray(v)) for k, v in self.global_arrays.items()},
        )
        return payload, config

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._round_masks = {}
        return list(super().configure_train(server_round, arrays, config, grid))

    def expected_reply(self, node: Node, server_round: int) -> dict[str, ArraySpec]:
        masks = self._round_masks.get(node.device_id)
        if masks is None:
            raise ReplyError("no submodel was sent to this device this round")
        spec: dict[str, ArraySpec] = {}
        for name, arr in self.global_arrays.items():
            if name in masks:
                spec[name + VALUES] = ((-1,), np.dtype(arr.dtype))
            else:
                spec[name] = (tuple(arr.shape), np.dtype(arr.dtype))
        return spec

    def reply_spec(
        self, node: Node, server_round: int, names: list[str]
    ) -> tuple[dict[str, ArraySpec], dict[str, int]]:
        """Checked before decoding: each values array has exactly its mask's kept count."""
        masks = self._round_masks.get(node.device_id, {})
        return self.expected_reply(node, server_round), {
            name + VALUES: int(m.sum()) for name, m in masks.items()
        }

    def validate_reply(
        self, node: Node, server_round: int, arrays: dict[str, np.ndarray], metrics: dict[str, Any]
    ) -> None:
        """Values only on the received mask: one values array per masked tensor with exactly the
        mask's kept count, dense updates for the rest (METHODS.md B1, §7.2 step 5)."""
        expected = self.expected_reply(node, server_round)
        masks = self._round_masks[node.device_id]
        sizes = {name + VALUES: int(m.sum()) for name, m in masks.items()}
        validate_arrays(arrays, expected, required=True, sizes=sizes)

    def aggregate(self, server_round: int, replies: list[Reply]) -> None:
        """B2 ``holders``, unweighted, η_g = ``fiarse.server-lr`` (METHODS.md §7.2 step 6).

        Holders of a coordinate are the devices whose received mask covers it
        (``fiarse.holders=nonzero``: whose update there is ≠ 0). Coordinates nobody holds keep
        their value.
        """
        base = self.global_arrays
        contribs: list[Contribution] = []
        for reply in replies:
            masks = self._round_masks[reply.node.device_id]
            updates, carried = decode_payload(reply.arrays, self.shapes, masks=masks)
            tensors: dict[str, np.ndarray] = {}
            held: dict[str, np.ndarray | bool] = {}
            for name, upd in updates.items():
                tensors[name] = np.asarray(base[name], dtype=np.float64) + upd
                h = carried[name]
                if self.fcfg.holders == "nonzero":
                    h = h & (upd != 0)
                held[name] = h
            contribs.append(Contribution(tensors, 1.0, held))
        if not contribs:
            return
        covered = sum(
            int(np.logical_or.reduce([np.asarray(c.masks[n]) for c in contribs]).sum())
            for n in self.maskable
        )
        self.current.extras["fiarse-held-fraction"] = covered / sum(
            int(np.prod(self.shapes[n])) for n in self.maskable
        )
        self.global_arrays = self.combine(
            contribs, base, mode="holders", server_lr=self.fcfg.server_lr
        )

    # evaluation -------------------------------------------------------------------------------
    def eval_payload(
        self, node: Node, server_round: int
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The device's own-size top-γ submodel, encoded as for training."""
        payload, config, _ = self._payload(node)
        return payload, config

    def evaluation_sizes(self) -> tuple[float, ...]:
        """Ladder plus ``fiarse.eval-sizes`` (unseen sizes)."""
        return self.fcfg.evaluation_sizes

    def size_model(self, gamma: float, num_classes: int) -> Any:
        """The top-γ submodel by magnitude: the global model with entries below τ zeroed."""
        from fedhet.models import build_model

        _, masks = self.submodel(gamma)
        model = build_model(self.shared.model, num_classes=num_classes)
        model.load_state_dict(self._masked_state(masks))
        return model

    def summary(self) -> None:
        super().summary()
        d_masked = sum(int(np.prod(self.shapes[n])) for n in self.maskable)
        d_dense = sum(int(np.prod(self.shapes[n])) for n in self.dense)
        log.info(
            "  fiarse: sizes %s, %d maskable / %d dense parameters, masked tensors %s",
            self.fcfg.sizes,
            d_masked,
            d_dense,
            self.maskable,
        )
