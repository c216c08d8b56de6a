"""Evaluation, what measures: features, kNN, the demo's report and the stability study."""
