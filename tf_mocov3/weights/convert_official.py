r"""Imports the official MoCo v3 PyTorch checkpoints (facebookresearch/moco-v3) into the Keras models.

    pip install -r requirements-convert.txt          # PyTorch (CPU) is needed to read .pth.tar files
    python -m tf_mocov3.convert_official --input=vit-b-300ep.pth.tar --output=/tmp/mocov3_vit_base

The output directory has the layout of a pre-training workdir, so every command accepts it as --pretrained and
`tf_mocov3.load_backbone(DIR)` returns the backbone:
  DIR/config.json             a full pre-training config (arch, image size, moco/mlp dims) with
                              source = "official:<input file name>"
  DIR/checkpoints/ckpt-0      tf.train.Checkpoint(model=...): "model/backbone/...", and for pre-training
                              checkpoints also model/projector, model/predictor, model/momentum_backbone,
                              model/momentum_projector (BN moving statistics included), so pre-training can continue;
                              for linear-probe checkpoints also "classifier/..." (Dense(num_classes); see
                              tf_mocov3.weights.pretrained.load_classifier)
  DIR/conversion.json         what was read: kind, arch, tensor counts, the position-embedding difference

Inputs (the layouts the official code writes):
  pre-training (main_moco.py)  {'state_dict': module.base_encoder.*, module.momentum_encoder.*, module.predictor.*}
                               ViT: projector base_encoder.head.*; ResNet-50 (r-50-100ep/300ep/1000ep.pth.tar):
                               torchvision keys conv1, bn1, layer1.0.conv1 ... and the projector base_encoder.fc.*
  linear probe (main_lincls.py) {'state_dict': module.<backbone keys>, module.head.weight / bias}  (ViT)
                               {'state_dict': module.<torchvision keys>, module.fc.weight / bias}  (ResNet-50:
                               linear-100ep/300ep/1000ep.pth.tar)
  DeiT layout (convert_to_deit.py) {'model': <backbone keys>}  (base encoder only, head dropped)
The architecture (vit_small, vit_base, vit_conv_small, vit_conv_base, resnet50) is inferred from the shapes unless
--arch is given; the number of heads cannot be seen in the shapes and comes from the arch (12 for all four ViTs).
ResNet weights are converted at 224 px (any size works: the pooling is global).

Conversions: conv OIHW -> HWIO; Linear [out, in] -> Dense [in, out]; the fused qkv Linear keeps its
[q | k | v] x heads column order, which our attention splits the same way; LayerNorm weight / bias -> gamma / beta;
BatchNorm weight, bias, running_mean, running_var -> gamma, beta, moving_mean, moving_variance
(num_batches_tracked has no Keras counterpart and is dropped); [CLS] token as is. pos_embed is not a weight here
(our ViT recomputes the fixed 2-D sin-cos table): it is compared with that table, and a difference above 1e-4 stops
the conversion. Every key must be used: unexpected keys, missing keys and shape mismatches are reported together.

Files are read with torch.load(weights_only=True): a checkpoint that contains anything but tensors and plain
containers (an object whose unpickling could run code) is refused.
"""

import math
import os
import pickle

import keras
import numpy as np
import tensorflow as tf

from tf_mocov3 import config_lib
from tf_mocov3.models import backbones
from tf_mocov3.models import moco
from tf_mocov3.models import resnet
from tf_mocov3.models import vit
from tf_mocov3.weights import pretrained

POS_EMBED_TOLERANCE = 1e-4
INSTALL_HINT = ("tf_mocov3.convert_official reads PyTorch files and needs PyTorch: "
                "pip install -r requirements-convert.txt (torch==2.13.0; the CPU wheel is enough).")
# Archs whose official checkpoints this converter knows (inferred from the shapes when --arch is not given).
OFFICIAL_ARCHS = ("vit_small", "vit_base", "vit_conv_small", "vit_conv_base", "resnet50")
RESNET_IMAGE_SIZE = 224


class ConversionError(ValueError):
    """The checkpoint cannot be converted; the message names every offending key and the fix."""


# === Reading the PyTorch file ===


def _import_torch():
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    return torch


def read_torch_checkpoint(path):
    """Reads `path` with torch.load(weights_only=True): never unpickles arbitrary objects.

    Returns the loaded object (usually a dict). Raises ConversionError when the file is refused or unreadable.
    """
    torch = _import_torch()
    if not os.path.isfile(path):
        raise ConversionError(f"--input={path} does not exist; pass the downloaded .pth.tar file.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ConversionError(
            f"Refused to read {path}: it contains Python objects other than tensors and plain containers, and "
            f"unpickling them could run code (torch.load weights_only=True said: "
            f"{str(err).strip().splitlines()[0][:200]}). Use the checkpoint from the official MoCo v3 release, "
            f"or re-save its tensors only.") from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ConversionError(f"Cannot read {path} as a PyTorch checkpoint ({err}); pass a .pth.tar file written "
                              f"by the official main_moco.py, main_lincls.py or convert_to_deit.py.") from err


def _to_numpy(value):
    if hasattr(value, "detach"):  # a torch.Tensor
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def extract_state_dict(checkpoint, name="the checkpoint"):
    """The state_dict of an official checkpoint as {key without 'module.': numpy array}."""
    if not isinstance(checkpoint, dict):
        raise ConversionError(f"{name} holds a {type(checkpoint).__name__}, not a dict; pass a checkpoint written "
                              f"by the official MoCo v3 code.")
    if isinstance(checkpoint.get("state_dict"), dict):
        state = checkpoint["state_dict"]
    elif isinstance(checkpoint.get("model"), dict):
        state = checkpoint["model"]
    elif checkpoint and all(hasattr(v, "shape") for v in checkpoint.values()):
        state = checkpoint
    else:
        raise ConversionError(f"{name} has no 'state_dict' (main_moco.py / main_lincls.py) or 'model' "
                              f"(convert_to_deit.py) entry; its top-level keys are {sorted(checkpoint)[:10]}.")
    out = {}
    for key, value in state.items():
        out[key[len("module."):] if key.startswith("module.") else key] = _to_numpy(value)
    return out


# === Layout: which torch key goes to which Keras variable ===


def _conv(w):
    return np.transpose(w, (2, 3, 1, 0))  # OIHW -> HWIO


def _linear(w):
    return np.transpose(w)  # [out, in] -> [in, out]


def _same(w):
    return w


class _Layout:
    """Collects (torch key, keras variable, transform) entries, plus keys that are read but not stored."""

    def __init__(self):
        self.entries = []
        self.ignored = set()    # keys that are accounted for without a Keras variable (num_batches_tracked)
        self.pos_embeds = {}    # pos_embed key -> backbone it belongs to

    def add(self, key, variable, transform=_same):
        self.entries.append((key, variable, transform))

    def batch_norm(self, key, bn):
        if bn.scale:
            self.add(key + ".weight", bn.gamma)
        if bn.center:
            self.add(key + ".bias", bn.beta)
        self.add(key + ".running_mean", bn.moving_mean)
        self.add(key + ".running_var", bn.moving_variance)
        self.ignored.add(key + ".num_batches_tracked")

    def backbone(self, prefix, backbone):
        patch = backbone.get_layer("patch_embed")
        if isinstance(patch, vit.ConvStem):
            # nn.Sequential: [conv, bn, relu] x 4, then the 1x1 conv at index 12.
            for i, (conv, bn) in enumerate(zip(patch.convs, patch.bns)):
                self.add(f"{prefix}patch_embed.proj.{3 * i}.weight", conv.kernel, _conv)
                self.batch_norm(f"{prefix}patch_embed.proj.{3 * i + 1}", bn)
            self.add(f"{prefix}patch_embed.proj.12.weight", patch.proj.kernel, _conv)
            self.add(f"{prefix}patch_embed.proj.12.bias", patch.proj.bias)
        else:
            self.add(f"{prefix}patch_embed.proj.weight", patch.kernel, _conv)
            self.add(f"{prefix}patch_embed.proj.bias", patch.bias)
        self.add(f"{prefix}cls_token", backbone.get_layer("cls_pos_embed").cls_token)
        self.pos_embeds[f"{prefix}pos_embed"] = backbone
        depth = sum(1 for layer in backbone.layers if layer.name.startswith("block_"))
        for i in range(depth):
            block = backbone.get_layer(f"block_{i}")
            key = f"{prefix}blocks.{i}"
            for torch_name, layer in (("norm1", block.norm1), ("norm2", block.norm2)):
                self.add(f"{key}.{torch_name}.weight", layer.gamma)
                self.add(f"{key}.{torch_name}.bias", layer.beta)
            for torch_name, layer in (("attn.qkv", block.attn.qkv), ("attn.proj", block.attn.proj),
                                      ("mlp.fc1", block.fc1), ("mlp.fc2", block.fc2)):
                self.add(f"{key}.{torch_name}.weight", layer.kernel, _linear)
                self.add(f"{key}.{torch_name}.bias", layer.bias)
        norm = backbone.get_layer("norm")
        self.add(f"{prefix}norm.weight", norm.gamma)
        self.add(f"{prefix}norm.bias", norm.beta)

    def resnet_backbone(self, prefix, backbone, arch):
        """resnet.build_resnet <- torchvision's ResNet keys (conv1, bn1, layer{s}.{b}.conv1 ... downsample.{0,1})."""
        self.add(f"{prefix}conv1.weight", backbone.get_layer("conv1").kernel, _conv)
        self.batch_norm(f"{prefix}bn1", backbone.get_layer("bn1"))
        blocks = resnet.blocks_of(backbone)
        for block, (stage, b) in zip(blocks, resnet.stage_of_blocks(arch)):
            key = f"{prefix}layer{stage + 1}.{b}"
            names = {layer.name for layer in block.layers}
            for j in (1, 2, 3):
                self.add(f"{key}.conv{j}.weight", block.get_layer(f"{block.name}_conv{j}").kernel, _conv)
                self.batch_norm(f"{key}.bn{j}", block.get_layer(f"{block.name}_bn{j}"))
            if f"{block.name}_downsample_conv" in names:
                self.add(f"{key}.downsample.0.weight", block.get_layer(f"{block.name}_downsample_conv").kernel,
                         _conv)
                self.batch_norm(f"{key}.downsample.1", block.get_layer(f"{block.name}_downsample_bn"))

    def mlp(self, prefix, mlp):
        """heads.build_mlp <- the official _build_mlp nn.Sequential ([Linear, BN, ReLU] ..., Linear[, BN])."""
        names = {layer.name for layer in mlp.layers}
        num_layers = sum(1 for name in names if name.startswith("linear_"))
        for i in range(num_layers):
            self.add(f"{prefix}.{3 * i}.weight", mlp.get_layer(f"linear_{i}").kernel, _linear)
            if f"bn_{i}" in names:  # the ResNet predictor ends without BN
                self.batch_norm(f"{prefix}.{3 * i + 1}", mlp.get_layer(f"bn_{i}"))


# === Inferring the architecture ===


def _detect_kind(state):
    if any(k.startswith("base_encoder.") for k in state):
        return "pretrain"
    if "head.weight" in state or ("fc.weight" in state and _is_resnet_state(state, "")):
        return "linear_probe"
    return "backbone"


def _is_resnet_state(state, prefix):
    return f"{prefix}layer1.0.conv1.weight" in state


def _resnet_dims(state, prefix):
    """Blocks per stage and stem width of torchvision ResNet keys."""
    stages = {}
    for key in state:
        parts = key[len(prefix):].split(".") if key.startswith(prefix) else []
        if len(parts) > 2 and parts[0].startswith("layer") and parts[0][5:].isdigit() and parts[1].isdigit():
            stages.setdefault(int(parts[0][5:]), set()).add(int(parts[1]))
    blocks = tuple(max(stages[s]) + 1 for s in sorted(stages))
    conv1 = state.get(prefix + "conv1.weight")
    return {"blocks": blocks, "width": int(conv1.shape[0]) if conv1 is not None else None}


def infer_resnet_arch(dims):
    """The resnet.ARCHS entry with these blocks per stage and this width; ConversionError when none has them."""
    for arch, entry in resnet.ARCHS.items():
        if tuple(entry["blocks"]) == dims["blocks"] and entry["width"] == dims["width"]:
            return arch
    raise ConversionError(
        f"Cannot infer the ResNet from the checkpoint's shapes ({list(dims['blocks'])} blocks per stage, width "
        f"{dims['width']}); known: {', '.join(sorted(resnet.ARCHS))} (torchvision resnet50 is [3, 4, 6, 3], 64). "
        f"Pass --arch for a ResNet this converter knows.")


def _backbone_dims(state, prefix):
    """embed_dim, depth, patch_size, mlp_ratio, conv_stem, grid (from pos_embed) as seen in the shapes."""
    def shape(key):
        return state[prefix + key].shape if prefix + key in state else None

    conv_stem = shape("patch_embed.proj.0.weight") is not None
    cls = shape("cls_token")
    dims = {"conv_stem": conv_stem, "embed_dim": int(cls[-1]) if cls is not None else None}
    blocks = {int(k[len(prefix):].split(".")[1]) for k in state
              if k.startswith(prefix + "blocks.") and k[len(prefix):].split(".")[1].isdigit()}
    dims["depth"] = max(blocks) + 1 if blocks else None
    proj = shape("patch_embed.proj.weight")
    dims["patch_size"] = 16 if conv_stem else (int(proj[-1]) if proj is not None else None)
    fc1 = shape("blocks.0.mlp.fc1.weight")
    dims["mlp_ratio"] = (fc1[0] / fc1[1]) if fc1 is not None else None
    pos = shape("pos_embed")
    dims["grid"] = None
    if pos is not None and len(pos) == 3:
        grid = math.isqrt(int(pos[1]) - 1)
        dims["grid"] = grid if grid * grid == int(pos[1]) - 1 else None
    return dims


def infer_arch(dims):
    """The official arch whose depth, width, patch and stem match `dims`; ConversionError when none does."""
    for arch in (a for a in OFFICIAL_ARCHS if a in vit.ARCHS):
        entry = vit.ARCHS[arch]
        if (entry["conv_stem"] == dims["conv_stem"] and entry["embed_dim"] == dims["embed_dim"]
                and entry["depth"] == dims["depth"] and entry["patch_size"] == dims["patch_size"]
                and dims["mlp_ratio"] in (None, entry["mlp_ratio"])):
            return arch
    raise ConversionError(
        f"Cannot infer the architecture from the checkpoint's shapes (width {dims['embed_dim']}, depth "
        f"{dims['depth']}, patch {dims['patch_size']}, conv stem {dims['conv_stem']}, mlp ratio {dims['mlp_ratio']}); "
        f"known: {', '.join(OFFICIAL_ARCHS)}. Pass --arch and, for a custom model, --model_overrides "
        f"(e.g. '{{\"embed_dim\": 32, \"depth\": 2, \"num_heads\": 2}}').")


# === Conversion ===


def build_config(kind, arch, overrides, image_size, state, source):
    """A full pre-training config for the converted weights (base_config with arch, size and head dims)."""
    config = config_lib.base_config()
    config.model.arch = arch
    for key, value in (overrides or {}).items():
        config.model.overrides[key] = value
    config.dataset.image_size = int(image_size)
    if kind == "pretrain":
        head, last_index = ("fc", 3) if backbones.is_resnet(arch) else ("head", 6)
        first = state.get(f"base_encoder.{head}.0.weight")
        last = state.get(f"base_encoder.{head}.{last_index}.weight")
        if first is not None:
            config.model.mlp_dim = int(first.shape[0])
        if last is not None:
            config.model.moco_dim = int(last.shape[0])
    config.source = source
    return config


def _check_pos_embed(state, layout):
    """Max |checkpoint pos_embed - our sin-cos table| over every pos_embed; raises when above the tolerance."""
    worst = 0.0
    for key, backbone in layout.pos_embeds.items():
        if key not in state:
            continue  # reported as a missing key
        cls_layer = backbone.get_layer("cls_pos_embed")
        table = vit.sincos_2d_position_embedding(cls_layer.grid_h, cls_layer.grid_w, cls_layer.dim)
        if state[key].shape != table.shape:
            continue  # reported as a shape mismatch
        diff = float(np.max(np.abs(state[key].astype(np.float64) - table.astype(np.float64))))
        worst = max(worst, diff)
        if not diff <= POS_EMBED_TOLERANCE:
            raise ConversionError(
                f"{key} differs from the fixed 2-D sin-cos position embedding by up to {diff:.3g} (tolerance "
                f"{POS_EMBED_TOLERANCE:g}): the checkpoint was not trained with MoCo v3's fixed sin-cos embedding "
                f"(e.g. a learned one), which tf_mocov3's ViT cannot represent; convert a MoCo v3 checkpoint.")
    return worst


def _apply(state, layout):
    """Assigns every entry; raises one ConversionError listing unexpected, missing and mis-shaped keys."""
    expected = {key for key, _, _ in layout.entries}
    accounted = expected | set(layout.pos_embeds) | layout.ignored
    unexpected = sorted(set(state) - accounted)
    missing = sorted((expected | set(layout.pos_embeds)) - set(state))
    mismatched = []
    for key, variable, transform in layout.entries:
        if key in state:
            value = transform(state[key])
            if tuple(value.shape) != tuple(variable.shape):
                mismatched.append(f"{key}: checkpoint {tuple(state[key].shape)} -> {tuple(value.shape)}, "
                                  f"model {tuple(variable.shape)}")
    for key, backbone in layout.pos_embeds.items():
        if key in state:
            cls_layer = backbone.get_layer("cls_pos_embed")
            want = (1, 1 + cls_layer.grid_h * cls_layer.grid_w, cls_layer.dim)
            if tuple(state[key].shape) != want:
                mismatched.append(f"{key}: checkpoint {tuple(state[key].shape)}, model {want}")
    if unexpected or missing or mismatched:
        lines = []
        if unexpected:
            lines.append(f"{len(unexpected)} unexpected key(s): " + ", ".join(unexpected))
        if missing:
            lines.append(f"{len(missing)} missing key(s): " + ", ".join(missing))
        if mismatched:
            lines.append(f"{len(mismatched)} shape mismatch(es): " + "; ".join(mismatched))
        raise ConversionError("The checkpoint does not fit the model: " + " | ".join(lines) +
                              ". Pass the right --arch / --model_overrides, or a checkpoint of a supported layout.")
    for key, variable, transform in layout.entries:
        variable.assign(transform(state[key]).astype(variable.dtype))


def convert_state_dict(state, *, arch=None, overrides=None, source="official"):
    """Builds the Keras models for `state` (an official state_dict, 'module.' stripped) and fills them.

    Args:
      state: {key: numpy array}, e.g. from extract_state_dict.
      arch: a backbones.ARCHS name (ViT or ResNet); None infers it from the shapes.
      overrides: backbone overrides for a custom arch (embed_dim, depth, num_heads, ...).
      source: recorded as config.source.

    Returns:
      dict with kind ('pretrain' | 'linear_probe' | 'backbone'), config, the filled objects (model: MoCoV3 for
      pre-training, else backbone and optionally classifier) and report (a JSON-able summary).
    """
    kind = _detect_kind(state)
    prefix = "base_encoder." if kind == "pretrain" else ""
    overrides = dict(overrides or {})
    if arch is None:
        if _is_resnet_state(state, prefix):
            arch = infer_resnet_arch(_resnet_dims(state, prefix))
        else:
            arch = infer_arch(_backbone_dims(state, prefix))
    elif arch not in backbones.ARCHS:
        raise ConversionError(f"--arch={arch} is unknown; choose one of {', '.join(OFFICIAL_ARCHS)}.")
    is_resnet = backbones.is_resnet(arch)
    if is_resnet:
        problems = backbones.option_problems(arch, overrides=overrides, key_prefix="", overrides_prefix="")
        if problems:
            raise ConversionError("--model_overrides: " + " ".join(problems))
        image_size = RESNET_IMAGE_SIZE
    else:
        patch = int(overrides.get("patch_size") or vit.ARCHS[arch]["patch_size"])
        image_size = (_backbone_dims(state, prefix)["grid"] or 14) * patch
    config = build_config(kind, arch, overrides, image_size, state, source)
    head_key = "fc" if is_resnet else "head"

    def add_backbone(key_prefix, backbone):
        if is_resnet:
            layout.resnet_backbone(key_prefix, backbone, arch)
        else:
            layout.backbone(key_prefix, backbone)

    layout = _Layout()
    out = {"kind": kind, "config": config}
    try:
        if kind == "pretrain":
            model = moco.build_moco(config.model, image_size=image_size, total_steps=1)
            add_backbone("base_encoder.", model.backbone)
            layout.mlp(f"base_encoder.{head_key}", model.projector)
            add_backbone("momentum_encoder.", model.momentum_backbone)
            layout.mlp(f"momentum_encoder.{head_key}", model.momentum_projector)
            layout.mlp("predictor", model.predictor)
            out["model"] = model
        else:
            backbone = backbones.build_backbone(arch, image_size, name="backbone",
                                                train_patch_embed=bool(config.model.train_patch_embed), **overrides)
            add_backbone("", backbone)
            out["backbone"] = backbone
            if kind == "linear_probe":
                num_classes = int(state[f"{head_key}.weight"].shape[0])
                classifier = keras.layers.Dense(num_classes, name=pretrained.CLASSIFIER_KEY)
                classifier.build((None, backbone.output.shape[-1]))
                layout.add(f"{head_key}.weight", classifier.kernel, _linear)
                layout.add(f"{head_key}.bias", classifier.bias)
                out["classifier"] = classifier
    except ValueError as err:
        if isinstance(err, ConversionError):
            raise
        raise ConversionError(f"Cannot build {arch} for this checkpoint ({err}); pass the right --arch / "
                              f"--model_overrides.") from err
    _apply(state, layout)
    pos_diff = _check_pos_embed(state, layout)
    out["report"] = {
        "source": source, "kind": kind, "arch": arch, "overrides": overrides, "image_size": image_size,
        "tensors_converted": len(layout.entries), "keys_read": len(state),
        "keys_dropped": sorted(layout.ignored & set(state)),
        "pos_embed_max_abs_diff": pos_diff,  # 0.0 for a ResNet (no position embedding to compare)
        "num_classes": int(state[f"{head_key}.weight"].shape[0]) if kind == "linear_probe" else None,
    }
    return out


def write_converted(result, output_dir):
    """Writes config.json, checkpoints/ckpt-0 and conversion.json of a convert_state_dict result, through
    tf.io.gfile (`output_dir` may be gs://)."""
    if tf.io.gfile.exists(os.path.join(output_dir, pretrained.CONFIG_FILE)):
        raise ConversionError(f"--output={output_dir} already holds a {pretrained.CONFIG_FILE}; choose a new "
                              f"directory (converted weights are never overwritten).")
    if result["kind"] == "pretrain":
        root = tf.train.Checkpoint(model=result["model"])
        parts = {name: getattr(result["model"], name) for name in pretrained.MOCO_PARTS}
    else:
        extra = {pretrained.CLASSIFIER_KEY: result["classifier"]} if "classifier" in result else {}
        root = tf.train.Checkpoint(model=tf.train.Checkpoint(backbone=result["backbone"]), **extra)
        parts = {"backbone": result["backbone"]}
    for name, part in parts.items():
        lost = pretrained.untracked_weights(part)
        if lost:
            raise ConversionError(
                f"{len(lost)} of the {len(part.weights)} weights of {name} (e.g. {lost[0].path}) are invisible to "
                f"tf.train.Checkpoint, so they cannot be written: a layer of this tf_mocov3 version keeps "
                f"sub-layers in a Python list; report this bug. Nothing was written.")
    tf.io.gfile.makedirs(os.path.join(output_dir, pretrained.CHECKPOINT_DIR))
    manager = tf.train.CheckpointManager(root, os.path.join(output_dir, pretrained.CHECKPOINT_DIR),
                                         max_to_keep=1, checkpoint_name="ckpt")
    prefix = manager.save(checkpoint_number=0)
    config_lib.write_file(os.path.join(output_dir, pretrained.CONFIG_FILE),
                          result["config"].to_json_best_effort(indent=2))
    config_lib.write_json(os.path.join(output_dir, "conversion.json"), result["report"], indent=2)
    return prefix


def convert_file(input_path, output_dir, *, arch=None, overrides=None):
    """Reads an official .pth.tar, converts it and writes `output_dir`; returns the report dict."""
    checkpoint = read_torch_checkpoint(input_path)
    state = extract_state_dict(checkpoint, name=input_path)
    result = convert_state_dict(state, arch=arch, overrides=overrides,
                                source=f"official:{os.path.basename(input_path)}")
    write_converted(result, output_dir)
    return result["report"]

