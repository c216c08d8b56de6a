r"""Exports a pre-trained MoCo v3 backbone as a frozen SavedModel for TF Serving, plus a Keras file for fine-tuning.

  python -m export.saved_model --pretrained=runs/demo --output=/models/mocov3 \
      [--version=N] [--image_size=224] [--with_projector] [--overwrite]

--pretrained is anything `tf_mocov3.weights.pretrained.load_encoder` reads: a pre-training workdir (latest
checkpoint), a checkpoint prefix (WORKDIR/checkpoints/ckpt-200), a converted official model, or a `backbone.keras`
written here.
The version directory DIR/N (N defaults to one more than the newest version already in DIR, else 1) is written in
TF Serving's layout, to a temporary directory DIR/.tmp-N-* first and then moved to DIR/N. On a local disk the move
is one atomic rename, so a model server watching DIR never sees a half-written version. DIR may also be a URL (gs://,
or ram:// in tests: every file goes through tf.io.gfile), where a directory cannot be renamed in one step: the files
are moved one by one with saved_model.pb last, so a server that looks during the move finds no SavedModel yet, fails
that load and retries it (tensorflow_model_server --max_num_load_retries, 5 by default, a minute apart):

  DIR/N/saved_model.pb, DIR/N/variables/      the frozen SavedModel (no trainable variable; BN and LayerNorm in
                                              inference mode)
  DIR/N/assets.extra/tf_serving_warmup_requests   PredictionLog records TF Serving replays before it serves
  DIR/N/assets.extra/export_info.json         image size, feature width, signatures, source
  DIR/N/backbone.keras                        the backbone with trainable weights, standard Keras layers only:
                                              `keras.saving.load_model` opens it without this project

Signatures (S = --image_size, D = the backbone width; with --with_projector every signature also returns
`projection` float32 [batch, moco_dim], the projector output used for retrieval):

  serving_default     image_bytes: string [batch]  (JPEG / PNG / GIF / BMP, any size, sizes may differ)
  embed_images        images: uint8 [batch, height, width, 3]  (any size)
  embed_preprocessed  images: float32 [batch, S, S, 3]  (already resized, cropped and ImageNet-normalised)
  -> features: float32 [batch, D], the [CLS] feature after the final LayerNorm (ViT), or the globally
     average-pooled feature (ResNet: D = 2048 for ResNet-50).

The first two pre-process inside the graph exactly as the linear-probe evaluation does
(`tf_mocov3.data.augment.eval_preprocess`: resize the shorter side to S * 256 / 224, centre crop S, normalise with the
ImageNet mean and std). A bad request (bytes that are no image, a wrong rank or channel count) fails with an
InvalidArgument error naming the problem; an empty batch returns an empty [0, D] result.
"""

import json
import os
import uuid

import numpy as np
import tensorflow as tf

from tf_mocov3 import cli
from tf_mocov3 import config_lib
from tf_mocov3.data import augment
from tf_mocov3.weights.plain_keras import to_plain_keras

SERVING_DEFAULT = "serving_default"
EMBED_IMAGES = "embed_images"
EMBED_PREPROCESSED = "embed_preprocessed"
SIGNATURES = (SERVING_DEFAULT, EMBED_IMAGES, EMBED_PREPROCESSED)
FEATURES = "features"
PROJECTION = "projection"
KERAS_FILE = "backbone.keras"
INFO_FILE = "export_info.json"
WARMUP_FILE = "tf_serving_warmup_requests"
_LN_EPSILON = 1e-6

# Leading bytes of the formats tf.io.decode_image reads.
_MAGIC = ((0, 3, b"\xff\xd8\xff"), (0, 4, b"\x89PNG"), (0, 3, b"GIF"), (0, 2, b"BM"))


# === Frozen feature extractor (the SavedModel) ===


def _frozen_copy(model):
    """Non-trainable tf.Variable copies of `model`'s weights and a call that runs the model on them.

    The Keras model itself is not tracked by the exported module (it would save its variables as trainable);
    the traced graph reads only the frozen copies, through `stateless_call` in inference mode.
    """
    def copy(variables):
        return [tf.Variable(v.numpy(), trainable=False, name=v.path.replace(":", "_")) for v in variables]

    trainable = copy(model.trainable_variables)
    non_trainable = copy(model.non_trainable_variables)

    def call(x):
        out, _ = model.stateless_call(trainable, non_trainable, x, training=False)
        return tf.cast(out, tf.float32)

    return trainable + non_trainable, call


def _require(condition, *message):
    """An assert op that the graph runs before anything depending on its result (InvalidArgument on failure)."""
    return tf.debugging.Assert(condition, list(message), summarize=8)


class FeatureExtractor(tf.Module):
    """A frozen backbone (and optional projector) with the three serving signatures.

    Args:
        backbone: keras.Model, normalised float32 images [B, S, S, 3] -> features [B, D] (static S).
        projector: optional keras.Model, [B, D] -> [B, moco_dim]; adds the `projection` output.
    """

    def __init__(self, backbone, projector=None):
        super().__init__(name="mocov3_feature_extractor")
        shape = backbone.input_shape
        if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 3:
            raise ValueError(f"The backbone must take square RGB images [B, S, S, 3] of a static size S, but its "
                             f"input shape is {shape}; build it with backbones.build_backbone(arch, image_size).")
        self.image_size = int(shape[1])
        self.feature_dim = int(backbone.output_shape[-1])
        self.projection_dim = int(projector.output_shape[-1]) if projector is not None else None
        self.backbone_variables, self._backbone = _frozen_copy(backbone)
        self._projector = None
        if projector is not None:
            self.projector_variables, self._projector = _frozen_copy(projector)
        s = self.image_size
        self.serve_image_bytes = tf.function(
            self._serve_image_bytes, input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        self.embed_images = tf.function(
            self._embed_images, input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
        self.embed_preprocessed = tf.function(
            self._embed_preprocessed, input_signature=[tf.TensorSpec([None, s, s, 3], tf.float32, name="images")])

    def signatures(self):
        return {SERVING_DEFAULT: self.serve_image_bytes, EMBED_IMAGES: self.embed_images,
                EMBED_PREPROCESSED: self.embed_preprocessed}

    # The checks use tf.raw_ops.Rank and tf.shape at run time: TF Serving feeds a request without comparing its
    # shape to the signature, so the graph itself must reject a wrong rank or channel count.

    def _outputs(self, images):
        features = self._backbone(images)
        outputs = {FEATURES: features}
        if self._projector is not None:
            outputs[PROJECTION] = self._projector(features)
        return outputs

    def _preprocess_each(self, elements):
        s = self.image_size
        return tf.map_fn(lambda e: augment.eval_preprocess(e, s), elements,
                         fn_output_signature=tf.TensorSpec([s, s, 3], tf.float32), parallel_iterations=8)

    def _serve_image_bytes(self, image_bytes):
        checks = [_require(tf.equal(tf.raw_ops.Rank(input=image_bytes), 1),
                           "serving_default expects image_bytes: a 1-D string tensor [batch] of encoded images; "
                           "got shape", tf.shape(image_bytes))]
        with tf.control_dependencies(checks):
            known = tf.zeros_like(image_bytes, tf.bool)
            for pos, length, magic in _MAGIC:
                known = known | tf.equal(tf.strings.substr(image_bytes, pos, length), magic)
            bad = tf.reshape(tf.where(tf.logical_not(known)), [-1])
            check = _require(tf.reduce_all(known), "image_bytes holds data that is not a JPEG, PNG, GIF or BMP "
                             "image at batch index(es)", bad)
        with tf.control_dependencies([check]):
            return self._outputs(self._preprocess_each(image_bytes))

    def _embed_images(self, images):
        shape = tf.shape(images)
        padded = tf.concat([shape, [0, 0, 0, 0]], axis=0)  # rank-safe indexing
        ok = tf.equal(tf.raw_ops.Rank(input=images), 4) & tf.equal(padded[3], 3)
        checks = [_require(ok, "embed_images expects images: uint8 [batch, height, width, 3] (RGB); got shape",
                           shape)]
        with tf.control_dependencies(checks):
            checks.append(_require(tf.reduce_all(padded[1:3] > 0), "embed_images got an image of height or "
                                   "width 0; shape", shape))
        with tf.control_dependencies(checks):
            return self._outputs(self._preprocess_each(tf.identity(images)))

    def _embed_preprocessed(self, images):
        s = self.image_size
        shape = tf.shape(images)
        padded = tf.concat([shape, [0, 0, 0, 0]], axis=0)
        ok = tf.equal(tf.raw_ops.Rank(input=images), 4) & tf.reduce_all(tf.equal(padded[1:4], [s, s, 3]))
        check = _require(ok, f"embed_preprocessed expects images: float32 [batch, {s}, {s}, 3], resized, cropped "
                         f"and normalised as eval_preprocess does; got shape", shape)
        with tf.control_dependencies([check]):
            return self._outputs(tf.identity(images))


# === Writing the export ===


def _next_version(output_dir):
    versions = [int(n) for n in (tf.io.gfile.listdir(output_dir) if tf.io.gfile.isdir(output_dir) else [])
                if n.strip("/").isdigit()]
    return max(versions, default=0) + 1


def _move_version(tmp, target):
    """Moves the finished export `tmp` to `target` (absent): one rename on a local disk; file by file elsewhere.

    TensorFlow's ram:// file system renames a directory without its files, and GCS renames one object at a time
    anyway (a copy and a delete each), so a URL's files are moved one by one, saved_model.pb last.
    """
    if "://" not in tmp:
        tf.io.gfile.rename(tmp, target)
        return
    files = []
    for folder, _, names in tf.io.gfile.walk(tmp):
        tf.io.gfile.makedirs(os.path.join(target, folder[len(tmp):].lstrip("/")))  # empty ones too (assets/)
        # ram:// lists by name prefix: assets.extra/X also shows up as a file ".extra" of assets/, one that does not
        # exist; on GCS this costs one look-up per file of the export (a handful).
        files.extend(path for path in (os.path.join(folder, name) for name in names) if tf.io.gfile.exists(path))
    files.sort(key=lambda path: os.path.basename(path) == "saved_model.pb")  # stable: saved_model.pb last
    for path in files:
        tf.io.gfile.rename(path, os.path.join(target, path[len(tmp):].lstrip("/")))
    try:
        tf.io.gfile.rmtree(tmp)
    except tf.errors.NotFoundError:  # ram:// deletes the tree, then fails on the phantom entry above
        pass


def warmup_images(seed=0):
    """A JPEG and a PNG of different sizes (smooth colour gradients), as encoded bytes."""
    rng = np.random.default_rng(seed)
    out = []
    for (h, w), fmt in (((240, 320), "jpeg"), ((96, 72), "png")):
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        img = np.stack([127 + 120 * np.sin(xx / rng.uniform(8, 30) + c) * np.cos(yy / rng.uniform(8, 30))
                        for c in range(3)], axis=-1).astype(np.uint8)
        enc = tf.io.encode_jpeg(img, quality=90) if fmt == "jpeg" else tf.io.encode_png(img)
        out.append(enc.numpy())
    return out


def write_warmup_requests(path, image_size, model_name="mocov3"):
    """TF Serving warm-up file: one PredictRequest per signature, on real (synthetic) images.

    TF Serving replays these records when it loads the version, so the first user request does not pay for
    graph optimisation. The model name in the records is not checked by the server.
    """
    from tensorflow_serving.apis import prediction_log_pb2  # pylint: disable=import-outside-toplevel

    from export import client  # pylint: disable=import-outside-toplevel

    images = warmup_images()
    decoded = tf.io.decode_image(images[0], channels=3).numpy()[None]
    preprocessed = augment.eval_preprocess(images[0], image_size).numpy()[None]
    requests = [
        (SERVING_DEFAULT, {"image_bytes": np.array(images, dtype=object)}),
        (SERVING_DEFAULT, {"image_bytes": np.array(images[:1] * 8, dtype=object)}),
        (EMBED_IMAGES, {"images": decoded}),
        (EMBED_PREPROCESSED, {"images": preprocessed}),
    ]
    with tf.io.TFRecordWriter(path) as writer:
        for signature, inputs in requests:
            request = client.build_predict_request(inputs, model_name=model_name, signature_name=signature)
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return len(requests)


def export_saved_model(backbone, output_dir, *, projector=None, version=None, overwrite=False,
                       write_keras=True, warmup=True, info=None):
    """Writes DIR/N: the frozen SavedModel with its signatures, warm-up requests and the backbone.keras.

    Args:
        backbone: keras.Model, images [B, S, S, 3] -> features [B, D] (a tf_mocov3 backbone for the .keras file).
        output_dir: str, the model's base directory (what tensorflow_model_server's --model_base_path names).
        projector: optional keras.Model [B, D] -> [B, moco_dim] for the `projection` output.
        version: int or None (one more than the newest existing version, else 1).
        overwrite: replace DIR/N if it exists; otherwise an existing version is an error.
        write_keras: also write DIR/N/backbone.keras.
        warmup: write assets.extra/tf_serving_warmup_requests (needs tensorflow-serving-api).
        info: optional dict merged into assets.extra/export_info.json.

    Returns:
        str, the version directory.

    Raises:
        FileExistsError: DIR/N exists and not `overwrite`.
    """
    if version is None:
        version = _next_version(output_dir)
    version = int(version)
    if version < 0:
        raise ValueError(f"--version must be a non-negative integer, got {version}.")
    target = os.path.join(output_dir, str(version))
    if tf.io.gfile.exists(target) and not overwrite:
        raise FileExistsError(f"{target} already exists; pass --overwrite to replace version {version} or choose "
                              f"another --version (default: the next free one, {_next_version(output_dir)}).")
    tf.io.gfile.makedirs(output_dir)
    extractor = FeatureExtractor(backbone, projector)
    tmp = os.path.join(output_dir, f".tmp-{version}-{uuid.uuid4().hex[:8]}")
    tf.io.gfile.makedirs(tmp)
    try:
        tf.saved_model.save(extractor, tmp, signatures=extractor.signatures())
        extra = os.path.join(tmp, "assets.extra")
        tf.io.gfile.makedirs(extra)
        num_warmup = write_warmup_requests(os.path.join(extra, WARMUP_FILE), extractor.image_size) if warmup else 0
        if write_keras:
            to_plain_keras(backbone).save(os.path.join(tmp, KERAS_FILE))
        outputs = {FEATURES: ["float32", [-1, extractor.feature_dim]]}
        if projector is not None:
            outputs[PROJECTION] = ["float32", [-1, extractor.projection_dim]]
        s = extractor.image_size
        description = {
            "image_size": s, "feature_dim": extractor.feature_dim, "projection_dim": extractor.projection_dim,
            "preprocessing": f"resize shorter side to {int(s * 256 / 224)} (bilinear, antialiased), centre crop "
                             f"{s}, (x / 255 - mean) / std with ImageNet mean {augment.IMAGENET_MEAN} and std "
                             f"{augment.IMAGENET_STD}",
            "signatures": {
                SERVING_DEFAULT: {"inputs": {"image_bytes": ["string", [-1]]}, "outputs": outputs},
                EMBED_IMAGES: {"inputs": {"images": ["uint8", [-1, -1, -1, 3]]}, "outputs": outputs},
                EMBED_PREPROCESSED: {"inputs": {"images": ["float32", [-1, s, s, 3]]}, "outputs": outputs},
            },
            "warmup_requests": num_warmup, "keras_file": KERAS_FILE if write_keras else None,
        }
        description.update(info or {})
        with tf.io.gfile.GFile(os.path.join(extra, INFO_FILE), "w") as f:
            json.dump(description, f, indent=2)
        if tf.io.gfile.exists(target):
            tf.io.gfile.rmtree(target)
        _move_version(tmp, target)
    finally:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)
    return target


# === Command ===


class ExportError(ValueError):
    """A request the export cannot honour (one sentence naming the fix)."""


def main(argv):
    del argv  # cli.run rejects stray arguments
    from tf_mocov3.weights import pretrained  # pylint: disable=import-outside-toplevel

    flag = cli.FLAGS
    encoder = pretrained.load_encoder(flag.pretrained, image_size=flag.image_size)
    if flag.with_projector and encoder.projector is None:
        raise ExportError(f"--pretrained={flag.pretrained} has no projector ({encoder.source} weights); drop "
                          f"--with_projector or export from a pre-training workdir.")
    info = {"source": config_lib.absolute_path(flag.pretrained), "source_kind": encoder.source}
    try:
        info["arch"] = str(encoder.config.model.arch)
    except (AttributeError, KeyError):  # a source whose config records no arch
        pass
    target = export_saved_model(encoder.backbone, flag.output, projector=encoder.projector if flag.with_projector
                                else None, version=flag.version, overwrite=flag.overwrite, info=info)
    base = config_lib.absolute_path(flag.output)
    print(f"Wrote {target}: SavedModel with signatures {', '.join(SIGNATURES)}"
          f"{' (+ projection output)' if flag.with_projector else ''}, warm-up requests and {KERAS_FILE}.\n"
          f"Serve it with:\n  tensorflow_model_server --port=8500 --rest_api_port=8501 --model_name=mocov3 "
          f"--model_base_path={base}", flush=True)


def define_flags():
    """The command's flags (defined when it runs, not on import: the tests import this module beside others)."""
    from absl import flags  # pylint: disable=import-outside-toplevel

    cli.define_flags(pretrained="Pre-training workdir, checkpoint prefix, converted official weights or "
                                "backbone.keras.", required=("pretrained", "output"))
    flags.DEFINE_string("output", None, "Model base directory; the export goes to OUTPUT/VERSION.")
    flags.DEFINE_integer("version", None, "Version number (default: one more than the newest in --output, else 1).")
    flags.DEFINE_integer("image_size", None, "Input size S of the exported model (default: the pre-training size).")
    flags.DEFINE_bool("with_projector", False, "Also return the projector output `projection` (retrieval).")
    flags.DEFINE_bool("overwrite", False, "Replace OUTPUT/VERSION if it exists.")


if __name__ == "__main__":
    define_flags()
    cli.run(main, errors=(ExportError,))
