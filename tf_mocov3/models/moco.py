"""MoCoV3: the keras.Model whose `train_step` is one update of Algorithm 1, or of SimCLR or BYOL (`METHODS`).

One step of MoCo v3 (the default method), in the order of the official `MoCo.forward` (moco/builder.py):
  1. queries q1, q2 = predictor(projector(backbone(x_v))) for each view, with gradient;
  2. momentum update xi <- m * xi + (1 - m) * theta of the momentum encoder (backbone + projector), using the
     weights before this step's optimizer update; BN moving statistics are not averaged;
  3. keys k1, k2 from the momentum encoder, without gradient (BN in training mode, as in the official code);
  4. loss = ctr(q1, k2) + ctr(q2, k1), keys gathered from every replica;
  5. the optimizer step.

Each view goes through the projector and predictor on its own, so batch-norm statistics are per view. A backbone
without batch norm (the plain ViT: LayerNorm and attention act per image) gets both views in one call, which is the
same function and runs faster; a backbone with batch norm (conv-stem ViT, ResNet) gets one call per view.

Under tf.distribute, Keras sums gradients across replicas in `optimizer.apply`, so each replica differentiates
`loss_local / num_replicas`: the update equals the one-replica update on the same global batch.

The other frameworks of the paper (Table 4, Fig. 6) run the same step; `METHODS` is the one place that says what
each changes (`MethodSpec`): SimCLR has no momentum encoder and no predictor, its "keys" are the online projections
of the other view, gathered with their gradient, and its loss is NT-Xent over the 2N views of the global batch;
BYOL has the momentum encoder and the predictor of MoCo v3, heads with BN on hidden layers only (paper appendix A)
and the loss 2 - 2 cos without negatives (nothing gathered). Each loss is a local mean, so dividing by the replica
count keeps every method exact for any number of replicas.
"""

import collections
import math

import keras
from keras import ops
import tensorflow as tf

from tf_mocov3.data import augment
from tf_mocov3.models import backbones
from tf_mocov3.models import heads
from tf_mocov3.models import losses
from tf_mocov3.models import vit

MethodSpec = collections.namedtuple("MethodSpec", [
    "momentum_encoder",  # keys from a momentum copy of backbone + projector, without gradient
    "predictor",         # default of config.model.predictor (None there = this)
    "head_bn",           # default of config.model.head_bn ("auto" there = this); see head_settings
    "loss",              # models/losses.py function (q1, q2, k1, k2, temperature, replica_id) -> local loss
    "gather_keys",       # the loss needs the keys of every replica (negatives)
])

METHODS = {
    "mocov3": MethodSpec(momentum_encoder=True, predictor=True, head_bn="all",
                         loss=losses.symmetrized_loss, gather_keys=True),
    "simclr": MethodSpec(momentum_encoder=False, predictor=False, head_bn="all",
                         loss=losses.nt_xent_loss, gather_keys=True),
    "byol": MethodSpec(momentum_encoder=True, predictor=True, head_bn="hidden",
                       loss=losses.byol_loss, gather_keys=False),
}
# BN in the MLP heads (paper Table 7 and appendix A): all = hidden layers of both heads, the projector's output and
# (ViT) the predictor's output; projector = only the projector's BNs; hidden = hidden layers only, none on an output
# layer (BYOL); none = no BN in either head.
HEAD_BNS = ("all", "projector", "hidden", "none")


def method_spec(method):
    if method not in METHODS:
        raise ValueError(f"config.method={method!r} is unknown; choose one of {', '.join(METHODS)}.")
    return METHODS[method]


def resolved_head_bn(model_config, method="mocov3"):
    """config.model.head_bn, with "auto" meaning the method's own heads."""
    head_bn = model_config["head_bn"]
    return method_spec(method).head_bn if head_bn == "auto" else head_bn


def resolved_predictor(model_config, method="mocov3"):
    """config.model.predictor, with None meaning the method's default (SimCLR has none)."""
    value = model_config["predictor"]
    return method_spec(method).predictor if value is None else bool(value)


def head_settings(arch, head_bn="all"):
    """Layer counts and BN switches of the projector and the predictor for `arch` and a HEAD_BNS policy.

    The arch decides the layout as the official builder.py does (backbones.head_layout); the policy removes BNs.
    """
    if head_bn not in HEAD_BNS:
        raise ValueError(f"config.model.head_bn={head_bn!r} is unknown; choose auto or one of {', '.join(HEAD_BNS)}.")
    layout = backbones.head_layout(arch)
    proj_hidden = head_bn in ("all", "projector", "hidden")
    return {
        "projector": {"num_layers": layout["projector_layers"], "hidden_bn": proj_hidden,
                      "last_bn": head_bn in ("all", "projector")},
        "predictor": {"hidden_bn": head_bn in ("all", "hidden"),
                      "last_bn": layout["predictor_last_bn"] and head_bn == "all"},
    }


def build_projector_of(model_config, feature_dim, *, method="mocov3", name="projector"):
    """The projector of a run's config.model (what load_encoder rebuilds to read a checkpoint's projector)."""
    settings = head_settings(model_config.arch, resolved_head_bn(model_config, method))["projector"]
    return heads.build_projector(feature_dim, mlp_dim=model_config.mlp_dim, dim=model_config.moco_dim, name=name,
                                 **settings)


def _is_moving_statistic(variable):
    name = variable.path if hasattr(variable, "path") else variable.name
    return "moving_mean" in name or "moving_variance" in name


def _block_layers(backbone):
    """The first and the last transformer block of a backbone (empty when it has none)."""
    names = [layer.name for layer in backbone.layers if layer.name.startswith("block_")]
    if not names:
        return []
    names.sort(key=lambda n: int(n.split("_")[1]))
    return [backbone.get_layer(names[0]), backbone.get_layer(names[-1])]


def to_model_input(views):
    """A batch of views as the backbone takes it: uint8 views (the pre-training pipeline's, 1 byte a value across
    to the device) are normalised here (augment.normalize_uint8); float views are already normalised."""
    return augment.normalize_uint8(views) if views.dtype == tf.uint8 else views


def momentum_schedule(step, base_momentum, total_steps, cosine=True):
    """Momentum of the key encoder at step ``step`` (a Python number or tensor).

    ``m_t = 1 - (1 - m0) * (1 + cos(pi * t / T)) / 2`` when ``cosine``: ``m0`` at
    ``t = 0``, ``(1 + m0) / 2`` at ``t = T / 2`` and 1 at ``t = T`` (held at 1
    afterwards). Without ``cosine`` the momentum is the constant ``m0``.

    Args:
        step: Current optimizer step (0-based), int or float, tensor or Python.
        base_momentum: ``m0``, e.g. 0.99 for the ViT recipes.
        total_steps: ``T``, the total number of training steps (> 0).
        cosine: Whether to apply the cosine increase to 1.

    Returns:
        A float32 scalar tensor.
    """
    if total_steps <= 0:
        raise ValueError(
            f"momentum_schedule: total_steps must be > 0, got {total_steps}."
        )
    m0 = ops.cast(base_momentum, "float32")
    if not cosine:
        return ops.convert_to_tensor(m0, dtype="float32")
    progress = ops.clip(ops.cast(step, "float32") / float(total_steps), 0.0, 1.0)
    # (1 + cos(pi * p)) / 2 == cos(pi * p / 2)^2, the latter exact near p = 1.
    return 1.0 - (1.0 - m0) * ops.square(ops.cos(0.5 * math.pi * progress))


class MoCoV3(keras.Model):
    """MoCo v3 with a query encoder, a predictor and a momentum encoder (or SimCLR / BYOL, see `method`).

    Args:
      backbone: keras.Model, images -> features [B, D].
      projector: keras.Model, [B, D] -> [B, dim].
      predictor: keras.Model, [B, dim] -> [B, dim], or None (no predictor: the queries are the projections).
      momentum_backbone, momentum_projector: models of the same structure as backbone and projector;
        their weights are overwritten with a copy of the online ones here and are never trained. None for a
        method without momentum encoder (SimCLR).
      temperature: tau of the contrastive loss.
      base_momentum: m0 (0.99 in the ViT recipes).
      momentum_cosine: if True, m rises from m0 to 1 with a half cosine over `total_steps`.
      total_steps: length of training in steps (for the momentum schedule).
      batch_views: run both views through the backbone in one call; None chooses it when the backbone has no
        batch norm (the result is then the same as two calls).
      monitor_grad_norms: log the global gradient norms of the first and the last transformer block
        (costs one extra all-reduce of those two blocks' gradients under a multi-replica strategy).
      method: a key of METHODS: mocov3 (default), simclr or byol.
    """

    def __init__(self, backbone, projector, predictor, momentum_backbone, momentum_projector, *,
                 temperature=0.2, base_momentum=0.99, momentum_cosine=True, total_steps=1,
                 batch_views=None, monitor_grad_norms=True, method="mocov3", **kwargs):
        super().__init__(**kwargs)
        self.method = method
        self._spec = method_spec(method)
        if self._spec.momentum_encoder != (momentum_backbone is not None and momentum_projector is not None):
            raise ValueError(f"method={method!r} {'needs' if self._spec.momentum_encoder else 'has no'} momentum "
                             f"encoder; build the model with build_moco, which passes the right parts.")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}; the ViT recipes use 0.2.")
        if not 0.0 <= base_momentum <= 1.0:
            raise ValueError(f"base_momentum must be in [0, 1], got {base_momentum}; the ViT recipes use 0.99.")
        self.backbone = backbone
        self.projector = projector
        self.predictor = predictor
        self.momentum_backbone = momentum_backbone
        self.momentum_projector = momentum_projector
        self.temperature = float(temperature)
        self.base_momentum = float(base_momentum)
        self.momentum_cosine = bool(momentum_cosine)
        self.total_steps = int(max(total_steps, 1))
        if batch_views is None:
            batch_views = not any(isinstance(layer, keras.layers.BatchNormalization)
                                  for layer in _all_layers(backbone))
        self.batch_views = bool(batch_views)
        self.monitor_grad_norms = bool(monitor_grad_norms)

        online = backbone.weights + projector.weights
        target = (momentum_backbone.weights + momentum_projector.weights) if self._spec.momentum_encoder else []
        if not self._spec.momentum_encoder:
            online = []
        if len(online) != len(target) or any(a.shape != b.shape for a, b in zip(online, target)):
            raise ValueError("The momentum encoder must have the same structure as backbone + projector; "
                             "build both with the same arguments.")
        for xi, theta in zip(target, online):
            xi.assign(theta)
        # The momentum encoder stays `trainable` in the Keras sense on purpose: Keras 3 runs a BatchNormalization
        # with trainable=False in inference mode, but the official momentum encoder normalises with batch
        # statistics. It is kept away from the optimizer by `trainable_weights` below instead.
        # (xi, theta) pairs the momentum update touches: every parameter, frozen ones included as in the
        # official code (they are equal, so the update leaves them unchanged), but no BN moving statistics.
        self._momentum_pairs = [(xi, theta) for xi, theta in zip(target, online) if not _is_moving_statistic(theta)]
        self._monitored_blocks = _block_layers(backbone) if self.monitor_grad_norms else []
        self.loss_tracker = keras.metrics.Mean(name="loss")
        # Records the input pipeline dropped since fit() began (batches with "skipped_records"); not checkpointed.
        self.skipped_tracker = keras.metrics.Sum(name="skipped_records")
        self.feature_queue, self.queue_encoder = None, "momentum"
        self.built = True

    def attach_feature_queue(self, queue, encoder="momentum"):
        """Makes every train step push the backbone features of its first view and the batch's labels into `queue`
        (a models.feature_queue.FeatureQueue; the paper's kNN-monitor bank). `encoder`: "momentum" (the momentum
        encoder's features, the online ones for SimCLR) or "query" (the backbone's). The dataset must then yield
        (view1, view2, labels). Create the queue under the strategy's scope; checkpoints then hold it."""
        if encoder not in ("momentum", "query"):
            raise ValueError(f"config.knn.queue_encoder={encoder!r} is unknown; choose momentum or query.")
        self.feature_queue, self.queue_encoder = queue, encoder

    # === Forward passes ===

    def call(self, images, training=False):
        """Backbone features of `images` (the representation that evaluation and export use)."""
        return self.backbone(images, training=training)

    def _features(self, encoder, x1, x2, training):
        if self.batch_views:
            n = tf.shape(x1)[0]
            f = encoder(tf.concat([x1, x2], axis=0), training=training)
            return f[:n], f[n:]
        return encoder(x1, training=training), encoder(x2, training=training)

    def _head(self, f, training):
        z = self.projector(f, training=training)
        return z if self.predictor is None else self.predictor(z, training=training)

    def _queries_and_features(self, x1, x2, training):
        f1, f2 = self._features(self.backbone, x1, x2, training)
        return self._head(f1, training), self._head(f2, training), f1

    def queries(self, x1, x2, training=True):
        """predictor(projector(backbone(x))) of each view (projector only when there is no predictor)."""
        q1, q2, _ = self._queries_and_features(x1, x2, training)
        return q1, q2

    def _keys_and_features(self, x1, x2):
        f1, f2 = self._features(self.momentum_backbone, x1, x2, True)
        k1 = self.momentum_projector(f1, training=True)
        k2 = self.momentum_projector(f2, training=True)
        return tf.stop_gradient(k1), tf.stop_gradient(k2), tf.stop_gradient(f1)

    def keys(self, x1, x2):
        """The momentum encoder's projections of each view, without gradient."""
        k1, k2, _ = self._keys_and_features(x1, x2)
        return k1, k2

    def momentum_at(self, step):
        return momentum_schedule(step, self.base_momentum, self.total_steps, cosine=self.momentum_cosine)

    def update_momentum_encoder(self, m):
        """xi <- m * xi + (1 - m) * theta for every momentum-encoder parameter."""
        m = tf.cast(m, tf.float32)
        for xi, theta in self._momentum_pairs:
            xi.assign(m * xi + (1.0 - m) * theta)

    # === Training ===

    @property
    def trainable_weights(self):
        """What the optimizer trains: backbone, projector and predictor (never the momentum encoder)."""
        if not self.trainable:
            return []
        predictor = self.predictor.trainable_weights if self.predictor is not None else []
        return self.backbone.trainable_weights + self.projector.trainable_weights + predictor

    @property
    def trainable_variables(self):
        return self.trainable_weights

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras' generic build pulls a first batch and averages it across replicas to trace the model; that
        # reduction fails under MultiWorkerMirroredStrategy (PerReplica -> Tensor) and restarts the input pipeline.
        # MoCoV3 is built at construction and training builds the optimizer before fit, so there is nothing to do.
        if self.built and self.optimizer is not None and self.optimizer.built:
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    @property
    def metrics(self):
        return [self.loss_tracker, self.skipped_tracker]

    def train_step(self, data):
        """One update on `data`: (view1, view2), (view1, view2, labels) or the dict of
        pipelines.build_pretrain_dataset(count_skipped=True). Views of dtype uint8 (the pre-training pipeline's)
        are normalised here, on the device (augment.normalize_uint8); float views are used as they are."""
        skipped = None
        if isinstance(data, dict):
            (x1, x2), labels, skipped = data["views"], data.get("labels"), data["skipped_records"]
        else:
            x1, x2, labels = data if len(data) == 3 else (*data, None)  # labels only feed the feature queue
        x1, x2 = to_model_input(x1), to_model_input(x2)
        ctx = tf.distribute.get_replica_context()
        num_replicas = ctx.num_replicas_in_sync
        replica_id = ctx.replica_id_in_sync_group if num_replicas > 1 else 0

        step = self.optimizer.iterations
        m = self.momentum_at(step)
        lr = self.optimizer.learning_rate
        train_vars = self.trainable_variables

        spec = self._spec
        with tf.GradientTape() as tape:
            q1, q2, query_features_1 = self._queries_and_features(x1, x2, training=True)
            if spec.momentum_encoder:  # MoCo v3, BYOL
                with tape.stop_recording():
                    self.update_momentum_encoder(m)
                    k1, k2, key_features_1 = self._keys_and_features(x1, x2)
                    if spec.gather_keys and num_replicas > 1:
                        k1 = ctx.all_gather(k1, axis=0)
                        k2 = ctx.all_gather(k2, axis=0)
            else:  # SimCLR: the other view's online projection, gathered with its gradient
                key_features_1 = tf.stop_gradient(query_features_1)
                k1, k2 = q1, q2
                if spec.gather_keys and num_replicas > 1:
                    k1 = ctx.all_gather(k1, axis=0)
                    k2 = ctx.all_gather(k2, axis=0)
            loss = spec.loss(q1, q2, k1, k2, self.temperature, replica_id)
            scaled = self.optimizer.scale_loss(loss / num_replicas)
        grads = tape.gradient(scaled, train_vars)
        if self.feature_queue is not None and labels is not None:
            # The paper's kNN-monitor bank, at no extra forward pass: key_features_1 are the momentum (key)
            # encoder's backbone features of the first view (the online encoder's for SimCLR), without gradient.
            pushed = key_features_1 if self.queue_encoder == "momentum" else query_features_1
            self.feature_queue.push(tf.stop_gradient(pushed), labels)

        logs = {"lr": tf.cast(lr, tf.float32), "momentum": tf.cast(m, tf.float32)}
        if self._monitored_blocks:
            by_id = {id(v): g for v, g in zip(train_vars, grads)}
            unscale = 1.0
            if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
                unscale = 1.0 / tf.cast(self.optimizer.scale_loss(1.0), tf.float32)
            for key, layer in zip(("grad_norm_first_block", "grad_norm_last_block"), self._monitored_blocks):
                block_grads = [tf.cast(by_id[id(v)], tf.float32) for v in layer.trainable_variables]
                if num_replicas > 1:
                    block_grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, block_grads)
                logs[key] = tf.linalg.global_norm(block_grads) * unscale

        self.optimizer.apply(grads, train_vars)

        global_loss = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, loss) if num_replicas > 1 else loss
        self.loss_tracker.update_state(global_loss)
        logs["loss"] = global_loss
        if skipped is not None:  # every replica's batch carries its pipeline's count: the sum over replicas
            skipped = tf.cast(skipped, tf.float32)
            self.skipped_tracker.update_state(ctx.all_reduce(tf.distribute.ReduceOp.SUM, skipped)
                                              if num_replicas > 1 else skipped)
            logs["skipped_records"] = self.skipped_tracker.result()
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras reduces fit()'s outputs across workers with a MEAN over axis 0, which rejects scalars.
            logs = {key: tf.reshape(value, [1]) for key, value in logs.items()}
        return logs

    # === Config ===

    def get_config(self):
        config = super().get_config()
        for key in ("backbone", "projector", "predictor", "momentum_backbone", "momentum_projector"):
            part = getattr(self, key)
            config[key] = None if part is None else keras.saving.serialize_keras_object(part)
        config.update(temperature=self.temperature, base_momentum=self.base_momentum,
                      momentum_cosine=self.momentum_cosine, total_steps=self.total_steps,
                      batch_views=self.batch_views, monitor_grad_norms=self.monitor_grad_norms)
        if self.method != "mocov3":  # only when set: the default model's config stays what it was
            config["method"] = self.method
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("backbone", "projector", "predictor", "momentum_backbone", "momentum_projector"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def _all_layers(model):
    """Every layer below `model`, depth first (Keras 3 has no public recursive listing)."""
    out = []
    for layer in getattr(model, "layers", []):
        out.append(layer)
        out.extend(_all_layers(layer))
    for layer in getattr(model, "_layers", []):
        if layer not in out:
            out.append(layer)
            out.extend(_all_layers(layer))
    return out


def build_moco(model_config, *, image_size, total_steps, method="mocov3"):
    """MoCoV3 from `config.model` (arch, overrides, pos_embed, pooling, train_patch_embed, head_bn, predictor,
    moco_dim, mlp_dim, temperature, momentum, momentum_cosine, monitor_grad_norms: every key of base_config's; a
    partial one goes through config_lib.complete(..., part="model") first) and `config.method` (METHODS).

    The arch chooses the heads as the official builder.py does (backbones.head_layout): MoCo_ViT's 3-layer projector
    and BN-ended predictor, or MoCo_ResNet's 2-layer projector and a predictor without a last BN; head_bn removes
    BNs (head_settings). A backbone with BatchNorm (ResNet, conv-stem ViT) runs each view on its own, so that its
    batch statistics are per view. SimCLR builds no momentum encoder.
    """
    spec = method_spec(method)
    arch = model_config.arch
    overrides = vit.config_overrides(model_config)
    train_patch_embed = bool(model_config.train_patch_embed)
    settings = head_settings(arch, resolved_head_bn(model_config, method))

    def encoder(prefix):
        backbone = backbones.build_backbone(arch, image_size, train_patch_embed=train_patch_embed,
                                            name=prefix + "backbone", **overrides)
        feature_dim = backbone.output.shape[-1]
        projector = heads.build_projector(feature_dim, mlp_dim=model_config.mlp_dim, dim=model_config.moco_dim,
                                          name=prefix + "projector", **settings["projector"])
        return backbone, projector

    backbone, projector = encoder("")
    momentum_backbone, momentum_projector = encoder("momentum_") if spec.momentum_encoder else (None, None)
    predictor = None
    if resolved_predictor(model_config, method):
        predictor = heads.build_predictor(dim=model_config.moco_dim, mlp_dim=model_config.mlp_dim, name="predictor",
                                          **settings["predictor"])
    return MoCoV3(backbone, projector, predictor, momentum_backbone, momentum_projector,
                  temperature=model_config.temperature, base_momentum=model_config.momentum,
                  momentum_cosine=model_config.momentum_cosine, total_steps=total_steps,
                  batch_views=not backbones.has_batchnorm(arch),
                  monitor_grad_norms=model_config.monitor_grad_norms, method=method, name="moco_v3")
