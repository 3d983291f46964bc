"""Training: flags, setup, the loop, checkpoints, resume, monitor, step metrics."""
