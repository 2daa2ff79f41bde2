"""pFedAFM: adaptive feature mixture for batch-level personalisation (Yi et al., arXiv 2404.17847)."""
