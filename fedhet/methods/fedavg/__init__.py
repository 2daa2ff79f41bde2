"""FedAvg (McMahan et al., AISTATS 2017) and FedAvg-drop, the baselines every method is compared with."""
