"""Server messages: nodes sent the global model share one serialised record (issue 15, item 4)."""

from __future__ import annotations

from pathlib import Path


def test_global_model_messages_share_one_record(tmp_path: Path) -> None:
    """FedAvg's train messages carry one shared ArrayRecord; per-node payloads stay per node."""
    import sys

    from flwr.app import ArrayRecord, ConfigRecord

    sys.path.insert(0, str(Path(__file__).parent))
    from helpers import make

    for method, shared in (("fedavg", True), ("heterofl", False)):
        strategy, grid = make(method, tmp_path / method, num_nodes=3)
        strategy.register_nodes(grid, 1)
        msgs = list(
            strategy.configure_train(1, ArrayRecord(), ConfigRecord({"server-round": 1}), grid)
        )
        records = [m.content.array_records["arrays"] for m in msgs]
        assert len(records) == 3
        assert (records[0] is records[1] is records[2]) is shared, method
        # every message still counts its own bytes
        assert all(e["bytes-down"] > 0 for e in strategy.current.nodes.values())
        if shared:
            strategy.global_arrays = {k: v + 1 for k, v in strategy.global_arrays.items()}
            again = list(
                strategy.configure_train(2, ArrayRecord(), ConfigRecord({"server-round": 2}), grid)
            )
            assert again[0].content.array_records["arrays"] is not records[0]
