"""Local training helpers of the device side (no Flower import).

The loops themselves live in :mod:`fedhet.core.training` (the server evaluates with the same
code); they are re-exported here for the methods' clients.
"""

from __future__ import annotations

from fedhet.core.training import evaluate_model, evaluate_predictions, train_sgd

__all__ = ["evaluate_model", "evaluate_predictions", "num_local_steps", "train_sgd"]


def num_local_steps(n_examples: int, batch_size: int, local_epochs: int, local_steps: int) -> int:
    """Local steps: ``local-steps`` if set, else epochs × ⌈n / batch⌉."""
    if local_steps > 0:
        return local_steps
    return max(1, local_epochs * -(-n_examples // batch_size)) if n_examples else 0
