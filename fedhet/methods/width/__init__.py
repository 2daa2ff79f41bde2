"""Width-scaled submodel baselines: HeteroFL (static slices, ICLR 2021) and FedRolex
(rolling window, NeurIPS 2022)."""
