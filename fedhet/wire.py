"""Names both halves of every method agree on, beyond a method's own ``wire.py``.

Neutral on purpose: the ClientApp imports it without any server code, the strategy without any
client code (DESIGN.md layers).
"""

from __future__ import annotations

#: Config key of a train message asking the device to evaluate the received model before it
#: trains (one ClientApp call per round, :mod:`fedhet.server.fused`).
EVAL_FLAG = "evaluate-received"
#: Name of the metric record holding that evaluation in the train reply.
EVAL_RECORD = "eval-metrics"

__all__ = ["EVAL_FLAG", "EVAL_RECORD"]
