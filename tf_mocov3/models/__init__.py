"""Models: the ViT backbones, the projector / predictor heads, the contrastive loss and the MoCo v3 model."""
