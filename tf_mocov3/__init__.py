"""tf_mocov3: MoCo v3 self-supervised pre-training for ViTs in TensorFlow / Keras 3."""
