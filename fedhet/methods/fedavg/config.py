"""Settings of FedAvg and FedAvg-drop (``[tool.flwr.app.config.fedavg]`` / ``.fedavg-drop``)."""

from __future__ import annotations

from pydantic import Field

from fedhet.config import KebabModel


class FedAvgConfig(KebabModel):
    """FedAvg: sample-weighted mean of full models (McMahan et al., 2017, Algorithm 1).

    Attributes
    ----------
    momentum : float
        Local SGD momentum (default 0, plain SGD as in the paper).
    weight_decay : float
        Local SGD weight decay (default 0).
    """

    momentum: float = Field(0.0, ge=0, lt=1, description="Local SGD momentum.")
    weight_decay: float = Field(0.0, ge=0, description="Local SGD weight decay.")


class FedAvgDropConfig(FedAvgConfig):
    """FedAvg that only samples devices with a full budget (T = M = D = 1), as in CoCoFL's code."""
