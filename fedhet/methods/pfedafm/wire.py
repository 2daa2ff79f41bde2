"""Names both halves of pFedAFM agree on (neutral: no torch, Flower or server import).

What travels (METHODS.md §5.3): only the shared extractor G's tensors, dense fp32, named as G's
``state_dict`` keys (``conv1.weight`` …); G has no classifier, so none is ever sent. The local
model ω_k and α_k live in the device's ``context.state`` under :data:`STATE_KEY` and are never
uploaded.
"""

from __future__ import annotations

#: context.state record (an ArrayRecord) holding ω_k (``local.*``), α_k (``alpha``) and, with a
#: projection, ``proj.*``; plus a ConfigRecord :data:`STATE_META` with the architecture.
STATE_KEY = "pfedafm-local"
STATE_META = "pfedafm-meta"
ALPHA = "alpha"

# train reply metrics
ALPHA_MEAN = "alpha-mean"
ALPHA_HIST = "alpha-hist"
ALPHA_RESETS = "alpha-resets"
STAGE1_LOSS = "stage1-loss"
STAGE2_LOSS = "stage2-loss"
#: How many bins :data:`ALPHA_HIST` has over [0, 1].
ALPHA_BINS = 10

# evaluate reply metrics (besides eval-correct / eval-loss / num-examples)
EVAL_G_CORRECT = "eval-g-correct"
EVAL_G_LOSS = "eval-g-loss"
EVAL_ALPHA_MEAN = "eval-alpha-mean"

#: Reply metrics the strategy copies into the node's ``metrics.jsonl`` entry.
NODE_TRAIN_METRICS = (ALPHA_MEAN, ALPHA_HIST, ALPHA_RESETS, STAGE1_LOSS, STAGE2_LOSS)
