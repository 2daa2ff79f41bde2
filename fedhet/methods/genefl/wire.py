"""GENE-FL wire format shared by the strategy and the client (no Flower, no torch).

Every train/evaluate message carries ``genefl-phase``; what travels per phase is METHODS.md §3.3.
"""

from __future__ import annotations

import json
from typing import Final

# phases of a train message ----------------------------------------------------------------------
PHASE: Final = "genefl-phase"
WARMUP: Final = "warmup"  #: full model down, full model up (+ scores in round R_w)
CLUSTERING: Final = "clustering"  #: full model down (stored as θ_i), signature up
GENE: Final = "gene"  #: Θ_k down, θ_i[𝓖] up (element mode: values under the mask only)
PROBE: Final = "probe"  #: newcomer: P down, signature up
INIT: Final = "newcomer-init"  #: newcomer: Θ_k* down, nothing up
PHASES: Final = (WARMUP, CLUSTERING, GENE, PROBE, INIT)

# config keys (server → device) ------------------------------------------------------------------
SCORES_WANTED: Final = "genefl-score"  #: 1: return per-layer Taylor scores (round R_w)
LAYERS: Final = "genefl-layers"  #: JSON list of the learnGene layer names
PROBE_STEPS: Final = "genefl-probe-steps"  #: E_p
PERSONAL: Final = "genefl-personal"  #: evaluate: 1 = evaluate the stored personal model
GENE_ROUND: Final = "genefl-gene-round"  #: the device's count of gene rounds (Fisher cache)

# element granularity (arrays; see fedhet.methods.genefl.element) ----------------------------------
MASK: Final = "genefl-mask"  #: down: learnGene element mask, packed bits over the parameters
MASK_INDEX: Final = "genefl-mask-index"  #: down: the same mask as int32 flat indices (if smaller)
ELEMENT_SCORES: Final = "genefl-element-scores"  #: up (round R_w): a Taylor score per parameter
VALUES: Final = "genefl-values"  #: both ways: the learnGene's masked entries, model order

# reply keys (device → server) -------------------------------------------------------------------
SCORES: Final = "genefl-scores"  #: metric: per-layer scores, model layer order
SIGNATURE: Final = "signature"  #: array: probe signature, |𝓖| parameter values (or elements)
FISHER_SECONDS: Final = "genefl-fisher-seconds"  #: metric: time spent on F̂ this round
HAS_PERSONAL: Final = "genefl-has-personal"  #: metric of evaluate replies

# device state (context.state) -------------------------------------------------------------------
STATE_PERSONAL: Final = "genefl.personal"
STATE_FISHER: Final = "genefl.fisher"
STATE_MASK: Final = "genefl.mask"  #: element mode: the learnGene mask, kept once received


def encode_layers(layers: list[str]) -> str:
    """The learnGene layer list as a config value."""
    return json.dumps(list(layers))


def decode_layers(raw: object) -> list[str]:
    """Inverse of :func:`encode_layers`; ``ValueError`` on anything but a JSON list of strings."""
    value = json.loads(str(raw))
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{LAYERS} must be a JSON list of layer names, got {raw!r}")
    return value


def probe_seed_parts(run_seed: int) -> tuple[object, ...]:
    """Seed parts of the probe's random layers: run-wide, identical for every prober (§3.7)."""
    return (run_seed, "genefl", "probe-init")


def newcomer_seed_parts(run_seed: int, device_id: str) -> tuple[object, ...]:
    """Seed parts of a newcomer's fresh non-learnGene layers (§3.2 client step 4)."""
    return (run_seed, "genefl", device_id, "newcomer-init")
