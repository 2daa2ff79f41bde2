"""CoCoFL: partial freezing and int8-quantised frozen units (Beutel et al., TMLR 2023, arXiv 2203.05468)."""
