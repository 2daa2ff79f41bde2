"""FIARSE: importance-aware submodel extraction (Wu et al., NeurIPS 2024, arXiv 2407.19389)."""
