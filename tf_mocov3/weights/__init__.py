"""Weights: loading any --pretrained path, the official-checkpoint converter and the plain-Keras file."""
