"""The one place that builds "the backbone of a run" from its arch name: a ViT (vit.py) or a ResNet (resnet.py).

Every command builds its backbone here (pre-training, the converter, `--pretrained` loading, fine-tuning, the demo's
random baseline, the export), so an arch name means the same model everywhere, and the options that only a ViT has
(a trained or frozen patch projection, stochastic depth, size overrides such as patch_size) are refused for a
ResNet with one sentence instead of being ignored.

Example:

    backbone = build_backbone("resnet50", 224)          # [B, 224, 224, 3] -> [B, 2048]
    backbone = build_backbone("vit_small", 224)         # [B, 224, 224, 3] -> [B, 384]
    heads = head_layout("resnet50")                     # {"projector_layers": 2, "predictor_last_bn": False}
"""

import numbers

from tf_mocov3.models import resnet
from tf_mocov3.models import vit

ARCHS = tuple(sorted(set(vit.ARCHS) | set(resnet.ARCHS)))
# ViT options that a run config holds as config.model.KEY rather than config.model.overrides.KEY.
_MODEL_KEYS = ("drop_path_rate", "pos_embed", "pooling")


def is_resnet(arch):
    return arch in resnet.ARCHS


def is_vit(arch):
    return arch in vit.ARCHS


def check_arch(arch):
    if arch not in vit.ARCHS and arch not in resnet.ARCHS:
        raise ValueError(f"Unknown arch {arch!r}; choose one of: {', '.join(ARCHS)}.")


def option_problems(arch, *, train_patch_embed=False, overrides=None, key_prefix="config.model.",
                    overrides_prefix=None):
    """The ViT-only options set for a ResNet arch, one sentence each (empty for a ViT or a clean ResNet config).

    Keys are named `{key_prefix}train_patch_embed`, `{key_prefix}drop_path_rate` and `{overrides_prefix}KEY`
    for the other overrides (default: `{key_prefix}overrides.`, as in config.model.overrides.patch_size).
    """
    if overrides_prefix is None:
        overrides_prefix = f"{key_prefix}overrides."
    if not is_resnet(arch):
        return []
    problems = []
    if train_patch_embed:
        problems.append(f"{key_prefix}train_patch_embed=True is a ViT option but {arch} has no patch projection; "
                        f"set {key_prefix}train_patch_embed=False.")
    for key, value in sorted((overrides or {}).items()):
        if value is None:
            continue
        if key == "drop_path_rate" and not value:
            continue  # 0 means "off", which a ResNet is
        if (key, value) in (("pos_embed", "sincos"), ("pooling", "cls")):
            continue  # the defaults name what a ResNet does not have either way
        where = f"{key_prefix}{key}" if key in _MODEL_KEYS else f"{overrides_prefix}{key}"
        problems.append(f"{where}={value!r} is a ViT option that {arch} does not have; remove it "
                        f"(or set it to 0 / leave it unset).")
    return problems


def build_backbone(arch, image_size=224, *, train_patch_embed=False, name="backbone", **overrides):
    """Builds the backbone `arch` (a key of `ARCHS`): images [B, S, S, 3] -> features [B, D].

    Args:
        arch: str, a ViT arch (vit.ARCHS) or a ResNet arch (resnet.ARCHS).
        image_size: int, the square input size S.
        train_patch_embed: bool, ViT only: train the patch projection (False: the paper's frozen random one).
        name: str, the model name.
        **overrides: ViT only: patch_size, embed_dim, depth, num_heads, mlp_ratio, drop_path_rate, pos_embed,
            pooling (vit.build_backbone).

    Raises:
        ValueError: unknown arch, or a ViT-only option given for a ResNet (one sentence naming the option).
    """
    check_arch(arch)
    if is_resnet(arch):
        problems = option_problems(arch, train_patch_embed=train_patch_embed, overrides=overrides, key_prefix="",
                                   overrides_prefix="")
        if problems:
            raise ValueError(" ".join(problems))
        return resnet.build_resnet(arch, image_size, name=name)
    return vit.build_backbone(arch, image_size, train_patch_embed=train_patch_embed, name=name, **overrides)


def resolve_config(arch, image_size, overrides):
    """Checks `overrides` and `image_size` for `arch` without building anything (ValueError when they do not fit)."""
    check_arch(arch)
    if is_resnet(arch):
        problems = option_problems(arch, overrides=overrides, key_prefix="", overrides_prefix="")
        if problems:
            raise ValueError(" ".join(problems))
        if not isinstance(image_size, numbers.Integral) or image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}; set it to e.g. 224.")
        return dict(resnet.arch_entry(arch))
    return vit.resolve_config(arch, image_size, overrides)


def has_batchnorm(arch):
    """True when the backbone holds BatchNorm (ResNets, conv-stem ViTs): the MoCo step then runs each view on its
    own, so that batch statistics are per view as in the official code."""
    check_arch(arch)
    return True if is_resnet(arch) else vit.backbone_has_batchnorm(arch)


def head_layout(arch):
    """The MoCo heads of `arch` (official builder.py): MoCo_ResNet has a 2-layer projector and a predictor whose
    last layer has no BN; MoCo_ViT a 3-layer projector and a predictor ending in an affine-free BN."""
    check_arch(arch)
    if is_resnet(arch):
        return {"projector_layers": 2, "predictor_last_bn": False}
    return {"projector_layers": 3, "predictor_last_bn": True}


def feature_dim(arch, overrides=None):
    """Width D of the backbone's feature (2048 for ResNet-50, embed_dim for a ViT)."""
    check_arch(arch)
    if is_resnet(arch):
        return resnet.feature_dim(arch)
    return int(dict(vit.ARCHS[arch], **{k: v for k, v in (overrides or {}).items() if v is not None})["embed_dim"])
