"""The training engine shared by every task: loop, checkpoints, devices, logging."""
