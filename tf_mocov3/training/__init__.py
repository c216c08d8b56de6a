"""Training: strategies, optimizers, schedules, callbacks, checkpoints, reports and the pre-training run."""
