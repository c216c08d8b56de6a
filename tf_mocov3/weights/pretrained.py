"""Loads pre-trained MoCo v3 weights from any path that `--pretrained` accepts.

A path may be:
  * a pre-training workdir (WORKDIR/config.json + WORKDIR/checkpoints/ckpt-STEP): the latest checkpoint is used;
  * a checkpoint prefix (WORKDIR/checkpoints/ckpt-200), read with WORKDIR/config.json;
  * a directory written by `python -m tf_mocov3.convert_official` (the same layout, with ckpt-0 and no optimizer;
    its config.json has `source = "official:<file>"`);
  * a `backbone.keras` written by `python -m export.saved_model` (standard Keras layers;
    tf_mocov3/weights/plain_keras.py).

Any of them may be local or a URL (gs://, or ram:// in tests): every look-up goes through tf.io.gfile.

Every checkpoint stores the model under the key "model", so its variables read "model/backbone/...",
"model/projector/...", "model/predictor/...", "model/momentum_backbone/...", "model/momentum_projector/...";
a converted linear-probe checkpoint adds "classifier/..." (a Dense(num_classes) on the [CLS] feature).

Example:

    backbone = load_backbone("/tmp/mocov3_vit_base")            # images [B, 224, 224, 3] -> [B, 768]
    encoder = load_encoder("/tmp/run/checkpoints/ckpt-200", image_size=96)
    restore_moco(model, "/tmp/mocov3_vit_base")                  # continue pre-training
"""

import os
from typing import NamedTuple
from typing import Optional

import keras
import ml_collections
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from tf_mocov3 import config_lib
from tf_mocov3.models import backbones
from tf_mocov3.models import moco
from tf_mocov3.models import vit
from tf_mocov3.weights import plain_keras

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
# The Dense(num_classes) of a converted linear-probe checkpoint, stored next to "model".
CLASSIFIER_KEY = "classifier"
MOCO_PARTS = ("backbone", "projector", "predictor", "momentum_backbone", "momentum_projector")


class PretrainedEncoder(NamedTuple):
    """What `load_encoder` returns.

    Attributes:
      backbone: keras.Model, images [B, S, S, 3] -> [CLS] features [B, D].
      projector: keras.Model [B, D] -> [B, moco_dim], or None when the weights hold no projector
        (converted linear-probe or DeiT-layout checkpoints).
      config: ml_collections.ConfigDict, the pre-training config of the run (every key: config_lib.complete).
      source: 'workdir' | 'checkpoint' | 'official' | 'keras'.
    """

    backbone: keras.Model
    projector: Optional[keras.Model]
    config: ml_collections.ConfigDict
    source: str


class _Resolved(NamedTuple):
    prefix: str        # the checkpoint prefix to read
    config: ml_collections.ConfigDict
    source: str


# === Path resolution ===


def _read_config(workdir, path):
    """WORKDIR/config.json completed with base_config's defaults (config_lib.complete: a run recorded before a key
    existed reads as what it ran with)."""
    config = config_lib.read_json(os.path.join(workdir, CONFIG_FILE))
    if config is None:
        raise ValueError(f"Pretrained path {path} has no {CONFIG_FILE} in {workdir}; pass a pre-training workdir, "
                         f"one of its checkpoints, or a directory written by tf_mocov3.convert_official.")
    return config_lib.complete(config, "pretrain")


def _is_file(path):
    return tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path)


def _parent(path):
    """The directory holding `path` (a trailing slash ignored); os.path.normpath would turn gs://b into gs:/b."""
    return os.path.dirname(config_lib.absolute_path(path.rstrip("/")))


def _is_official(config):
    # The one key read with a fallback: only convert_official records `source`; a trained run's config has none.
    return str(config.get("source", "")).startswith("official:")


def resolve(path):
    """Finds the checkpoint prefix, config and kind of `path` (see the module docstring)."""
    path = os.fspath(path)
    if _is_file(path + ".index"):  # a checkpoint prefix: WORKDIR/checkpoints/ckpt-N
        workdir = _parent(_parent(path))
        config = _read_config(workdir, path)
        return _Resolved(path, config, "official" if _is_official(config) else "checkpoint")
    if not tf.io.gfile.exists(path):
        raise ValueError(f"Pretrained path {path} does not exist; pass a pre-training workdir, a checkpoint prefix "
                         f"such as WORKDIR/checkpoints/ckpt-200, or a directory written by tf_mocov3.convert_official.")
    if not tf.io.gfile.isdir(path):
        raise ValueError(f"Pretrained path {path} is a file but not a TensorFlow checkpoint (no {path}.index); "
                         f"pass the workdir, a checkpoint prefix, or convert a PyTorch file with "
                         f"tf_mocov3.convert_official.")
    workdir = path
    if os.path.basename(path.rstrip("/")) == CHECKPOINT_DIR and not tf.io.gfile.isdir(
            os.path.join(path, CHECKPOINT_DIR)):
        workdir = _parent(path)  # WORKDIR/checkpoints given
    prefix = tf.train.latest_checkpoint(os.path.join(workdir, CHECKPOINT_DIR))
    if not prefix:
        raise ValueError(f"Pretrained path {path} holds no checkpoint in {os.path.join(workdir, CHECKPOINT_DIR)}; "
                         f"train longer than config.checkpoint_every_steps, or pass another workdir.")
    config = _read_config(workdir, path)
    return _Resolved(prefix, config, "official" if _is_official(config) else "workdir")


def _stored_objects(prefix):
    """Names of the objects a checkpoint stores at its root and under "model" (read from its object graph).

    Variable key strings cannot tell this: a training checkpoint names each trainable variable after the first
    path that reaches it, often optimizer/_trainable_variables/N, not model/backbone/...
    """
    # `prefix` is already a checkpoint prefix: tf.train.load_checkpoint would first ask whether it is a directory,
    # which ram:// answers yes for WORKDIR/checkpoints/ckpt-0 (its listing matches ckpt-0.index by name prefix).
    reader = tf.compat.v1.train.NewCheckpointReader(prefix)
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    root = {child.local_name: child.node_id for child in graph.nodes[0].children}
    model = {child.local_name for child in graph.nodes[root["model"]].children} if "model" in root else set()
    return set(root), model, reader


def untracked_weights(model):
    """Weights of `model` that tf.train.Checkpoint cannot reach (it would neither save nor restore them)."""
    reachable = {id(obj) for obj in tf.train.TrackableView(model).descendants()}
    return [w for w in model.weights if id(w) not in reachable]


def _check_tracked(model):
    lost = untracked_weights(model)
    if lost:
        raise ValueError(f"{len(lost)} of the {len(model.weights)} weights of {model.name} are invisible to "
                         f"tf.train.Checkpoint (e.g. {lost[0].path}): a layer keeps sub-layers in a Python list; "
                         f"this is a tf_mocov3 bug, please report it.")


def _restore(prefix, parts, extra=None):
    """Restores `parts` ({name: keras object} under "model") and `extra` ({name: object} at the root)."""
    root = tf.train.Checkpoint(model=tf.train.Checkpoint(**parts), **(extra or {}))
    try:
        status = root.restore(prefix).expect_partial()
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"Checkpoint {prefix} does not fit the model built from its config.json ({first[:300]}); "
                         f"check that config.json belongs to this checkpoint.") from err


# === Builders ===


def _build_backbone(resolved, image_size, arch, path):
    config = resolved.config
    if arch is not None and arch != config.model.arch:
        raise ValueError(f"Pretrained path {path} holds a {config.model.arch} backbone, not the requested {arch}; "
                         f"pass weights of {arch} or ask for {config.model.arch}.")
    size = int(image_size or config.dataset.image_size)
    try:
        return backbones.build_backbone(config.model.arch, size,
                                        train_patch_embed=bool(config.model.train_patch_embed),
                                        name="backbone", **vit.config_overrides(config.model))
    except ValueError as err:
        raise ValueError(f"Cannot build the backbone of {path} at image_size={size}: {err}") from err


def load_backbone(path, image_size=None, *, arch=None):
    """The pre-trained backbone: normalised float32 images [B, S, S, 3] -> [CLS] features [B, D].

    Args:
      path: a workdir, checkpoint prefix or converted official directory (see the module docstring).
      image_size: S; None = the pre-training size. Any multiple of the patch size works (the sin-cos position
        embedding is a constant recomputed for the size).
      arch: if given, raise a ValueError unless the weights are of this architecture.
    """
    if _is_keras_file(path):
        return _load_keras_file(path, image_size, arch).backbone
    resolved = resolve(path)
    backbone = _build_backbone(resolved, image_size, arch, path)
    _check_tracked(backbone)
    _restore(resolved.prefix, {"backbone": backbone})
    return backbone


def load_encoder(path, image_size=None, *, arch=None):
    """The backbone plus, when the weights have one, the projector; see PretrainedEncoder."""
    if _is_keras_file(path):
        return _load_keras_file(path, image_size, arch)
    resolved = resolve(path)
    backbone = _build_backbone(resolved, image_size, arch, path)
    _, stored, _ = _stored_objects(resolved.prefix)
    parts = {"backbone": backbone}
    projector = None
    if "projector" in stored:
        projector = moco.build_projector_of(resolved.config.model, backbone.output.shape[-1],
                                            method=resolved.config.method)
        parts["projector"] = projector
    for model in parts.values():
        _check_tracked(model)
    _restore(resolved.prefix, parts)
    return PretrainedEncoder(backbone, projector, resolved.config, resolved.source)


def _is_keras_file(path):
    return os.fspath(path).endswith(".keras")


def _load_keras_file(path, image_size, arch):
    if not _is_file(path):
        raise ValueError(f"Pretrained path {path} does not exist; pass the backbone.keras that "
                         f"`python -m export.saved_model` wrote next to the SavedModel.")
    config = plain_keras.keras_backbone_config(path)
    if arch is not None and arch != config.model.arch:
        raise ValueError(f"Pretrained path {path} holds a {config.model.arch} backbone, not the requested {arch}; "
                         f"pass weights of {arch} or ask for {config.model.arch}.")
    return PretrainedEncoder(plain_keras.load_keras_backbone(path, image_size), None, config, "keras")


def restore_moco(model, path):
    """Loads backbone, projector, predictor and momentum encoder of `model` (a MoCoV3) from `path`.

    For continued pre-training from a workdir or from converted official pre-training weights. The optimizer
    state is not read (converted weights have none).
    """
    resolved = resolve(path)
    _, stored, _ = _stored_objects(resolved.prefix)
    wanted = [part for part in MOCO_PARTS if getattr(model, part) is not None]  # SimCLR: no momentum encoder
    missing = [part for part in wanted if part not in stored]
    if missing:
        raise ValueError(f"Pretrained path {path} has no {', '.join(missing)}: it holds only a backbone (a "
                         f"linear-probe or DeiT-layout checkpoint); continue pre-training from a MoCo v3 "
                         f"pre-training checkpoint (keys module.base_encoder.*, module.momentum_encoder.*, "
                         f"module.predictor.*) instead.")
    parts = {part: getattr(model, part) for part in wanted}
    for part in parts.values():
        _check_tracked(part)
    _restore(resolved.prefix, parts)


def load_classifier(path, image_size=None):
    """The converted official linear probe: images [B, S, S, 3] -> logits [B, num_classes].

    Only directories converted from a linear-probe checkpoint (main_lincls.py) hold a classifier.
    """
    resolved = resolve(path)
    root, _, reader = _stored_objects(resolved.prefix)
    shapes = reader.get_variable_to_shape_map()
    kernel = [shape for name, shape in shapes.items() if name.startswith(f"{CLASSIFIER_KEY}/") and len(shape) == 2]
    if CLASSIFIER_KEY not in root or not kernel:
        raise ValueError(f"Pretrained path {path} holds no linear classifier; convert an official linear-probe "
                         f"checkpoint (linear-vit-*.pth.tar, or linear-*ep.pth.tar for ResNet-50) with "
                         f"tf_mocov3.convert_official, or use load_backbone.")
    backbone = _build_backbone(resolved, image_size, None, path)
    classifier = keras.layers.Dense(kernel[0][1], name=CLASSIFIER_KEY)
    classifier.build((None, backbone.output.shape[-1]))
    _check_tracked(backbone)
    _restore(resolved.prefix, {"backbone": backbone}, {CLASSIFIER_KEY: classifier})
    logits = classifier(backbone.output)
    return keras.Model(backbone.input, logits, name="linear_classifier")
