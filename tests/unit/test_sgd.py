"""fedhet.core.sgd.SGD equals torch.optim.SGD bit for bit (it replaces it to keep torch._dynamo
out of a fresh ClientApp process)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from fedhet.core.sgd import SGD


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


@pytest.mark.parametrize(("momentum", "weight_decay"), [(0.0, 0.0), (0.9, 0.0), (0.9, 5e-4)])
def test_matches_torch_sgd_bitwise(momentum: float, weight_decay: float) -> None:
    ours, ref = _model(0), _model(0)
    opt_ours = SGD(ours.parameters(), lr=0.05, momentum=momentum, weight_decay=weight_decay)
    opt_ref = torch.optim.SGD(
        ref.parameters(), lr=0.05, momentum=momentum, weight_decay=weight_decay
    )
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        x, y = torch.randn(5, 1, 8, 8, generator=gen), torch.randint(0, 3, (5,), generator=gen)
        for model, opt in ((ours, opt_ours), (ref, opt_ref)):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)


def test_frozen_parameters_are_left_alone() -> None:
    model = _model(0)
    frozen = model[0].weight
    frozen.requires_grad_(False)
    before = frozen.clone()
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    nn.functional.cross_entropy(model(torch.randn(2, 1, 8, 8)), torch.tensor([0, 1])).backward()
    opt.step()
    assert torch.equal(frozen, before)


def test_rejects_negative_settings() -> None:
    with pytest.raises(ValueError, match="lr=-1"):
        SGD(_model(0).parameters(), lr=-1)


def test_training_imports_no_dynamo() -> None:
    """A training step in a fresh process does not pull in torch._dynamo (seconds of imports)."""
    code = (
        "import sys, torch\n"
        "from fedhet.core.training import train_sgd\n"
        "from torch import nn\n"
        "m = nn.Linear(4, 2)\n"
        "train_sgd(m, [(torch.randn(3, 4), torch.tensor([0, 1, 1]))], lr=0.1, momentum=0.9)\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
