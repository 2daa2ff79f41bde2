"""GENE-FL server (reconstructed; arXiv 2504.14628, METHODS.md §3.2 "Server").

Round phases (each round row of ``metrics.jsonl`` names its ``genefl-phase``):

1. ``warmup`` (rounds 1…R_w): FedAvg on the full model (B2 ``plain``, weights n_i). In round R_w
   devices also return per-layer Taylor scores; the server merges them (``genefl.score-agg``) and
   fixes the learnGene layer set 𝓖 = ``select_layers_by_budget``(scores, sizes, ρ) (B3). Sizes
   count every value that travels with a layer (parameters and BN statistics), so ρ bounds the
   gene-round upload. P = Θ^{R_w}[𝓖].
2. ``clustering`` (R_w + 1): founders get the full Θ^{R_w}, keep it as θ_i, run the probe and return
   a signature; one-shot cosine K-means (B9) gives the centroids; Θ_k = Θ* = P for every k.
3. ``gene``: each sampled clustered device gets Θ_{k(i)} and uploads θ_i[𝓖]; per cluster
   Θ_k ← Σ n_i θ_i[𝓖] / Σ n_i (a cluster without participants keeps its Θ_k, logged); then
   Θ* ← Σ_k N_k Θ_k / Σ_k N_k with N_k the cluster's samples.
4. Newcomers (a device first seen after clustering, or a founder that missed the clustering
   round): before each gene round's training, every registered, available, unclustered device is
   sent P (phase ``probe``), its signature is assigned to k* = argmax_k cos(s, c_k), and it is
   sent Θ_{k*} (phase ``newcomer-init``); centroids stay fixed. The exchange is driven by
   fedhet's registration, so it is the same in simulation and on a SuperLink. A device that does
   not answer the probe stays unclustered and is probed again next round.

``global_arrays`` is Θ^{R_w} with 𝓖 replaced by Θ* after clustering (what ``server-accuracy``
evaluates); ``eval-accuracy`` is the devices' personal models on their local tests.

With ``genefl.granularity=element`` 𝓖 is an element mask over the parameters (top ρ·d Taylor
scores, every device returning a score per parameter entry in round R_w), the mask travels once
per device and learnGenes travel as values only; see :mod:`fedhet.methods.genefl.element`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType
from flwr.serverapp import Grid

from fedhet.core.aggregate import Contribution, weighted_mean
from fedhet.core.cluster import kmeans_labels, nearest_centroid
from fedhet.core.codec import payload_bytes
from fedhet.core.fisher import aggregate_layer_scores, layer_keys, layer_sizes
from fedhet.core.masks import select_layers_by_budget
from fedhet.core.seeding import derive_seed, rng
from fedhet.methods.genefl import element, wire
from fedhet.methods.genefl.config import GeneflConfig
from fedhet.methods.genefl.plan import GeneflKnobs, scaled_steps
from fedhet.plan import Budget, Knobs
from fedhet.profile import DeviceProfile
from fedhet.server.strategy import FedhetStrategy, Node, Reply, to_numpy_dict
from fedhet.server.validate import ArraySpec, ReplyError, spec_of, validate_arrays

log = logging.getLogger("fedhet.genefl")

Arrays = dict[str, np.ndarray]
#: Node-entry keys: bytes of the newcomer path (probe and init), part of bytes-down/bytes-up.
NEWCOMER_DOWN = "genefl-newcomer-bytes-down"
NEWCOMER_UP = "genefl-newcomer-bytes-up"
#: Node-entry key (element mode): bytes of the learnGene mask sent to the device this round.
MASK_DOWN = "genefl-mask-bytes-down"


def _copy(arrays: Arrays) -> Arrays:
    return {k: np.array(v, copy=True) for k, v in arrays.items()}


class GeneflStrategy(FedhetStrategy):
    """GENE-FL (reconstructed): learnGene exchange per cluster, newcomers by probe signature."""

    name: ClassVar[str] = "genefl"
    personalised: ClassVar[bool] = True
    knobs_model: ClassVar[type[Knobs]] = GeneflKnobs

    mcfg: GeneflConfig

    # --- setup -----------------------------------------------------------------------------------
    def initial_arrays(self) -> Arrays:
        """Θ⁰ (seeded), plus the model's layer table (layer → keys, values per layer)."""
        from fedhet.models import build_model

        arrays = super().initial_arrays()
        params = [n for n, _ in build_model(self.shared.model).named_parameters()]
        self.layers: dict[str, list[str]] = layer_keys(arrays, params)
        self.sizes: dict[str, int] = layer_sizes(arrays, self.layers)
        self.param_keys: set[str] = set(params)
        self.shapes: element.Shapes = element.param_shapes(arrays, params)
        self.element_mask: dict[str, np.ndarray] = {}  # element mode: 𝓖 per parameter
        self.mask_holders: set[str] = set()  # element mode: devices that hold the mask
        self.gene_layers: list[str] = []
        self.layer_score: list[float] = []
        self.reference: Arrays = {}  # P = Θ^{R_w}[𝓖]
        self.theta_k: list[Arrays] = []
        self.theta_star: Arrays = {}
        self.centroids: np.ndarray | None = None
        self.assign: dict[str, int] = {}  # device-id → cluster
        self.roles: dict[str, str] = {}  # device-id → founder/newcomer
        self.samples: dict[str, int] = {}  # device-id → n_i (for N_k)
        self.personal: set[str] = set()  # devices holding a personal model
        self.clustered_round = 0
        self.phases: dict[int, str] = {}
        return arrays

    @property
    def element(self) -> bool:
        """``genefl.granularity=element``: 𝓖 is an element mask over the parameters."""
        return self.mcfg.granularity == "element"

    @property
    def gene_keys(self) -> list[str]:
        """State keys of 𝓖 (parameters and BN statistics), model order; element mode: the
        parameters with masked entries."""
        if self.element:
            return [
                n for n, _ in self.shapes if n in self.element_mask and self.element_mask[n].any()
            ]
        chosen = set(self.gene_layers)
        return [k for layer, ks in self.layers.items() if layer in chosen for k in ks]

    @property
    def gene_size(self) -> int:
        """Values in 𝓖 (what one gene-round upload carries)."""
        if self.element:
            return int(sum(int(m.sum()) for m in self.element_mask.values()))
        return int(sum(self.sizes[layer] for layer in self.gene_layers))

    def _with_mask(self, node: Node, arrays: Arrays) -> Arrays:
        """Element mode: ``arrays`` plus the mask for a device that does not hold it yet."""
        if not self.element or node.device_id in self.mask_holders:
            return arrays
        mask = element.encode_mask(element.flat_mask(self.element_mask, self.shapes))
        entry = self.current.node(node)
        entry[MASK_DOWN] = entry.get(MASK_DOWN, 0) + payload_bytes(mask)
        return {**arrays, **mask}

    def plan_knobs(self, profile: DeviceProfile, budget: Budget) -> tuple[bool, GeneflKnobs, str]:
        """Participation by availability; steps ∝ T with ``genefl.scale-steps`` (METHODS.md §2)."""
        steps = scaled_steps(self.shared.local_steps, budget.time, self.mcfg.scale_steps)
        return True, GeneflKnobs(availability=profile.availability, steps=steps), ""

    def summary(self) -> None:
        super().summary()
        log.info(
            "  GENE-FL (reconstructed, arXiv 2504.14628): %d layers %s; R_w=%d, ρ=%.2f, K=%d",
            len(self.layers),
            {k: v for k, v in self.sizes.items()},
            self.mcfg.warmup,
            self.mcfg.rho,
            self.mcfg.k,
        )

    # --- phases ------------------------------------------------------------------------------------
    def phase(self, server_round: int) -> str:
        """The phase of ``server_round`` (fixed when the round is configured)."""
        if server_round in self.phases:
            return self.phases[server_round]
        if server_round <= self.mcfg.warmup or not self.gene_layers:
            return wire.WARMUP
        return wire.CLUSTERING if self.centroids is None else wire.GENE

    def _scoring(self, server_round: int) -> bool:
        return self.phase(server_round) == wire.WARMUP and server_round >= self.mcfg.warmup

    def _available(self, node: Node, server_round: int) -> bool:
        draw = rng(self.shared.seed, node.device_id, server_round, "available").random()
        return bool(draw < node.profile.availability)

    def sample(self, grid: Grid, server_round: int, fraction: float, purpose: str) -> list[Node]:
        """The base sample, restricted after clustering: training to clustered devices, evaluation
        to devices that hold a personal model."""
        nodes = super().sample(grid, server_round, fraction, purpose)
        if self.centroids is None:
            return nodes
        if purpose == "train" and self.phase(server_round) == wire.GENE:
            return [n for n in nodes if n.device_id in self.assign]
        if purpose == "evaluate":
            return [n for n in nodes if n.device_id in self.personal]
        return nodes

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Fix the round's phase; in gene rounds run the newcomer path first."""
        phase = self.phase(server_round)
        self.phases[server_round] = phase
        self.current.extras["genefl-phase"] = phase
        if phase == wire.GENE:
            self._newcomers(grid, server_round)
        return super().configure_train(server_round, arrays, config, grid)

    # --- per-node payloads ---------------------------------------------------------------------------
    def _probe_steps(self) -> int:
        return int(self.mcfg.probe_steps)

    def train_payload(self, node: Node, server_round: int) -> tuple[Arrays, dict[str, Any]]:
        phase = self.phase(server_round)
        if phase == wire.WARMUP:
            return self.global_arrays, {
                wire.PHASE: wire.WARMUP,
                wire.SCORES_WANTED: int(self._scoring(server_round)),
            }
        layers = wire.encode_layers(self.gene_layers)
        if phase == wire.CLUSTERING:
            return self._with_mask(node, self.global_arrays), {
                wire.PHASE: wire.CLUSTERING,
                wire.LAYERS: layers,
                wire.PROBE_STEPS: self._probe_steps(),
            }
        return self._with_mask(node, self.theta_k[self.assign[node.device_id]]), {
            wire.PHASE: wire.GENE,
            wire.LAYERS: layers,
        }

    def _signature_spec(self) -> dict[str, ArraySpec]:
        if self.element:
            n = self.gene_size
        else:
            n = int(sum(self.global_arrays[k].size for k in self.gene_keys if k in self.param_keys))
        return {wire.SIGNATURE: ((n,), np.dtype(np.float32))}

    def expected_reply(self, node: Node, server_round: int) -> dict[str, ArraySpec]:
        phase = self.phase(server_round)
        if phase == wire.WARMUP:
            spec = spec_of(self.global_arrays)
            if self.element and self._scoring(server_round):
                d = element.num_entries(self.shapes)
                spec[wire.ELEMENT_SCORES] = ((d,), np.dtype(np.float32))
            return spec
        if phase == wire.CLUSTERING:
            return self._signature_spec()
        return spec_of(self.reference)

    def validate_reply(
        self, node: Node, server_round: int, arrays: Arrays, metrics: dict[str, Any]
    ) -> None:
        """Arrays as expected; round R_w: a finite, non-negative score per layer (element mode:
        per parameter entry, an array of the expected length); signatures: non-zero."""
        super().validate_reply(node, server_round, arrays, metrics)
        if self._scoring(server_round) and self.element:
            if not bool((arrays[wire.ELEMENT_SCORES] >= 0).all()):
                raise ReplyError(f"array {wire.ELEMENT_SCORES!r}: negative element score")
        elif self._scoring(server_round):
            scores = metrics.get(wire.SCORES)
            if not isinstance(scores, list) or len(scores) != len(self.layers):
                got = len(scores) if isinstance(scores, list) else type(scores).__name__
                raise ReplyError(
                    f"metric {wire.SCORES!r}: expected {len(self.layers)} layer scores, got {got}"
                )
            if not all(np.isfinite(float(s)) and float(s) >= 0 for s in scores):
                raise ReplyError(f"metric {wire.SCORES!r}: non-finite or negative score")
        if wire.SIGNATURE in arrays and not float(np.linalg.norm(arrays[wire.SIGNATURE])) > 0:
            raise ReplyError("signature has zero norm")

    def eval_payload(self, node: Node, server_round: int) -> tuple[Arrays, dict[str, Any]]:
        if node.device_id in self.personal:
            return {}, {wire.PERSONAL: 1}
        return self.global_arrays, {wire.PERSONAL: 0}

    # --- aggregation -------------------------------------------------------------------------------
    def aggregate(self, server_round: int, replies: list[Reply]) -> None:
        phase = self.phase(server_round)
        if phase == wire.WARMUP:
            super().aggregate(server_round, replies)
            if self._scoring(server_round):
                self._fix_learngene(server_round, replies)
        elif phase == wire.CLUSTERING:
            self._cluster(server_round, replies)
        else:
            self._aggregate_genes(server_round, replies)

    def _fix_elements(self, server_round: int, replies: list[Reply]) -> None:
        """Element mode of §3.2 server step 2: 𝓖 = the top max(1, ⌊ρ·d⌋) merged entry scores."""
        vectors = [r.arrays[wire.ELEMENT_SCORES] for r in replies]
        flat = element.select_elements(vectors, self.mcfg.score_agg, self.mcfg.rho)
        self.element_mask = element.split_mask(flat, self.shapes)
        self.gene_layers = [
            layer
            for layer, ks in self.layers.items()
            if any(k in self.element_mask and self.element_mask[k].any() for k in ks)
        ]
        self.reference = element.gather(self.global_arrays, self.element_mask)
        d = element.num_entries(self.shapes)
        log.info(
            "round %d: learnGene 𝓖 = %d of %d parameter entries (%.2f%%) in %d tensors, from %d "
            "element-score vectors (%s); mask on the wire: %d B per device, once",
            server_round,
            self.gene_size,
            d,
            100.0 * self.gene_size / d,
            len(self.gene_keys),
            len(vectors),
            self.mcfg.score_agg,
            payload_bytes(element.encode_mask(flat)),
        )

    def _fix_learngene(self, server_round: int, replies: list[Reply]) -> None:
        if self.element:
            self._fix_elements(server_round, replies)
            return
        vectors = [[float(s) for s in r.metrics[wire.SCORES]] for r in replies]
        names = list(self.layers)
        sizes = [self.sizes[n] for n in names]
        merged = aggregate_layer_scores(vectors, self.mcfg.score_agg, sizes, self.mcfg.rho)
        chosen = set(
            select_layers_by_budget(
                dict(zip(names, merged.tolist(), strict=True)),
                dict(zip(names, sizes, strict=True)),
                self.mcfg.rho,
            )
        )
        if not chosen:
            smallest = min(names, key=lambda n: self.sizes[n])
            log.warning(
                "ρ=%.3f admits no whole layer; learnGene = the smallest layer %s (%d values)",
                self.mcfg.rho,
                smallest,
                self.sizes[smallest],
            )
            chosen = {smallest}
        self.gene_layers = [n for n in names if n in chosen]
        self.layer_score = [float(v) for v in merged]
        self.reference = {k: np.array(self.global_arrays[k], copy=True) for k in self.gene_keys}
        total = sum(self.sizes.values())
        log.info(
            "round %d: learnGene 𝓖 = %s: %d of %d values (%.1f%%), from %d score vectors (%s)",
            server_round,
            self.gene_layers,
            self.gene_size,
            total,
            100.0 * self.gene_size / total,
            len(vectors),
            self.mcfg.score_agg,
        )

    def _cluster(self, server_round: int, replies: list[Reply]) -> None:
        rows = np.stack([r.arrays[wire.SIGNATURE] for r in replies])
        k = self.mcfg.k
        if len(replies) < k:
            log.warning(
                "round %d: genefl.k=%d but only %d founders returned a signature; K reduced to %d "
                "(each founder its own cluster)",
                server_round,
                k,
                len(replies),
                len(replies),
            )
        seed = derive_seed(self.shared.seed, "genefl", "kmeans")
        labels, centroids = kmeans_labels(rows, k, seed, normalise=True)
        self.centroids = centroids
        self.theta_k = [_copy(self.reference) for _ in range(centroids.shape[0])]
        self.theta_star = _copy(self.reference)
        self.clustered_round = server_round
        for r, label in zip(replies, labels.tolist(), strict=True):
            dev = r.node.device_id
            self.assign[dev] = int(label)
            self.roles[dev] = "founder"
            self.samples[dev] = r.num_examples
            self.personal.add(dev)
            if self.element:
                self.mask_holders.add(dev)
        log.info(
            "round %d: %d founders in %d clusters, sizes %s",
            server_round,
            len(replies),
            centroids.shape[0],
            np.bincount(labels, minlength=centroids.shape[0]).tolist(),
        )

    def _aggregate_genes(self, server_round: int, replies: list[Reply]) -> None:
        by_cluster: dict[int, list[Reply]] = {}
        for r in replies:
            by_cluster.setdefault(self.assign[r.node.device_id], []).append(r)
            self.personal.add(r.node.device_id)
        if self.element:  # a device whose reply did not arrive valid gets the mask again
            valid = {r.node.device_id for r in replies}
            for node_id in self._sent_train:
                node = self.nodes.get(node_id)
                if node is not None and node.device_id not in valid:
                    self.mask_holders.discard(node.device_id)
            self.mask_holders |= valid
        for c in range(len(self.theta_k)):
            members = [r for r in by_cluster.get(c, []) if r.num_examples > 0]
            if not members:
                log.info("round %d: cluster %d had no participants; keeps its Θ_k", server_round, c)
                continue
            contribs = [Contribution(r.arrays, float(r.num_examples)) for r in members]
            self.theta_k[c] = weighted_mean(contribs, self.theta_k[c])
        self._update_theta_star()
        self.current.extras["genefl-clusters-used"] = len(by_cluster)
        fisher = [float(r.metrics.get(wire.FISHER_SECONDS, 0.0)) for r in replies]
        self.current.extras["genefl-fisher-seconds"] = float(np.mean(fisher)) if fisher else None

    def _cluster_samples(self) -> list[float]:
        n = [0.0] * len(self.theta_k)
        for dev, c in self.assign.items():
            n[c] += float(self.samples.get(dev, 0))
        return n

    def _update_theta_star(self) -> None:
        n_k = self._cluster_samples()
        contribs = [Contribution(t, w) for t, w in zip(self.theta_k, n_k, strict=True) if w > 0]
        if contribs:
            self.theta_star = weighted_mean(contribs, self.theta_star)
        if self.element:
            gene = element.scatter(self.theta_star, self.element_mask, self.global_arrays)
        else:
            gene = _copy(self.theta_star)
        self.global_arrays = {**self.global_arrays, **gene}

    # --- newcomers -----------------------------------------------------------------------------------
    def _exchange(
        self, grid: Grid, server_round: int, payloads: dict[int, tuple[Arrays, dict[str, Any]]]
    ) -> dict[int, Message]:
        """Send one train-type message per node; return the non-error replies by node id, with
        bytes in the ledger and errors logged as dropped."""
        msgs, sent = [], {}
        for node_id, (arrays, extra) in payloads.items():
            target = self.nodes[node_id]
            entry = self.current.node(target)
            before = entry["bytes-down"]
            msg = self._message(target, arrays, extra, server_round, MessageType.TRAIN)
            entry[NEWCOMER_DOWN] = entry.get(NEWCOMER_DOWN, 0) + entry["bytes-down"] - before
            msgs.append(msg)
            sent[msg.metadata.message_id] = node_id
        out: dict[int, Message] = {}
        if not msgs:
            return out
        for reply in grid.send_and_receive(msgs, timeout=self.shared.round_timeout):
            node_id = sent.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            node = self.nodes.get(node_id)
            if node is None:
                continue
            stage = str(payloads[node_id][1][wire.PHASE])
            if reply.has_error():
                self.current.drop(node_id, node.device_id, stage, str(reply.error.reason))
                continue
            total = self.current.count(node, reply.content, "up")
            entry = self.current.node(node)
            entry[NEWCOMER_UP] = entry.get(NEWCOMER_UP, 0) + total
            self.totals["bytes-up"] += total
            out[node_id] = reply
        for node_id in set(payloads) - set(out):
            if not any(d["node-id"] == node_id for d in self.current.dropped):
                node = self.nodes[node_id]
                self.current.drop(node_id, node.device_id, "probe", "no reply before timeout")
        return out

    def _newcomers(self, grid: Grid, server_round: int) -> None:
        """Probe → nearest centroid → Θ_{k*} for every available unclustered device (§3.2 step 5)."""
        assert self.centroids is not None
        live = set(grid.get_node_ids())
        todo = [
            n
            for nid, n in sorted(self.nodes.items())
            if nid in live
            and n.plan.participate
            and n.device_id not in self.assign
            and self._available(n, server_round)
        ]
        if not todo:
            return
        layers = wire.encode_layers(self.gene_layers)
        probe_cfg = {
            wire.PHASE: wire.PROBE,
            wire.LAYERS: layers,
            wire.PROBE_STEPS: self._probe_steps(),
        }
        for n in todo:
            self.current.node(n)["status"] = "probed"
        replies = self._exchange(
            grid,
            server_round,
            {n.node_id: (self._with_mask(n, self.reference), dict(probe_cfg)) for n in todo},
        )
        assigned: dict[int, int] = {}
        for node_id, reply in replies.items():
            node = self.nodes[node_id]
            try:
                arrays = to_numpy_dict(reply.content.array_records.get("arrays", ArrayRecord()))
                validate_arrays(arrays, self._signature_spec(), required=True)
                if not float(np.linalg.norm(arrays[wire.SIGNATURE])) > 0:
                    raise ReplyError("signature has zero norm")
                metrics: dict[str, Any] = dict(reply.content.metric_records.get("metrics", {}))
                n_i = int(metrics.get("num-examples", 0))
            except (ReplyError, ValueError, TypeError) as exc:
                self.current.drop(node_id, node.device_id, "probe", str(exc))
                continue
            k_star = nearest_centroid(arrays[wire.SIGNATURE], self.centroids, "cosine")
            self.assign[node.device_id] = k_star
            self.roles[node.device_id] = "newcomer"
            if self.element:
                self.mask_holders.add(node.device_id)
            self.samples[node.device_id] = max(n_i, 0)
            assigned[node_id] = k_star
            log.info(
                "round %d: newcomer %s (node %s) assigned to cluster %d",
                server_round,
                node.device_id,
                node_id,
                k_star,
            )
        init_cfg = {wire.PHASE: wire.INIT}
        acks = self._exchange(
            grid,
            server_round,
            {
                nid: (self._with_mask(self.nodes[nid], self.theta_k[k]), dict(init_cfg))
                for nid, k in assigned.items()
            },
        )
        for node_id in acks:
            self.personal.add(self.nodes[node_id].device_id)
        self.current.extras["genefl-newcomers"] = len(assigned)
        if assigned:
            self._update_theta_star()

    # --- metrics, state --------------------------------------------------------------------------------
    def server_evaluate(self, server_round: int) -> dict[str, float]:
        """Annotate the round's node entries (role, cluster) and round row, then the base metrics."""
        for entry in self.current.nodes.values():
            dev = entry["device-id"]
            entry["genefl-role"] = self.roles.get(
                dev, "founder" if self.centroids is None else "newcomer"
            )
            if dev in self.assign:
                entry["genefl-cluster"] = self.assign[dev]
        self.current.extras.update(
            {
                "genefl-granularity": self.mcfg.granularity,
                "genefl-learngene-size": self.gene_size,
                "genefl-learngene-layers": list(self.gene_layers),
                "genefl-clusters": 0 if self.centroids is None else int(self.centroids.shape[0]),
            }
        )
        return super().server_evaluate(server_round)

    def state_dict(self) -> dict[str, Any]:
        def t(a: Arrays) -> dict[str, torch.Tensor]:
            return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in a.items()}

        return {
            "gene-layers": list(self.gene_layers),
            "layer-score": list(self.layer_score),
            "reference": t(self.reference),
            "theta-k": [t(x) for x in self.theta_k],
            "theta-star": t(self.theta_star),
            "centroids": None if self.centroids is None else torch.from_numpy(self.centroids),
            "assign": dict(self.assign),
            "roles": dict(self.roles),
            "samples": dict(self.samples),
            "personal": sorted(self.personal),
            "clustered-round": self.clustered_round,
            "element-mask": t(self.element_mask),
            "mask-holders": sorted(self.mask_holders),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return

        def n(a: dict[str, torch.Tensor]) -> Arrays:
            return {k: v.numpy() for k, v in a.items()}

        self.gene_layers = list(state["gene-layers"])
        self.layer_score = list(state["layer-score"])
        self.reference = n(state["reference"])
        self.theta_k = [n(x) for x in state["theta-k"]]
        self.theta_star = n(state["theta-star"])
        c = state["centroids"]
        self.centroids = None if c is None else c.numpy()
        self.assign = dict(state["assign"])
        self.roles = dict(state["roles"])
        self.samples = dict(state["samples"])
        self.personal = set(state["personal"])
        self.clustered_round = int(state["clustered-round"])
        self.element_mask = n(state.get("element-mask", {}))
        self.mask_holders = set(state.get("mask-holders", []))
