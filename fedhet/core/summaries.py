"""Per-device metric summaries for personalised methods (no Flower import).

Personalised FL reports the **mean over devices** of each device's own local-test accuracy
(pFedAFM, arXiv 2404.17847, §5; METHODS.md §5.5), where each device's accuracy is its correct /
total over its whole local test set (METHODS.md §0). These helpers work on the per-node entries of
a round's ``metrics.jsonl`` line.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any


def mean_over_devices(entries: Iterable[Mapping[str, Any]], key: str) -> float | None:
    """Unweighted mean of ``entry[key]`` over entries where it is a finite number (else None)."""
    values = [float(e[key]) for e in entries if _is_number(e.get(key))]
    return sum(values) / len(values) if values else None


def mean_by_group(entries: Iterable[Mapping[str, Any]], key: str, group: str) -> dict[str, float]:
    """``{group value: mean of entry[key]}`` over entries that have both (e.g. per architecture)."""
    buckets: dict[str, list[float]] = {}
    for e in entries:
        if e.get(group) is not None and _is_number(e.get(key)):
            buckets.setdefault(str(e[group]), []).append(float(e[key]))
    return {g: sum(v) / len(v) for g, v in sorted(buckets.items())}


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(float(x))
