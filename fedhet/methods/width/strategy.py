"""HeteroFL and FedRolex servers: width-β slices of one global model, holder averaging.

Both send each device a dense slice keeping ⌈β·C⌉ units of every hidden layer (β = √γ, so a
device of size γ trains about γ of the parameters, as in FIARSE) and average every coordinate
over the devices that held it (METHODS.md B2 ``holders``, B12). They differ only in which units:
HeteroFL (Diao et al., ICLR 2021) keeps the first ones every round; FedRolex (Alam et al.,
NeurIPS 2022) rolls the window by one unit per round. Evaluation uses the static slice.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from fedhet.config import ConfigError, RunConfig
from fedhet.core.aggregate import Contribution
from fedhet.core.width import (
    WIDTH_MODELS,
    classifier_keys,
    extract_submodel,
    restrict_to_classes,
    scatter_submodel,
    width_indices,
)
from fedhet.methods.width.config import WidthConfig
from fedhet.methods.width.plan import WidthKnobs
from fedhet.plan import Budget
from fedhet.profile import DeviceProfile
from fedhet.server.run_dir import RunDir
from fedhet.server.sizes import SizedStrategy
from fedhet.server.strategy import Node, Reply
from fedhet.server.validate import ArraySpec, ReplyError, spec_of

log = logging.getLogger("fedhet")


class WidthStrategy(SizedStrategy):
    """Shared server of the width baselines; subclasses set :attr:`mode`.

    Plan knobs (:class:`~fedhet.methods.width.plan.WidthKnobs`): ``gamma`` (as FIARSE assigns
    it) and ``beta`` = √γ; the device reads β from its plan. The rolling window's start is the
    server's business (it cuts the slice) and is logged per node as ``width-offset``. Metrics as
    FIARSE's: ``server-accuracy`` = Global (mean over ladder sizes of the static slice's
    global-test accuracy), ``server-accuracy-g<γ>``, ``model-accuracy-g<γ>``, ``local-accuracy``,
    ``train-bytes-down`` / ``train-bytes-up``.
    """

    name: ClassVar[str] = "width"
    aggregates_with_combine: ClassVar[bool] = True
    #: ``static`` (HeteroFL) or ``rolling`` (FedRolex), see :func:`fedhet.core.width.kept_units`.
    mode: ClassVar[str] = "static"
    knobs_model = WidthKnobs

    def __init__(self, cfg: RunConfig, run_dir: RunDir | None = None) -> None:
        super().__init__(cfg, run_dir)
        if self.shared.model not in WIDTH_MODELS:
            raise ConfigError(
                f"invalid run config: 'model' = {self.shared.model!r}; {self.name} supports "
                f"{', '.join(WIDTH_MODELS)}"
            )
        self.wcfg: WidthConfig = cfg.method_as(WidthConfig)
        self._round_indices: dict[str, dict[str, list[torch.Tensor]]] = {}
        self._round_specs: dict[str, dict[str, ArraySpec]] = {}

    # plan -------------------------------------------------------------------------------------
    # slices -----------------------------------------------------------------------------------
    def plan_knobs(self, profile: DeviceProfile, budget: Budget) -> tuple[bool, WidthKnobs, str]:
        """The shared size plan plus width β = √γ (so slices match FIARSE's parameter budget)."""
        gamma, source = self.device_size(profile, budget)
        return True, WidthKnobs(gamma=gamma, size_source=source, beta=math.sqrt(gamma)), ""

    def _global_torch(self) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.asarray(v)) for k, v in self.global_arrays.items()}

    def offset(self, server_round: int) -> int:
        """Start of the kept window in ``server_round``: t − 1 (rolling) or 0 (static)."""
        return server_round - 1 if self.mode == "rolling" else 0

    def slice_for(
        self, beta: float, mode: str, offset: int
    ) -> tuple[dict[str, list[torch.Tensor]], dict[str, np.ndarray]]:
        """Indices and the dense slice of the global model (METHODS.md B12)."""
        state = self._global_torch()
        idx = width_indices(state, self.shared.model, beta, mode, offset)
        sub = extract_submodel(state, idx)
        return idx, {k: v.numpy() for k, v in sub.items()}

    # rounds -----------------------------------------------------------------------------------
    def train_payload(
        self, node: Node, server_round: int
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        knobs = node.plan.knobs_as(WidthKnobs)
        beta = knobs.beta
        offset = self.offset(server_round)
        idx, sub = self.slice_for(beta, self.mode, offset)
        self._round_indices[node.device_id] = idx
        self._round_specs[node.device_id] = spec_of(sub)
        entry = self.current.node(node)
        entry["width-gamma"] = knobs.gamma
        entry["width-beta"] = beta
        entry["width-offset"] = offset
        return sub, {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._round_indices, self._round_specs = {}, {}
        return list(super().configure_train(server_round, arrays, config, grid))

    def expected_reply(self, node: Node, server_round: int) -> dict[str, ArraySpec]:
        spec = self._round_specs.get(node.device_id)
        if spec is None:
            raise ReplyError("no slice was sent to this device this round")
        return spec

    def validate_reply(
        self, node: Node, server_round: int, arrays: dict[str, np.ndarray], metrics: dict[str, Any]
    ) -> None:
        """The slice's names, shapes and dtypes; with ``label-mask`` also ``label-classes``: a
        non-empty list of distinct class indices of the classifier."""
        super().validate_reply(node, server_round, arrays, metrics)
        if self.wcfg.label_mask:
            self.reply_classes(metrics)

    def reply_classes(self, metrics: dict[str, Any]) -> list[int]:
        """The ``label-classes`` a reply reports, checked (raises :class:`ReplyError`)."""
        num_classes = int(self.global_arrays[classifier_keys(self.shared.model)[0]].shape[0])
        raw = metrics.get("label-classes")
        if not isinstance(raw, list) or not raw:
            raise ReplyError("label-mask is on but the reply has no 'label-classes' list")
        classes = [int(c) for c in raw]
        if any(c != v for c, v in zip(classes, raw, strict=True)) or len(set(classes)) != len(
            classes
        ):
            raise ReplyError(f"'label-classes' must be distinct integers, got {raw!r}")
        if min(classes) < 0 or max(classes) >= num_classes:
            raise ReplyError(f"'label-classes' outside [0, {num_classes}): {raw!r}")
        return classes

    #: The aggregate is B2 ``holders`` over one contribution per reply: streamed (issue 15 item 4).
    aggregate_is_masked: ClassVar[bool] = True

    def aggregate(self, server_round: int, replies: list[Reply]) -> None:
        """B2 ``holders``, unweighted, η_g = ``server-lr``: each coordinate averaged over the
        devices whose slice held it (HeteroFL §3, FedRolex §3); unheld coordinates unchanged.
        With ``label-mask`` a device holds only the classifier rows of its ``label-classes``."""
        contribs = [self.contribution(server_round, r) for r in replies]
        if contribs:
            mode, server_lr = self.masked_settings()
            self.global_arrays = self.combine(
                contribs, self.global_arrays, mode=mode, server_lr=server_lr
            )

    def masked_settings(self) -> tuple[str, float]:
        """``holders`` with η_g = ``server-lr``."""
        return "holders", self.wcfg.server_lr

    def contribution(self, server_round: int, reply: Reply) -> Contribution:
        """The reply's slice scattered into the full model, held where the slice (and, with
        ``label-mask``, the device's classes) covers it; unit weight."""
        base = self.global_arrays
        idx = self._round_indices[reply.node.device_id]
        sub = {k: torch.from_numpy(np.asarray(v)) for k, v in reply.arrays.items()}
        values, held = scatter_submodel(sub, idx, self._global_torch())
        if self.wcfg.label_mask:
            head = classifier_keys(self.shared.model)
            held = restrict_to_classes(held, head, self.reply_classes(reply.metrics))
        tensors: dict[str, np.ndarray] = {}
        masks: dict[str, np.ndarray | bool] = {}
        for name, val in values.items():
            h = held[name].numpy()
            tensors[name] = np.where(h, val.numpy(), base[name])
            masks[name] = h
        return Contribution(tensors, 1.0, masks)

    # evaluation -------------------------------------------------------------------------------
    def eval_payload(
        self, node: Node, server_round: int
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The static slice of the device's own width (B12: evaluation uses the static slice)."""
        _, sub = self.slice_for(node.plan.knobs_as(WidthKnobs).beta, "static", 0)
        return sub, {}

    def size_model(self, gamma: float, num_classes: int) -> Any:
        """The static width-√γ slice (B12: evaluation uses the static slice)."""
        from fedhet.models import build_model

        beta = math.sqrt(gamma)
        _, sub = self.slice_for(beta, "static", 0)
        model = build_model(self.shared.model, num_classes=num_classes, width=beta)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in sub.items()})
        return model

    def summary(self) -> None:
        super().summary()
        log.info(
            "  %s: %s slices, sizes %s, widths %s",
            self.name,
            self.mode,
            self.wcfg.sizes,
            [round(math.sqrt(g), 4) for g in self.wcfg.sizes],
        )


class HeteroFLStrategy(WidthStrategy):
    """HeteroFL (ICLR 2021): static nested slices, units 0…⌈βC⌉−1."""

    name: ClassVar[str] = "heterofl"
    mode: ClassVar[str] = "static"
    #: The static slice trained is the static slice evaluated (FedRolex's rolling one is not).
    fused_evaluation: ClassVar[bool] = True


class FedRolexStrategy(WidthStrategy):
    """FedRolex (NeurIPS 2022): rolling window, units (t + k) mod C with t = round − 1."""

    name: ClassVar[str] = "fedrolex"
    mode: ClassVar[str] = "rolling"
