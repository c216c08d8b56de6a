"""tf_mocov3: MoCo v3 self-supervised pre-training for Vision Transformers in TensorFlow / Keras 3.

    import tf_mocov3
    backbone = tf_mocov3.build_backbone("vit_small", image_size=224)   # images -> [CLS] features
    backbone = tf_mocov3.load_backbone("/path/to/workdir")             # pre-trained or converted official weights
"""

from tf_mocov3.models.moco import MoCoV3, build_moco
from tf_mocov3.weights.pretrained import load_backbone, load_classifier, load_encoder, restore_moco
from tf_mocov3.models.vit import ARCHS, build_backbone

__all__ = ["ARCHS", "MoCoV3", "build_backbone", "build_moco", "load_backbone", "load_classifier", "load_encoder",
           "restore_moco"]
