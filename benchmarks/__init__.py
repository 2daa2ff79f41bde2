"""fedhet benchmarks: `python -m benchmarks.<name> [--quick]` writes tables and plots to benchmarks/results/."""
