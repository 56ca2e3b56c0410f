"""The PyTorch peers the runners measure against, one figure per process."""
