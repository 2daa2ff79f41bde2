"""GENE-FL (reconstructed; arXiv 2504.14628): learnGene exchange, Fisher ties, clustered newcomers."""
