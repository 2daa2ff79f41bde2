"""Names both halves of Standalone agree on (neutral: no torch, Flower or server import).

Nothing travels but config and metrics: the device's model lives in ``context.state``.
"""

from __future__ import annotations

#: context.state records: the local model (ArrayRecord) and its architecture (ConfigRecord).
STATE_KEY = "standalone-local"
STATE_META = "standalone-meta"
