"""FL-TAC: low-rank task-specific adapters with server-side adapter clustering (arXiv 2404.15384)."""
