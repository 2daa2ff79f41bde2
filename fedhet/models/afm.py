"""The pFedAFM model family's architecture rule (METHODS.md §2 "Plans", §8), Flower-free.

Torch-free at import (the builders import torch on first use). Shared by every method that gives each device its own CNN-x of the ``afm_cnn1…5`` family (pFedAFM,
arXiv 2404.17847, and its Standalone baseline), so neither has to import the other's folder.

* ``budget`` rule (our choice, METHODS.md §2): the **largest** CNN-x whose parameter count relative
  to CNN-1 (the largest model of the family) is ≤ min(T, M). Strong / medium / weak devices of the
  standard fleet (T = M = 1 / 0.66 / 0.33) get CNN-1 / CNN-3 / CNN-5.
* ``index`` rule (paper (code)): CNN-(i mod 5 + 1) for device index i.
* A device-declared ``arch`` wins over both.

A device whose **memory** budget is below the smallest architecture's relative size can hold no
model of the family: its plan carries no architecture and a reason, and the device replies
``infeasible`` (METHODS.md §2). A time budget below the smallest size only slows the device
down, so it gets the smallest architecture.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar

from pydantic import field_validator

from fedhet.models.catalog import AFM_ARCHS
from fedhet.plan import Knobs

if TYPE_CHECKING:
    from fedhet.models.cnn import AFMExtractor, AFMNet

#: The family's reference ("full") model: budgets are fractions of training it.
AFM_REFERENCE = "afm_cnn1"
ARCH_ASSIGNMENTS = ("budget", "index")


def afm_arch_params(arch: str) -> int:
    """Parameter count of ``arch`` (1×28×28 input, 10 classes), analytic (no model is built).

    conv 1→16 (5×5) + conv 16→c₂ (5×5) + FC 16c₂→h₁ + FC h₁→500 + header 500→10, all with biases
    (METHODS.md §8): 2,044,758 / 1,526,342 / 1,031,758 / 829,158 / 525,258 for CNN-1…5.
    """
    check_arch(arch)
    return _params(*AFM_ARCHS[arch])


def _params(c2: int, h1: int, feat: int = 500, classes: int = 10) -> int:
    conv = (1 * 16 * 25 + 16) + (16 * c2 * 25 + c2)
    return conv + (16 * c2 * h1 + h1) + (h1 * feat + feat) + (feat * classes + classes)


def afm_extractor_params(arch: str) -> int:
    """Parameters of ``arch``'s feature extractor only (520,248 for CNN-5, the shared G)."""
    return afm_arch_params(arch) - (500 * 10 + 10)


@functools.cache
def relative_sizes() -> dict[str, float]:
    """Parameters of each architecture relative to CNN-1 (1.0, 0.746, 0.505, 0.406, 0.257)."""
    ref = afm_arch_params(AFM_REFERENCE)
    return {name: afm_arch_params(name) / ref for name in AFM_ARCHS}


def check_arch(arch: str) -> str:
    """Return ``arch`` if it names a model of the family, else raise ``ValueError`` listing them."""
    if arch not in AFM_ARCHS:
        raise ValueError(
            f"unknown architecture {arch!r}; the pFedAFM family has: {', '.join(AFM_ARCHS)}"
        )
    return arch


@dataclass(frozen=True)
class ArchChoice:
    """An architecture for one device, or ``None`` with the reason it can hold none."""

    arch: str | None
    rule: str
    reason: str = ""


def choose_arch(
    time: float,
    memory: float,
    *,
    assignment: str = "budget",
    index: int | None = None,
    declared: str | None = None,
) -> ArchChoice:
    """The architecture of one device (METHODS.md §2, pFedAFM row).

    Parameters
    ----------
    time, memory : float
        The device's budgets T and M (fractions of training CNN-1).
    assignment : {"budget", "index"}
        ``budget``: largest CNN-x with relative size ≤ min(T, M); ``index``: CNN-(index mod 5 + 1).
    index : int, optional
        The device index (partition id) for ``index``.
    declared : str, optional
        A node-config ``arch``; wins over both rules.

    Returns
    -------
    ArchChoice
        ``arch=None`` when the memory budget fits no architecture of the family.

    Raises
    ------
    ValueError
        A declared architecture outside the family, an unknown rule, or ``index`` missing.
    """
    if declared:
        return ArchChoice(check_arch(declared), "declared")
    sizes = relative_sizes()
    smallest = min(sizes, key=sizes.__getitem__)
    if memory < sizes[smallest]:
        return ArchChoice(
            None,
            assignment,
            f"memory budget M={memory:.3f} is below the smallest architecture "
            f"({smallest}, {sizes[smallest]:.3f} of {AFM_REFERENCE})",
        )
    if assignment == "index":
        if index is None:
            raise ValueError("arch-assignment 'index' needs a device index (partition-id)")
        return ArchChoice(list(AFM_ARCHS)[index % len(AFM_ARCHS)], "index")
    if assignment != "budget":
        raise ValueError(f"unknown arch-assignment {assignment!r}; use one of {ARCH_ASSIGNMENTS}")
    limit = min(time, memory)
    fitting = [name for name, rel in sizes.items() if rel <= limit + 1e-9]
    arch = max(fitting, key=sizes.__getitem__) if fitting else smallest
    return ArchChoice(arch, "budget")


def reference_bytes() -> int:
    """fp32 bytes of CNN-1, the model budgets are fractions of (for measured memory budgets)."""
    return 4 * afm_arch_params(AFM_REFERENCE)


def build_afm(arch: str, num_classes: int = 10, in_channels: int = 1) -> AFMNet:
    """A local model F = h ∘ f of the family (``afm_cnn1…5``); ``ValueError`` for other names."""
    from fedhet.models.cnn import AFMNet

    return AFMNet(check_arch(arch), num_classes=num_classes, in_channels=in_channels)


def build_extractor(arch: str, in_channels: int = 1) -> AFMExtractor:
    """The feature extractor of ``arch`` alone (G = ``build_extractor("afm_cnn5")``; no header)."""
    from fedhet.models.cnn import AFMExtractor

    c2, h1 = AFM_ARCHS[check_arch(arch)]
    return AFMExtractor(c2, h1, in_channels)


class ArchKnobs(Knobs):
    """Plan knobs of the methods whose devices each run their own pFedAFM-family architecture
    (pFedAFM and its Standalone baseline; METHODS.md §2, pFedAFM row). Each method subclasses it
    so its plan has its own type.

    Attributes
    ----------
    arch : str or None
        The device's local architecture (``afm_cnn1…5``); ``None`` when its memory fits none.
    rule : str
        Which rule chose it: ``budget``, ``index`` or ``declared``.
    infeasible : str
        Why the device can hold no architecture ('' when it can); such a device replies
        ``infeasible`` (METHODS.md §2).
    """

    arch: str | None = None
    rule: Literal["budget", "index", "declared"] = "budget"
    infeasible: str = ""

    @field_validator("arch")
    @classmethod
    def _family(cls, v: str | None) -> str | None:
        """An architecture outside the family fails (server when planning, device when reading)."""
        return None if v is None else check_arch(v)


AK = TypeVar("AK", bound=ArchKnobs)


def arch_knobs(
    knobs_model: type[AK],
    assignment: str,
    time: float,
    memory: float,
    *,
    index: int | None,
    declared: str | None,
) -> AK:
    """``knobs_model`` knobs of one device (see :func:`choose_arch`)."""
    choice = choose_arch(time, memory, assignment=assignment, index=index, declared=declared)
    rule: Literal["budget", "index", "declared"] = (
        "declared" if choice.rule == "declared" else "index" if choice.rule == "index" else "budget"
    )
    return knobs_model(arch=choice.arch, rule=rule, infeasible=choice.reason)
