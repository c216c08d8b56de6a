"""Training: the one run loop (loop.py) and its tasks -- pre-training, fine-tuning, the linear probe -- over the
trainer, with strategies, optimizers, schedules, callbacks, checkpoints and reports."""
