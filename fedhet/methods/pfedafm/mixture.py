"""pFedAFM's adaptive feature mixture and its two-stage local training (Flower-free).

Yi et al., "pFedAFM: Adaptive Feature Mixture for Batch-Level Personalization in Heterogeneous
Federated Learning", arXiv 2404.17847, §3 (Eq. for R and the alternating training); METHODS.md
§5.1–§5.2 and §5.7. A device keeps its own model F_k = h_k ∘ f_k (parameters ω_k) and a per-device
vector α_k ∈ [0, 1]^d; the shared extractor G(θ) is the only federated part:

    R = α_k ⊙ f_k(x) + (1 − α_k) ⊙ G(x),      ŷ = h_k(R).

Stage 1 (θ frozen) trains ω_k and α_k with two separate SGD optimisers, ω's gradient norm clipped,
α clipped to [0, 1] before and after every step. Stage 2 (ω_k, α_k frozen) trains θ through the
frozen local header with pure G features, h_k(G(x)) (``stage2="local-header"``, the paper's code),
or through the whole mixture (``stage2="mixture"``, our option).

Unlike the official code (METHODS.md §5.7), every optimiser is created fresh for each call (no
momentum shared between devices or rounds), α is this object's own tensor (never shared), and
accuracy is correct / total over the whole test set.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

log = logging.getLogger("fedhet.pfedafm")

Batch = tuple[torch.Tensor, torch.Tensor]


def feature_dim(module: nn.Module) -> int:
    """Output feature dimension of an extractor (its ``out_features`` attribute)."""
    dim = getattr(module, "out_features", None)
    if not isinstance(dim, int):
        raise ValueError(f"{type(module).__name__} does not declare its feature dim 'out_features'")
    return dim


class FeatureMixture(nn.Module):
    """ŷ = h(α ⊙ f(x) + (1 − α) ⊙ P(G(x))) for one device (arXiv 2404.17847, §3.2).

    Parameters
    ----------
    local_extractor : nn.Module
        f_k, the device's own feature extractor (declares ``out_features`` = d).
    header : nn.Module
        h_k, the device's own classifier on d features.
    g : nn.Module
        G, the shared extractor (declares ``out_features``).
    alpha_init : float
        Initial value of every α entry (paper: 1, purely local features).
    projection : bool
        If dim G ≠ d, add a per-device linear map P: dim G → d (our choice); without it a
        mismatch is an error. With equal dims P is the identity and has no parameters.

    Raises
    ------
    ValueError
        Feature dimensions differ and ``projection`` is false.
    """

    def __init__(
        self,
        local_extractor: nn.Module,
        header: nn.Module,
        g: nn.Module,
        *,
        alpha_init: float = 1.0,
        projection: bool = False,
    ) -> None:
        super().__init__()
        d, d_g = feature_dim(local_extractor), feature_dim(g)
        self.local_extractor = local_extractor
        self.header = header
        self.g = g
        self.proj: nn.Module = nn.Identity()
        if d != d_g:
            if not projection:
                raise ValueError(
                    f"pFedAFM needs dim f_k = dim G: the local extractor gives {d} features, "
                    f"G gives {d_g}; set 'pfedafm.projection=true' to add a per-device projection"
                )
            self.proj = nn.Linear(d_g, d)
        self.alpha = nn.Parameter(torch.full((d,), float(alpha_init)))
        self.alpha_init = float(alpha_init)

    # parameter groups -------------------------------------------------------------------------
    def local_parameters(self) -> list[nn.Parameter]:
        """ω_k: the local extractor, the header and the projection (if any)."""
        mods = (self.local_extractor, self.header, self.proj)
        return [p for m in mods for p in m.parameters()]

    def g_parameters(self) -> list[nn.Parameter]:
        """θ: the shared extractor's parameters."""
        return list(self.g.parameters())

    # forward paths ----------------------------------------------------------------------------
    def mixed_features(self, x: torch.Tensor) -> torch.Tensor:
        """R = α ⊙ f(x) + (1 − α) ⊙ P(G(x))."""
        return self.alpha * self.local_extractor(x) + (1 - self.alpha) * self.proj(self.g(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The personalised prediction h(R)."""
        return self.header(self.mixed_features(x))

    def forward_g(self, x: torch.Tensor) -> torch.Tensor:
        """The G-only path h(P(G(x))) (stage-2 training and a logged evaluation)."""
        return self.header(self.proj(self.g(x)))

    # α ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def clip_alpha(self) -> None:
        """Clip α to [0, 1] in place."""
        self.alpha.clamp_(0.0, 1.0)

    @torch.no_grad()
    def reset_alpha_if_nonfinite(self) -> bool:
        """Reset α to its initial value if any entry is NaN/Inf; return whether it did."""
        if bool(torch.isfinite(self.alpha).all()):
            return False
        bad = int((~torch.isfinite(self.alpha)).sum())
        log.warning("α had %d non-finite entries; reset to %.3g", bad, self.alpha_init)
        self.alpha.fill_(self.alpha_init)
        return True

    def alpha_stats(self, bins: int = 10) -> tuple[float, list[int]]:
        """Mean of α and its histogram over [0, 1] in ``bins`` equal bins."""
        a = self.alpha.detach().cpu().numpy().astype(np.float64)
        hist, _ = np.histogram(np.clip(a, 0.0, 1.0), bins=bins, range=(0.0, 1.0))
        return float(a.mean()), [int(c) for c in hist]


@dataclass(frozen=True)
class StageSettings:
    """SGD settings of the two stages (METHODS.md §5.4; defaults are the paper's code)."""

    lr: float = 0.01
    lr_alpha: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-3
    grad_clip: float = 50.0
    train_alpha: bool = True
    stage2: str = "local-header"


def _set_trainable(params: Iterable[nn.Parameter], flag: bool) -> None:
    for p in params:
        p.requires_grad_(flag)


def _sgd(params: list[nn.Parameter], lr: float, s: StageSettings) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=lr, momentum=s.momentum, weight_decay=s.weight_decay)


def train_stage1(
    mix: FeatureMixture, batches: Iterable[Batch], s: StageSettings
) -> tuple[float, int]:
    """Stage 1: ω_k and α_k with G frozen; returns (summed loss, steps).

    Two fresh SGD optimisers (ω: ``lr``, α: ``lr_alpha``); ω's gradient norm clipped at
    ``grad_clip``; α clipped to [0, 1] before and after every step.
    """
    omega = mix.local_parameters()
    _set_trainable(mix.g_parameters(), False)
    _set_trainable(omega, True)
    mix.alpha.requires_grad_(s.train_alpha)
    opt_w = _sgd(omega, s.lr, s)
    opt_a = _sgd([mix.alpha], s.lr_alpha, s) if s.train_alpha else None
    mix.train()
    total, steps = 0.0, 0
    for x, y in batches:
        mix.clip_alpha()
        opt_w.zero_grad(set_to_none=True)
        if opt_a is not None:
            opt_a.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(mix(x), y)
        loss.backward()
        nn.utils.clip_grad_norm_(omega, s.grad_clip)
        opt_w.step()
        if opt_a is not None:
            opt_a.step()
        mix.clip_alpha()
        total += float(loss.detach())
        steps += 1
    return total, steps


def train_stage2(
    mix: FeatureMixture, batches: Iterable[Batch], s: StageSettings
) -> tuple[float, int]:
    """Stage 2: θ with ω_k and α_k frozen; returns (summed loss, steps).

    ``local-header``: CE(h_k(G(x)), y), G's features straight into the frozen local header (the
    paper's code; never G's own classifier, METHODS.md §5.7 item 4). ``mixture``: CE(h_k(R), y).
    θ's gradient norm is clipped at ``grad_clip``; the optimiser is fresh.
    """
    theta = mix.g_parameters()
    _set_trainable(mix.local_parameters(), False)
    mix.alpha.requires_grad_(False)
    _set_trainable(theta, True)
    opt = _sgd(theta, s.lr, s)
    path = mix.forward if s.stage2 == "mixture" else mix.forward_g
    mix.train()
    total, steps = 0.0, 0
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(path(x), y)
        loss.backward()
        nn.utils.clip_grad_norm_(theta, s.grad_clip)
        opt.step()
        total += float(loss.detach())
        steps += 1
    _set_trainable(mix.parameters(), True)
    return total, steps


def train_round(
    mix: FeatureMixture,
    stage1_batches: Iterable[Batch],
    stage2_batches: Iterable[Batch],
    s: StageSettings,
) -> dict[str, float]:
    """One device round of pFedAFM (METHODS.md §5.2 client steps 3–4).

    A non-finite α (before or after stage 1) is reset to its initial value and counted.

    Returns
    -------
    dict[str, float]
        ``train-loss`` (mean over both stages' steps), ``stage1-loss``, ``stage2-loss``,
        ``train-seconds``, ``train-steps``, ``alpha-resets``.
    """
    if s.stage2 not in ("local-header", "mixture"):
        raise ValueError(f"unknown stage2 {s.stage2!r}; use 'local-header' or 'mixture'")
    start = time.perf_counter()
    resets = int(mix.reset_alpha_if_nonfinite())
    l1, n1 = train_stage1(mix, stage1_batches, s)
    resets += int(mix.reset_alpha_if_nonfinite())
    l2, n2 = train_stage2(mix, stage2_batches, s)
    return {
        "train-loss": (l1 + l2) / max(n1 + n2, 1),
        "stage1-loss": l1 / max(n1, 1),
        "stage2-loss": l2 / max(n2, 1),
        "train-seconds": time.perf_counter() - start,
        "train-steps": float(n1 + n2),
        "alpha-resets": float(resets),
    }


@dataclass(frozen=True)
class MixtureEval:
    """Local-test results of the mixture and of the G-only path; accuracy = correct / total."""

    correct: int
    total: int
    loss: float
    g_correct: int
    g_loss: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @property
    def g_accuracy(self) -> float:
        return self.g_correct / self.total if self.total else 0.0


@torch.no_grad()
def evaluate_mixture(
    mix: FeatureMixture, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256
) -> MixtureEval:
    """Personalised accuracy h(R) and G-only accuracy h(P(G(x))) over all of (x, y).

    Counts correct predictions over every sample (never a mean of batch accuracies, §5.7 item 3).
    """
    mix.eval()
    correct = g_correct = total = 0
    loss = g_loss = 0.0
    for start in range(0, len(y), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        logits, g_logits = mix(xb), mix.forward_g(xb)
        loss += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
        g_loss += float(nn.functional.cross_entropy(g_logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
        g_correct += int((g_logits.argmax(1) == yb).sum())
        total += int(yb.numel())
    return MixtureEval(correct, total, loss, g_correct, g_loss)
