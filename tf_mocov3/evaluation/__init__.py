"""Evaluation: features, kNN, the linear probe, fine-tuning and the demo's report."""
