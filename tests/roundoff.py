"""What float32 round-off can do to two runs that should be equal, and a comparison that allows exactly that.

Two runs of one update (1 vs 2 replicas, a resumed run vs a straight one, steps written on another CPU) add the same
numbers in other orders, and oneDNN picks its kernels by CPU when the program starts, so their gradients differ by
round-off: about 1e-7 of the magnitudes summed. Under AdamW with eps 1e-3 (the one-step equality tests) a real
gradient turns that into a weight difference of at most lr / eps times it, which `ATOL` covers. Two kinds of entry
can differ by more, on any machine, and `assert_runs_agree` bounds them by what the computation allows instead of
by a figure fitted to one machine:

1. Entries whose gradient is zero in exact arithmetic ("structural zeros", `structural_zero_masks`): the key third of
   every attention qkv bias (softmax ignores a shift shared by all keys) and, when the projector's first linear
   layer is followed by BatchNorm, the backbone's final LayerNorm beta (a constant shift of the features shifts every
   row of the projector's first output equally, and BN subtracts the batch mean). Their computed gradient is pure
   round-off, which Adam divides by its own size: each step moves such an entry by up to lr_t * c_t in a direction
   round-off decides, c_t = max |m_hat_t| / sqrt(v_hat_t) (`adam_ratio_bound`, 1 at step 1). Two runs differ there
   by at most 2 * sum_t lr_t * c_t (`adam_roundoff_bound`); the momentum encoder's copies are convex mixes of the
   online values, so the same bound holds for them. The decoupled decay only shrinks a difference.
2. The running mean of the BN right after the projector's first linear layer (online and momentum projector): the
   features' beta shift moves the batch mean by beta_shift @ W (the linear kernel) at every step after the first, and
   the moving mean keeps 0.1 of each step's batch mean (Keras momentum 0.9) (`moving_mean_bound`). The variance and
   everything after that BN see no shift (BN subtracts it), so no other tensor inherits the difference.
"""

import math

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

# Entries with a real gradient: 1e-5 absolute. Adam's update lr * m_hat / (sqrt(v_hat) + eps) moves by at most
# lr * dg / eps for a round-off change dg of a gradient (the slope of g / (|g| + eps) is largest, 1 / eps, at g = 0),
# so the one-step equality tests run AdamW at eps 1e-3 (EQUALITY_EPS): 0.31 * dg at lr 3.1e-4, far below 1e-5 for
# any round-off dg of gradients of order 1 or less. At eps 1e-5 the same slope is 31 * dg, and an AVX-capped run put
# one kernel entry 1.5e-5 apart (a gradient near zero whose round-off was a large share of it).
ATOL = 1e-5


def adam_ratio_bound(step, beta_1=0.9, beta_2=0.999):
    """The largest |m_hat| / sqrt(v_hat) that Adam's moments can reach at `step` (1-based), over all gradient
    sequences: by Cauchy-Schwarz |sum a_i g_i| <= sqrt(sum a_i^2 / b_i) * sqrt(sum b_i g_i^2), with a_i and b_i the
    bias-corrected moving-average weights of the gradient of step i in m_hat and v_hat. With beta 0.9 / 0.999: 1 at
    step 1, 1.0014 at step 2, 1.011 at step 5, 1.043 at step 10."""
    total = 0.0
    for i in range(1, step + 1):
        a = (1 - beta_1) * beta_1 ** (step - i) / (1 - beta_1 ** step)
        b = (1 - beta_2) * beta_2 ** (step - i) / (1 - beta_2 ** step)
        total += a * a / b
    return math.sqrt(total)


def adam_roundoff_bound(lrs, beta_1=0.9, beta_2=0.999):
    """How far apart two runs can carry an entry whose gradient is pure round-off, after Adam steps at `lrs`."""
    return 2.0 * sum(lr * adam_ratio_bound(t, beta_1, beta_2) for t, lr in enumerate(lrs, start=1))


def learning_rates(model, steps):
    """The learning rate of each of the first `steps` optimizer steps (the schedule at steps 0 .. steps - 1)."""
    schedule = model.optimizer._learning_rate  # pylint: disable=protected-access
    if callable(schedule):
        return [float(schedule(tf.constant(t, tf.int64))) for t in range(steps)]
    return [float(model.optimizer.learning_rate.numpy())] * steps


def _first_bn_after_first_linear(head):
    """(linear_0 kernel, bn_0 layer) of a projector whose first linear layer feeds a BatchNorm, else None."""
    names = [layer.name for layer in head.layers]
    if "linear_0" not in names or "bn_0" not in names:
        return None
    return head.get_layer("linear_0").kernel, head.get_layer("bn_0")


def structural_zero_masks(model):
    """{id(variable): boolean mask of its entries whose gradient is zero in exact arithmetic} (module docstring, 1).

    `model` is a MoCo-style model (backbone, projector, optional momentum_backbone) or a bare backbone (fine-tuning:
    only the qkv key bias, as its head reads the LayerNorm output directly)."""
    backbones = [getattr(model, "backbone", None) or model]
    if getattr(model, "momentum_backbone", None) is not None:
        backbones.append(model.momentum_backbone)
    bn_head = getattr(model, "projector", None) is not None and _first_bn_after_first_linear(model.projector)
    masks = {}
    for backbone in backbones:
        for variable in backbone.weights:
            if variable.path.endswith("attn/qkv/bias"):
                width = variable.shape[0] // 3
                mask = np.zeros(variable.shape, bool)
                mask[width:2 * width] = True
                masks[id(variable)] = mask
        if bn_head and "norm" in [layer.name for layer in backbone.layers]:
            beta = backbone.get_layer("norm").beta
            masks[id(beta)] = np.ones(beta.shape, bool)
    return masks


def moving_mean_bound(model, lrs, bn_momentum=0.9):
    """{id(moving_mean): per-entry bound} for the BN after each projector's first linear layer (module docstring, 2):
    the step-s forward sees beta shifts of at most adam_roundoff_bound(lrs[:s - 1]), which move batch-mean entry j by
    at most that times the L1 norm of kernel column j; the moving mean keeps (1 - momentum) * momentum^(S - s)."""
    bounds = {}
    heads = [getattr(model, "projector", None), getattr(model, "momentum_projector", None)]
    for head in heads:
        found = head is not None and _first_bn_after_first_linear(head)
        if not found:
            continue
        kernel, bn = found
        column_l1 = np.abs(kernel.numpy()).sum(axis=0)
        total = len(lrs)
        weight = sum((1 - bn_momentum) * bn_momentum ** (total - s) * adam_roundoff_bound(lrs[:s - 1])
                     for s in range(2, total + 1))
        # The kernel itself moved by at most sum(lrs) per entry during the run: a relative change far below 1e-2.
        bounds[id(bn.moving_mean)] = 1.01 * weight * column_l1
    return bounds


def checkpoint_variables(path, model):
    """{checkpoint key: the variable of `model` it holds} for every key that the checkpoint's object graph names
    below model/ (Keras 3 stores a trainable variable once, under the optimizer's list, but the graph still reaches
    it from model/); optimizer slots, the step and the data position map to None."""
    reader = tf.train.load_checkpoint(path)
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    found = {}
    model_node = next((c.node_id for c in graph.nodes[0].children if c.local_name == "model"), None)
    queue, seen = [(model_node, model)], {model_node}
    while queue:
        node_id, obj = queue.pop(0)
        for attr in graph.nodes[node_id].attributes:
            if attr.name == "VARIABLE_VALUE":
                found.setdefault(attr.checkpoint_key, obj)
        for child in graph.nodes[node_id].children:
            if child.node_id in seen:
                continue
            name = child.local_name
            # A node this model cannot reach by this name may be reached by another; one it never reaches maps to
            # None, and its tensor is then compared at atol, never let through.
            if isinstance(obj, (list, tuple)) and name.isdigit() and int(name) < len(obj):
                target = obj[int(name)]
            elif not isinstance(obj, (list, tuple)) and hasattr(obj, name):
                target = getattr(obj, name)
            else:
                continue
            seen.add(child.node_id)
            queue.append((child.node_id, target))
    return {key: found.get(key) for key in reader.get_variable_to_shape_map() if key != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def assert_runs_agree(want, got, variables, *, model, lrs, what, atol=ATOL, slots_rtol=0.0, slots_scale=0.0):
    """Every tensor of two runs equal to `atol`, except where the module docstring shows round-off can do more.

    Args:
      want, got: {name: array} of the two runs (checkpoint keys, or positions in model.weights).
      variables: {name: the variable of `model` each name holds, or None (optimizer slots, counters)}.
      model: a model of the same code, for the structural zeros and the moving-mean bound.
      lrs: the learning rates of the steps both runs made.
      slots_rtol: relative tolerance for tensors that are not model weights (Adam's moments of large gradients carry
        the all-reduce's round-off at their own scale); 0 = atol only.
      slots_scale: tolerance for those tensors as a share of their largest entry (a moment is a sum of the steps'
        gradients, so it carries their round-off at the scale of its largest entries, not of each entry); 0 = none.
    """
    assert want.keys() == got.keys(), what
    zeros = structural_zero_masks(model)
    means = moving_mean_bound(model, lrs)
    step_bound = adam_roundoff_bound(lrs)
    weights = {id(v) for v in model.weights}
    for name in sorted(want):
        a, b = np.asarray(want[name]), np.asarray(got[name])
        variable = variables.get(name)
        if variable is not None and id(variable) in zeros:
            mask = zeros[id(variable)]
            np.testing.assert_array_less(np.abs(a[mask] - b[mask]), step_bound * 1.0001 + atol,
                                         err_msg=f"{what}: {name} (structural zeros, Adam bound {step_bound:.3g})")
            a, b = a[~mask], b[~mask]
        if variable is not None and id(variable) in means:
            np.testing.assert_array_less(np.abs(a - b), means[id(variable)] + atol,
                                         err_msg=f"{what}: {name} (moving mean after the features' beta)")
            continue
        slot = id(variable) not in weights and a.dtype.kind == "f"
        rtol = slots_rtol if slot else 0.0
        tol = atol + (slots_scale * float(np.abs(a).max()) if slot and a.size else 0.0)
        np.testing.assert_allclose(b, a, atol=tol, rtol=rtol, err_msg=f"{what}: {name}")
