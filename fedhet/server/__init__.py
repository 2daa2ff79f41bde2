"""Server-side machinery shared by every method: registration, plans, ledger, checkpoints, metrics."""
