"""Data: sources (TFDS, image folders, IDX files), the example order, augmentation and the input pipelines."""
