"""Pure PyTorch/NumPy building blocks (METHODS.md §1). Nothing here imports Flower."""
