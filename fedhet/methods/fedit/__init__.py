"""FedIT baseline: one shared LoRA adapter per device, FedAvg (arXiv 2305.05644)."""
