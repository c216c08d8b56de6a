"""tf_mocov3: MoCo v3 self-supervised pre-training for Vision Transformers in TensorFlow / Keras 3.

    import tf_mocov3
    backbone = tf_mocov3.build_backbone("vit_small", image_size=224)   # images -> [CLS] features
    backbone = tf_mocov3.build_backbone("resnet50", image_size=224)    # images -> pooled 2048-d features
    backbone = tf_mocov3.load_backbone("/path/to/workdir")             # pre-trained or converted official weights

`ARCHS` is the sorted tuple of every arch name `build_backbone` takes (ViTs and ResNets, models/backbones.py).
"""

import importlib

# The public names, imported on first use (PEP 562) so that `python -m tf_mocov3.<command> --help`, which imports
# this package first, does not pay for TensorFlow.
_EXPORTS = {
    "MoCoV3": "tf_mocov3.models.moco", "build_moco": "tf_mocov3.models.moco",
    "load_backbone": "tf_mocov3.weights.pretrained", "load_classifier": "tf_mocov3.weights.pretrained",
    "load_encoder": "tf_mocov3.weights.pretrained", "restore_moco": "tf_mocov3.weights.pretrained",
    "ARCHS": "tf_mocov3.models.backbones", "build_backbone": "tf_mocov3.models.backbones",
}

__all__ = ["ARCHS", "MoCoV3", "build_backbone", "build_moco", "load_backbone", "load_classifier", "load_encoder",
           "restore_moco"]


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tf_mocov3' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
