"""The hooks a fedhet method overrides, with their defaults (plain FedAvg on the run's model).

:class:`MethodHooks` is the method-facing half of :class:`~fedhet.server.strategy.FedhetStrategy`:
a method subclasses the strategy and overrides only these (``plan_knobs``, ``train_payload``,
``expected_reply``, ``reply_spec``, ``validate_reply``, ``aggregate``, ``eval_payload``,
``server_evaluate``,
``state_dict``/``load_state_dict``, ``summary``); the strategy calls them and is the only code
that talks to the Grid.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
import torch
from flwr.app.typing import ConfigRecordValues
from pydantic import BaseModel

from fedhet.config import RunConfig, SharedConfig
from fedhet.core.aggregate import Contribution, masked_mean, weighted_mean
from fedhet.core.robust import robust_aggregate
from fedhet.core.seeding import derive_seed
from fedhet.data.base import TensorData
from fedhet.plan import Budget, FleetReference, Knobs
from fedhet.profile import DeviceProfile
from fedhet.server.evaluation import global_model_metrics
from fedhet.server.registration import Node
from fedhet.server.replies import Reply
from fedhet.server.streaming import MaskedRule, PlainRule
from fedhet.server.validate import ArraySpec, spec_of, validate_arrays

log = logging.getLogger("fedhet")

#: Named arrays, as the hooks exchange them.
Arrays = dict[str, np.ndarray]
#: Extra config entries of a message.
ConfigValues = dict[str, ConfigRecordValues]


class MethodHooks:
    """Default hooks; :class:`~fedhet.server.strategy.FedhetStrategy` provides the state.

    Attributes
    ----------
    cfg : RunConfig
        The parsed run config; ``shared`` and ``mcfg`` are its shared and method parts.
    global_arrays : dict[str, np.ndarray]
        The global model (or adapters) the method aggregates into.
    nodes : dict[int, Node]
        Registered nodes by node id.
    """

    name: ClassVar[str] = "base"
    #: The method's per-node knobs (its folder's ``plan.py``); :meth:`plan_knobs` returns one.
    knobs_model: ClassVar[type[Knobs]] = Knobs
    #: Train replies carry updates (differences), not parameters (for the norm-outlier filter).
    replies_are_updates: ClassVar[bool] = False
    #: Every device trains the same tensors, so update sizes are comparable across the round's
    #: replies and the norm-outlier filter (``outlier-factor``) applies. Methods whose devices train
    #: different parts (submodel sizes, windows) set this False: their update sizes legitimately
    #: differ by orders of magnitude (a full-width HeteroFL device moved 200× more per value than
    #: a 1/8-width one on digits), so only non-finite updates are dropped there; such fleets use
    #: ``aggregation = trimmed-mean | median`` against bad devices.
    comparable_updates: ClassVar[bool] = True
    #: The method's ``aggregate`` goes through :meth:`combine` (so the robust rules apply).
    aggregates_with_combine: ClassVar[bool] = False
    #: Add train replies to a running sum as they arrive (:mod:`fedhet.server.streaming`) where
    #: :meth:`streams_replies` allows it; False holds every reply of a round (benchmarks compare).
    stream_replies: bool = True
    #: The method's ``aggregate`` is the default one: :meth:`note_replies`, then the
    #: sample-weighted mean into :attr:`global_arrays` (so its replies can be streamed too).
    aggregate_is_mean: ClassVar[bool] = False
    #: The method's ``aggregate`` is :meth:`combine` over one :meth:`contribution` per reply with
    #: :meth:`masked_settings` and nothing else (HeteroFL, FedRolex): streamed under ``mean``.
    aggregate_is_masked: ClassVar[bool] = False

    cfg: RunConfig
    shared: SharedConfig
    mcfg: BaseModel
    global_arrays: Arrays

    @property
    def nodes(self) -> dict[int, Node]:
        """Registered nodes by node id (provided by the strategy)."""
        raise NotImplementedError

    @property
    def bench_reference(self) -> float | None:
        """The run's fixed time reference (provided by the strategy's node table)."""
        raise NotImplementedError

    def _global_test(self) -> TensorData | None:
        raise NotImplementedError

    def initial_arrays(self) -> dict[str, np.ndarray]:
        """Global arrays at round 0: the run's model, seeded."""
        from fedhet.models import build_model

        torch.manual_seed(derive_seed(self.shared.seed, "init"))
        model = build_model(self.shared.model)
        return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}

    def fleet_reference(self) -> FleetReference:
        """Full-training costs of the run's model that budgets are fractions of.

        The time reference is fixed once for the run (:func:`fedhet.plan.reference_bench_ms`),
        so budgets do not depend on the order devices register in.
        """
        n_bytes = int(sum(a.nbytes for a in self.global_arrays.values()))
        # weights + gradients + optimiser-free SGD + activations (rough: 4x weights)
        return FleetReference(n_bytes, 4 * n_bytes, self.bench_reference)

    def plan_knobs(self, profile: DeviceProfile, budget: Budget) -> tuple[bool, Knobs, str]:
        """Plan a newly registered device.

        Parameters
        ----------
        profile : DeviceProfile
            What the device reported.
        budget : Budget
            Its T, M, [D_min, D_max] (METHODS.md §2).

        Returns
        -------
        tuple[bool, Knobs, str]
            ``(participates, knobs, reason)``; ``knobs`` must be an instance of
            :attr:`knobs_model`, ``reason`` explains an exclusion.
        """
        return True, self.knobs_model(), ""

    def train_payload(self, node: Node, server_round: int) -> tuple[Arrays, ConfigValues]:
        """Arrays and extra config sent to ``node`` for training (default: the full global model).

        The node's plan travels in every message anyway (config key ``plan``); the extra config
        carries per-round data only (thresholds, slot counts …), never a copy of a knob.
        """
        return self.global_arrays, {}

    def expected_reply(self, node: Node, server_round: int) -> dict[str, ArraySpec]:
        """Names, shapes and dtypes a train reply of ``node`` must have (default: the global arrays)."""
        return spec_of(self.global_arrays)

    def reply_spec(
        self, node: Node, server_round: int, names: list[str]
    ) -> tuple[dict[str, ArraySpec], dict[str, int]]:
        """``(spec, sizes)`` a train reply's arrays are checked against *before* decoding.

        ``names`` are the reply's array names (plain strings), for methods whose allowed names
        depend on them; ``sizes`` gives exact element counts of open-length (``-1``) arrays.
        Default: :meth:`expected_reply`, no sizes.
        """
        return self.expected_reply(node, server_round), {}

    def validate_reply(
        self, node: Node, server_round: int, arrays: Arrays, metrics: dict[str, Any]
    ) -> None:
        """Check a train reply before it is aggregated.

        Raises
        ------
        ReplyError
            If the reply cannot be used (default: arrays differ from :meth:`expected_reply`).
        """
        validate_arrays(arrays, self.expected_reply(node, server_round), required=True)

    def aggregate(self, server_round: int, replies: list[Reply]) -> None:
        """Update :attr:`global_arrays` from validated replies (default: sample-weighted mean).

        Replies with no training examples carry no weight and are left out; without any
        weighted reply the global arrays stay as they are. :meth:`note_replies` runs first.
        """
        self.note_replies(server_round, replies)
        contribs = [
            Contribution(r.arrays, float(r.num_examples)) for r in replies if r.num_examples > 0
        ]
        if contribs:
            self.global_arrays = weighted_mean(contribs, self.global_arrays)

    def note_replies(self, server_round: int, replies: list[Reply]) -> None:
        """Per-round bookkeeping from the aggregated replies' metrics (default: none).

        Called by the default :meth:`aggregate` before the mean and, when replies are streamed,
        after it, with replies that no longer carry their arrays: use metrics only.
        """

    def streams_replies(self) -> bool:
        """Whether train replies are aggregated one by one as they arrive: the default
        sample-weighted :meth:`aggregate` (or :attr:`aggregate_is_mean`) or a masked rule
        (:attr:`aggregate_is_masked`) under ``aggregation = mean`` (FedAvg, FedAvg-drop,
        pFedAFM's G, HeteroFL, FedRolex)."""
        cls = type(self)

        def declared(flag: str) -> bool:  # a subclass overriding ``aggregate`` again loses it
            owner = next((c for c in cls.__mro__ if flag in vars(c)), MethodHooks)
            return bool(getattr(cls, flag)) and cls.aggregate is getattr(owner, "aggregate", None)

        rule = cls.aggregate is MethodHooks.aggregate or declared("aggregate_is_mean")
        rule = rule or declared("aggregate_is_masked")
        return self.stream_replies and rule and self.shared.aggregation == "mean"

    def stream_rule(self, server_round: int) -> PlainRule | MaskedRule:
        """The running sum a streamed round feeds (:mod:`fedhet.server.streaming`)."""
        if self.aggregate_is_masked:
            mode, server_lr = self.masked_settings()
            return MaskedRule(
                self.global_arrays, lambda r: self.contribution(server_round, r), mode, server_lr
            )
        return PlainRule(self.global_arrays)

    def contribution(self, server_round: int, reply: Reply) -> Contribution:
        """The masked contribution of one reply (methods with :attr:`aggregate_is_masked`)."""
        raise NotImplementedError(f"{type(self).__name__} has no masked contribution")

    def masked_settings(self) -> tuple[str, float]:
        """``(mode, server_lr)`` of the masked rule (methods with :attr:`aggregate_is_masked`)."""
        return "holders", 1.0

    def supports_robust_rules(self) -> bool:
        """Whether ``aggregation = trimmed-mean | median`` applies: the default ``aggregate`` (full
        models) or a method whose ``aggregate`` uses :meth:`combine`."""
        return type(self).aggregate is MethodHooks.aggregate or self.aggregates_with_combine

    def combine(
        self,
        contribs: list[Contribution],
        base: Arrays,
        *,
        mode: str = "holders",
        server_lr: float = 1.0,
    ) -> Arrays:
        """The run's rule over (masked) contributions: ``masked_mean`` for ``aggregation = mean``,
        else the coordinate-wise robust rule over each coordinate's holders (unweighted; CoCoFL's
        zero-fill counting then does not apply)."""
        if self.shared.aggregation == "mean":
            return masked_mean(contribs, base, mode=mode, server_lr=server_lr)
        return robust_aggregate(
            self.shared.aggregation,
            contribs,
            base,
            trim=self.shared.trim_fraction,
            server_lr=server_lr,
        )

    def robust_aggregate(self, server_round: int, replies: list[Reply]) -> None:
        """``aggregation = trimmed-mean | median``: coordinate-wise and unweighted over the replies
        (:func:`fedhet.core.robust.robust_aggregate`)."""
        contribs = [Contribution(r.arrays, 1.0) for r in replies]
        if contribs:
            self.global_arrays = robust_aggregate(
                self.shared.aggregation,
                contribs,
                self.global_arrays,
                trim=self.shared.trim_fraction,
            )

    def eval_payload(self, node: Node, server_round: int) -> tuple[Arrays, ConfigValues]:
        """Arrays and extra config sent to ``node`` for evaluation."""
        return self.global_arrays, {}

    def server_evaluate(self, server_round: int) -> dict[str, float]:
        """Server-side metrics on the global test set (default: global model accuracy)."""
        data = self._global_test()
        if data is None:
            return {}
        return global_model_metrics(self.shared.model, self.global_arrays, data)

    def state_dict(self) -> dict[str, Any]:
        """Extra strategy state for checkpoints (method state keyed by device-id)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    def summary(self) -> None:
        """Log the strategy's settings (Flower's abstract ``Strategy.summary``)."""
        log.info("fedhet method %r (%s)", self.name, type(self).__name__)
        log.info("  shared: %s", self.shared.model_dump(by_alias=True))
        log.info("  method: %s", self.mcfg.model_dump(by_alias=True))
