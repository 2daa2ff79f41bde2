"""FL-TAC wire format: how a device's task slots travel (arXiv 2404.15384; METHODS.md §4.2).

Both halves import this module (the strategy writes and reads slots, the device reads and writes
them); it knows no Flower and no model. A slot is a device's local task index; the slot's adapter
state (LoRA A/B and head, canonical keys of :func:`fedhet.core.lora.get_adapter_state`) travels as
``slot{s}/<key>``. Before the server knows how many slots a device has, it sends v⁰ once as
``init/<key>``.
"""

from __future__ import annotations

import re

import numpy as np

SlotState = dict[str, np.ndarray]
"""One slot's adapter state: canonical key -> array."""

SLOT_NAME = re.compile(r"^slot(\d+)/(.+)$")
INIT_PREFIX = "init/"
"""Prefix of v⁰ sent to a device whose slot count the server does not know yet."""
MAX_SLOTS = 1024
"""Slot numbers at or above this are rejected (a bound on what a reply may name)."""


def slot_key(slot: int, key: str) -> str:
    """Wire name of ``key`` of slot ``slot``: ``slot{s}/<key>``."""
    return f"slot{slot}/{key}"


def slot_arrays(slots: dict[int, SlotState]) -> dict[str, np.ndarray]:
    """``{s: state}`` → wire arrays ``slot{s}/<key>`` (slots ascending, keys canonical)."""
    return {slot_key(s, k): v for s in sorted(slots) for k, v in slots[s].items()}


def split_slot_arrays(arrays: dict[str, np.ndarray]) -> dict[int, SlotState]:
    """Wire arrays ``slot{s}/<key>`` → ``{s: {key: array}}``; other names raise ``ValueError``."""
    out: dict[int, SlotState] = {}
    for name, arr in arrays.items():
        match = SLOT_NAME.match(name)
        if match is None:
            raise ValueError(f"array {name!r} is not named slot<s>/<key>")
        out.setdefault(int(match.group(1)), {})[match.group(2)] = arr
    return {s: dict(sorted(out[s].items())) for s in sorted(out)}


def init_arrays(state: SlotState) -> dict[str, np.ndarray]:
    """v⁰ as wire arrays ``init/<key>``."""
    return {f"{INIT_PREFIX}{k}": v for k, v in state.items()}


def split_init_arrays(arrays: dict[str, np.ndarray]) -> tuple[SlotState, dict[str, np.ndarray]]:
    """``(v⁰ from init/<key>, the other arrays)`` of a received payload."""
    init = {k[len(INIT_PREFIX) :]: v for k, v in arrays.items() if k.startswith(INIT_PREFIX)}
    rest = {k: v for k, v in arrays.items() if not k.startswith(INIT_PREFIX)}
    return init, rest


__all__ = [
    "INIT_PREFIX",
    "MAX_SLOTS",
    "SLOT_NAME",
    "SlotState",
    "init_arrays",
    "slot_arrays",
    "slot_key",
    "split_init_arrays",
    "split_slot_arrays",
]
