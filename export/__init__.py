"""The export stage: frozen MoCo v3 backbones as SavedModels for TF Serving, a plain-Keras
backbone for fine-tuning jobs, and a client that queries a running model server.

  python -m export.saved_model --pretrained=WORKDIR --output=/models/mocov3   # writes /models/mocov3/1/
  python -m export.client --images=FOLDER --output=features.npy               # queries TF Serving
"""
