"""The input pipelines: what each command feeds its model, built from a source (sources.py) and the order (order.py).

- `build_pretrain_dataset`: MoCo v3's two asymmetric views, per-replica batches, resumable (the contract is
  order.py's; replica layout below).
- `labelled_train_dataset`: one training crop per labelled example (`train_crop`: RandomResizedCrop + flip
  (+ RandAugment) + normalise + optional random erasing, all from the example's seed), optionally repeated
  augmentation (order.py) and mixup / cutmix per global step or per group of rows: fine-tuning, and the linear
  probe on augmented images.
- `cached_feature_dataset`: the linear probe on features embedded once.
- `eval_examples` / `eval_dataset`: the eval preprocessing (resize, centre crop, normalise) of a labelled split or a
  subset of it, in index order: evaluation, kNN, features (bilinear, or bicubic for DeiT's ImageNet recipe).

Interpolation: "bilinear" is augment.py's (PIL's antialiased bilinear, the MoCo v3 pipelines); "bicubic" is PIL's
bicubic as DeiT / timm resize (Keys a = -0.5, support widened when downsampling), which is
`tf.image.resize(method="bicubic", antialias=True)`.

Every random-access source (in memory, or 'records' on disk: sources.Source.examples) is read by index, so an input
pipeline reads only the examples of its own rows, and a pipeline started at step k reads nothing before it.

Replica layout of the pre-training pipeline: replica r of a global batch takes rows [r*n, (r+1)*n), n = B /
replicas; input pipeline p serves replicas p*R .. p*R+R-1 (R = replicas / pipelines) and emits, for each global
step, their R per-replica batches in replica order.

Bad files: the training inputs of an encoded source (pre-training, fine-tuning, the probe on augmented images)
also ignore decoding errors of each example as a last resort (`map_examples`: a per-example `ignore_errors`, logged
by TF), so a file that passes sources.py's integrity check but fails to decode costs one example (and shifts that
pipeline's rows by one), never the run. Reading errors are not ignored: a TFRecord file holding fewer or more records
than its metadata says (a truncated copy, a damaged record) stops the run naming the file (sources.StreamReader), and
a truncated array_record shard stops it at start (sources.RecordReader). A prepared record that fails sources.py's
check when read is dropped, with a warning naming its index and shard (sources.RecordReader). Pre-training counts
both kinds of drop in the pipeline (`build_pretrain_dataset(count_skipped=True)`) and logs the total as
`skipped_records`.
"""

import numpy as np
import tensorflow as tf

from tf_mocov3.data import augment
from tf_mocov3.data import erasing
from tf_mocov3.data import mixup
from tf_mocov3.data import order as order_lib
from tf_mocov3.data import randaugment
from tf_mocov3.data import sources

# Keeps the per-step mixup seeds apart from the per-example seeds.
MIX_SEED_SALT = 0x6D697875
DEFAULT_SHUFFLE_BUFFER = 10_000
# Files of a streamed source read at a time, one record of each in turn (TFDS's interleave default).
DEFAULT_CYCLE_LENGTH = 16


def _options(threads=0, auto_shard=tf.data.experimental.AutoShardPolicy.OFF):
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = auto_shard
    if int(threads or 0) > 0:
        options.threading.private_threadpool_size = int(threads)
    return options


# === Pre-training: two views ===


def _layout(config, input_context):
    """-> (per-replica batch n, local replicas R, this pipeline's row offset within a global batch)."""
    replicas = input_context.num_replicas_in_sync if input_context else 1
    pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline = input_context.input_pipeline_id if input_context else 0
    batch = config.batch_size
    if batch % replicas:
        raise ValueError(f"batch_size {batch} is not divisible by the {replicas} replicas: "
                         f"choose a multiple of {replicas}.")
    if replicas % pipelines:
        raise ValueError(f"{replicas} replicas cannot be split evenly over {pipelines} input pipelines.")
    n = batch // replicas
    local = replicas // pipelines
    return n, local, pipeline * local * n


def _pipelines(input_context):
    """-> (this input pipeline's id, the number of input pipelines)."""
    if input_context is None:
        return 0, 1
    return input_context.input_pipeline_id, input_context.num_input_pipelines


def _index_mask(num_examples, indices):
    """bool [N]: True at `indices` (None: None, no subset)."""
    if indices is None:
        return None
    mask = np.zeros(num_examples, bool)
    mask[np.asarray(indices, np.int64)] = True
    return mask


def streamed_epoch_size(source, pipelines=1, indices=None):
    """N' of a streamed source read by `pipelines` input pipelines, each from its own files (order.py): pipelines
    times the smallest share (of the subset `indices`, if given)."""
    keep = _index_mask(source.num_examples, indices)
    reader = source.reader
    return pipelines * min(reader.share_size(reader.share(p, pipelines), keep) for p in range(pipelines))


def streamed_epochs(source, order, *, shuffle_buffer, cycle_length=DEFAULT_CYCLE_LENGTH, pipeline=0, pipelines=1,
                    indices=None):
    """one_epoch(epoch) -> Dataset of ((image, label), position, epoch) of this pipeline's share of a streamed
    source: its own files in the epoch's file order, `cycle_length` at a time, through the epoch's shuffle buffer
    (order.py); only the examples of the sorted subset `indices`, if given."""
    reader = source.reader
    files = reader.share(pipeline, pipelines)
    keep = _index_mask(source.num_examples, indices)
    keep = None if keep is None else tf.constant(keep)
    cycle_length = max(1, min(int(cycle_length), len(files)))

    def one_epoch(epoch):
        ds = reader.read(order.file_order(files, epoch), cycle_length)
        if keep is not None:
            ds = ds.filter(lambda index, image, label: tf.gather(keep, index))
        ds = ds.map(lambda index, image, label: (image, label))
        return order.streamed_epoch(ds, epoch, shuffle_buffer)

    return one_epoch


def map_examples(ds, fn, skip_failures):
    """`ds.map(fn)` in parallel, in order; with `skip_failures` an example whose `fn` fails (an image that does not
    decode) is dropped, logged by TF, while an error raised reading `ds` itself (sources.StreamReader's record-count
    check of a truncated file) still stops the pipeline, which a Dataset.ignore_errors after the map would swallow.

    Each example runs in a one-element dataset with its own ignore_errors, interleaved in order, one example per
    CPU core at a time (cycle_length AUTOTUNE): tens of microseconds more per example than the plain parallel map,
    not measurable against the milliseconds of a 224-pixel two-view JPEG example (BUILD_NOTES.md)."""
    if not skip_failures:
        return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.interleave(lambda *example: tf.data.Dataset.from_tensors(example).map(fn).ignore_errors(log_warning=True),
                         cycle_length=tf.data.AUTOTUNE, block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
                         deterministic=True)


def pretrain_order(config, source, *, input_context=None, start_step=0):
    """The order.ExampleOrder of this input pipeline's rows (_layout) of the pre-training split `source`."""
    n, local, offset = _layout(config, input_context)
    num_examples = source.num_examples
    if source.kind == "stream":
        num_examples = streamed_epoch_size(source, _pipelines(input_context)[1])
    try:
        return order_lib.ExampleOrder(num_examples, config.batch_size, int(config.seed), start_step=start_step,
                                      rows=local * n, row_offset=offset)
    except ValueError as err:
        raise ValueError(f"The {source.name} split: {err}") from err


def pretrain_examples(source, order):
    """Dataset of (image, label, position, epoch) of a random-access source in `order`: the pipeline reads only the
    examples of its own rows, from order.start_step on (nothing before it)."""
    return source.examples(order.epochs(order.epoch))


def build_pretrain_dataset(config, *, input_context=None, start_step=0, with_labels=False, count_skipped=False,
                           source=None):
    """Infinite tf.data.Dataset of per-replica batches (view1, view2), uint8 [n, S, S, 3] (augmented, rounded to
    uint8 levels; the train step normalises them: augment.normalize_uint8).

    Args:
        config: the pre-training ConfigDict (seed, batch_size, every key of dataset.*: config_lib.complete
          fills a partial one).
        input_context: a tf.distribute.InputContext (None: one replica, one pipeline).
        start_step: first global step to produce (resume), see order.py.
        with_labels: batches (view1, view2, int64 labels [n]) instead, for the kNN monitor's feature queue
          (config.knn.bank="queue"); the data set must be labelled.
        count_skipped: batches {"views": (view1, view2), "labels": (with_labels only), "skipped_records": int32
          []} instead: how many records this pipeline dropped (an image that failed to decode) since the previous
          batch, counted in the pipeline itself (tf.data ops only: it runs on input hosts and tf.data service
          workers as it is); the train step sums them into the metric `skipped_records`.
        source: the sources.Source of config.dataset, opened once per process by the caller (each input
          pipeline's function reuses it); None opens it here.
    """
    dcfg = config.dataset
    n, local, offset = _layout(config, input_context)
    seed = int(config.seed)
    image_size = int(dcfg.image_size)
    crop_min = float(dcfg.crop_min)
    jpeg_decode_once = bool(dcfg.jpeg_decode_once)
    jpeg_dct_scaling = bool(dcfg.jpeg_dct_scaling)
    source = sources.load_source(dcfg) if source is None else source
    order = pretrain_order(config, source, input_context=input_context, start_step=start_step)

    def augment_example(image, position, epoch):
        # Step 1 (decode, crop, resize) and the random numbers of steps 2-7, per example; steps 2-7 run once per
        # batch below (`augment.augment_two_view_batch`: same pixels to float round-off, much less CPU).
        return augment.two_view_inputs(image, order_lib.example_seed(seed, epoch, position), image_size=image_size,
                                       crop_min=crop_min, is_encoded=source.is_encoded,
                                       jpeg_decode_once=jpeg_decode_once, jpeg_dct_scaling=jpeg_dct_scaling)

    if with_labels and not (source.num_classes or 0) >= 2:
        raise ValueError(f"config.knn.bank='queue' needs the labels of the training images, but {source.name} has "
                         f"none; pre-train on a labelled data set or use config.knn.bank='images'.")

    def keep(inputs, label):
        return (inputs, tf.cast(label, tf.int64)) if with_labels else inputs

    # Each record carries its number in this pipeline's stream (enumerate), so that the records dropped on the way
    # (a prepared record failing its check, an image failing to decode) are counted from the gaps, in tf.data.
    if source.kind != "stream":
        numbered = order.epochs(order.epoch).enumerate().map(lambda i, item: (*item, i))  # pretrain_examples'
        ds = source.examples(numbered)  # (image, label, position, epoch, number)
        ds = map_examples(ds, lambda image, label, pos, e, i: (keep(augment_example(image, pos, e), label), i),
                          source.is_encoded)
    else:
        pipeline, pipelines = _pipelines(input_context)
        ds = order.epochs(streamed_epochs(
            source, order, shuffle_buffer=int(dcfg.shuffle_buffer), cycle_length=int(dcfg.cycle_length),
            pipeline=pipeline, pipelines=pipelines)).enumerate()
        ds = map_examples(ds, lambda i, ex: (keep(augment_example(ex[0][0], ex[1], ex[2]), ex[0][-1]), i),
                          source.is_encoded)
    # -> (element, records dropped just before it): the gap between consecutive record numbers.
    ds = ds.scan(tf.constant(-1, tf.int64), lambda last, item: (item[1], (item[0], item[1] - last - 1)))
    ds = ds.batch(n, drop_remainder=True)

    @tf.autograph.experimental.do_not_convert
    def finish(inputs_labels, skipped):
        inputs, labels = inputs_labels if with_labels else (inputs_labels, None)
        views = augment.augment_two_view_batch(*inputs)
        if count_skipped:
            out = {"views": views, "skipped_records": tf.cast(tf.reduce_sum(skipped), tf.int32)}
            if with_labels:
                out["labels"] = labels
            return out
        return (*views, labels) if with_labels else views

    ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = _options(dcfg.threads)
    # One thread per op inside the map functions: the pipeline's parallelism is across examples (parallel map);
    # intra-op threads only add hand-off and spin-wait CPU time.
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


# === Labelled examples ===


def labelled_examples(source, indices=None):
    """Dataset of (image, int64 label) of `indices` (sorted; None = all) of a source, in index order.

    The image is what the source holds (uint8 HWC array or encoded bytes); random-access sources (in memory or
    'records' on disk) read only the selected examples, streamed ones read the files that hold them.
    """
    if source.kind == "stream":
        if indices is None:
            return source.stream()
        reader = source.reader
        keep = tf.constant(_index_mask(source.num_examples, indices))
        files = np.unique(np.searchsorted(reader.starts, np.asarray(indices, np.int64), side="right") - 1)
        ds = reader.read(files).filter(lambda index, image, label: tf.gather(keep, index))
        return ds.map(lambda index, image, label: (image, label))
    index = tf.range(source.num_examples, dtype=tf.int64) if indices is None else tf.constant(indices, tf.int64)
    return source.examples(tf.data.Dataset.from_tensor_slices((index,)))


def eval_preprocess_bicubic(image, image_size=224, resize=None):
    """`augment.eval_preprocess` with PIL's bicubic resize (DeiT / timm eval: Resize(int(S / crop_pct), bicubic)
    of the shorter side, CenterCrop(S), normalise)."""
    if resize is None:
        resize = int(image_size * 256 / 224)
    image = tf.convert_to_tensor(image)
    image = augment.decode_image(image) if image.dtype == tf.string else augment.to_rgb_uint8(image)
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    short = tf.minimum(h, w)
    new_h = tf.where(h <= w, resize, (resize * h) // short)
    new_w = tf.where(w <= h, resize, (resize * w) // short)
    image = tf.image.resize(image, tf.stack([new_h, new_w]), method="bicubic", antialias=True)
    image = tf.clip_by_value(tf.round(image), 0.0, 255.0)  # PIL returns uint8
    top = tf.cast(tf.round(tf.cast(new_h - image_size, tf.float32) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - image_size, tf.float32) / 2.0), tf.int32)
    image = tf.image.crop_to_bounding_box(image, top, left, image_size, image_size)
    image.set_shape([image_size, image_size, 3])
    return augment.normalize(image * (1.0 / 255.0))


def eval_examples(source, image_size, indices=None, *, interpolation="bilinear", crop_pct=None):
    """Dataset of (eval-preprocessed float32 [S, S, 3] image, int64 label) of `indices`, in order.

    `augment.eval_preprocess` (bilinear) or `eval_preprocess_bicubic`; the shorter side is resized to
    int(S / crop_pct) (None: S * 256 / 224, the same 256 for S = 224 and crop_pct 0.875).
    """
    resize = None if not crop_pct else int(image_size / float(crop_pct))
    fn = eval_preprocess_bicubic if interpolation == "bicubic" else augment.eval_preprocess
    preprocess = tf.autograph.experimental.do_not_convert(
        lambda image, label: (fn(image, image_size, resize), label))
    return labelled_examples(source, indices).map(preprocess, num_parallel_calls=tf.data.AUTOTUNE,
                                                  deterministic=True)


def eval_dataset(source, image_size, batch_size, indices=None, *, interpolation="bilinear", crop_pct=None):
    """`eval_examples` in batches of `batch_size` (the last one partial), prefetched."""
    return eval_examples(source, image_size, indices, interpolation=interpolation, crop_pct=crop_pct).batch(
        int(batch_size)).prefetch(tf.data.AUTOTUNE)


# === Labelled training: one crop per example ===


def _resize_bicubic(crop, image_size):
    """PIL bicubic resize of a uint8 crop to float32 [S, S, 3] in [0, 1] (uint8-rounded, as PIL returns)."""
    out = tf.image.resize(crop, [image_size, image_size], method="bicubic", antialias=True)
    return tf.clip_by_value(tf.round(out), 0.0, 255.0) * (1.0 / 255.0)


def train_crop(image, seed, *, image_size, scale=(0.08, 1.0), random_erasing=0.0, interpolation="bilinear",
               rand_augment=None):
    """One training image: RandomResizedCrop(S, scale) + horizontal flip (+ RandAugment) + normalise (+ random
    erasing).

    Every random choice comes from `seed` ([2] ints): the crop window from fold(seed, 0), the flip (p = 0.5) from
    fold(seed, 1), random erasing (probability `random_erasing`) from fold(seed, 2), RandAugment (a
    randaugment.RandAugmentSpec, or None) from fold(seed, 3). `image` is a decoded HWC image (1 or 3 channels) or a
    scalar string of encoded bytes; a JPEG decodes only its crop window. `interpolation`: "bilinear" (augment.py)
    or "bicubic" (PIL's, DeiT's). With RandAugment the crop is rounded to uint8 values first, as timm's PIL image.
    """
    fold = tf.random.experimental.stateless_fold_in
    image = tf.convert_to_tensor(image)
    crop_seed = fold(seed, 0)
    if interpolation not in ("bilinear", "bicubic"):
        raise ValueError(f"interpolation={interpolation!r} is unknown; use 'bilinear' or 'bicubic'.")
    bicubic = interpolation == "bicubic"

    def from_decoded(img):
        shape = tf.shape(img)
        window = augment.random_resized_crop_window(crop_seed, shape[0], shape[1], scale)
        if bicubic:
            return _resize_bicubic(tf.image.crop_to_bounding_box(img, window[0], window[1], window[2], window[3]),
                                   image_size)
        return augment.crop_and_resize(img, window, image_size)

    if image.dtype == tf.string:
        def from_jpeg():
            shape = tf.io.extract_jpeg_shape(image)
            window = augment.random_resized_crop_window(crop_seed, shape[0], shape[1], scale)
            if bicubic:
                return _resize_bicubic(tf.io.decode_and_crop_jpeg(image, window, channels=3), image_size)
            return augment.decode_crop_and_resize_jpeg(image, window, image_size)

        crop = tf.cond(tf.io.is_jpeg(image), from_jpeg, lambda: from_decoded(augment.decode_image(image)))
    else:
        crop = from_decoded(augment.to_rgb_uint8(image))
    crop.set_shape([image_size, image_size, 3])
    flip = tf.random.stateless_uniform([], fold(seed, 1)) < 0.5
    crop = tf.cond(flip, lambda: tf.reverse(crop, axis=[1]), lambda: crop)
    if rand_augment is not None:
        pixels = tf.clip_by_value(tf.round(crop * 255.0), 0.0, 255.0)
        crop = randaugment.rand_augment(pixels, fold(seed, 3), rand_augment) * (1.0 / 255.0)
        crop.set_shape([image_size, image_size, 3])
    out = augment.normalize(crop)
    if random_erasing > 0:
        out = erasing.random_erasing(out, fold(seed, 2), p=random_erasing)
    return out


def labelled_train_dataset(source, *, global_batch, seed, image_size, crop_scale=(0.08, 1.0), random_erasing=0.0,
                           start_step=0, indices=None, keep_partial_batch=False, end_epoch=None, mix=None,
                           shuffle_buffer=DEFAULT_SHUFFLE_BUFFER, cycle_length=DEFAULT_CYCLE_LENGTH, threads=0,
                           interpolation="bilinear", rand_augment=None, repeats=1, num_replicas=1, mix_group=0,
                           input_context=None, count_skipped=False):
    """Global batches (images [B, S, S, 3], labels) of `train_crop`s in the order of order.py, or, with an
    `input_context` of several input pipelines, this pipeline's rows of each global batch.

    Args:
      source: a labelled sources.Source.
      global_batch, seed, start_step, keep_partial_batch: order.ExampleOrder's.
      image_size, crop_scale, random_erasing: `train_crop`'s.
      indices: the sorted subset of the source to train on (None = all).
      end_epoch: stop before this epoch (None = forever).
      mix: None (labels int64 [B]) or mixup.mix_batch's keyword arguments (num_classes, mixup_alpha, cutmix_alpha,
        prob, switch_prob, smoothing): each global step t is mixed with a seed made from (seed, t), and the labels
        become soft targets float32 [B, num_classes].
      shuffle_buffer, cycle_length: the epoch shuffle of a streamed source (order.py): its shuffle buffer, and
        how many files are read at a time.
      threads: tf.data's private thread pool (0 = TF's).
      interpolation, rand_augment: `train_crop`'s ("bilinear" / "bicubic"; None, a timm string such as
        "rand-m9-mstd0.5-inc1" or a randaugment.RandAugmentSpec).
      repeats, num_replicas: repeated augmentation (order.py; DeiT's RASampler with repeats=3); 1 = off.
      mix_group: rows per mixup / cutmix group (mixup.mix_groups; 0 = one lambda per global batch).
      input_context: a tf.distribute.InputContext. With several input pipelines (hosts), pipeline p reads and
        augments only its rows of each global batch (its replicas' rows, as in pre-training) and yields batches of
        those rows, equal to the rows of the one-pipeline batch, mixup groups and repeated augmentation included.
        Mixup needs groups that do not cross pipelines: mix_group must divide the pipeline's rows; with mix_group
        0 each pipeline mixes its rows as one group under fold_in(step seed, pipeline) (as timm mixes each
        process's batch). Streamed sources: each pipeline reads its own files (order.py).
      count_skipped: batches (images, labels, skipped int32 [B]) instead, `skipped` the records this pipeline
        dropped just before each row (an image that failed to decode, a prepared record that failed its check),
        counted in tf.data from gaps in the records' numbers within each epoch, as in pre-training; the train step
        sums them into the metric `skipped_records`.
    """
    replicas, pipelines = (input_context.num_replicas_in_sync, input_context.num_input_pipelines) if input_context \
        else (num_replicas, 1)
    pipeline = input_context.input_pipeline_id if input_context else 0
    rows, offset = global_batch, 0
    if pipelines > 1:
        if global_batch % replicas or replicas % pipelines:
            raise ValueError(f"A global batch of {global_batch} cannot be split evenly over {replicas} replicas on "
                             f"{pipelines} hosts; choose a multiple of {replicas}.")
        if keep_partial_batch and source.kind == "stream":
            raise ValueError("A streamed (TFRecord) set read by several hosts cannot end its epochs with a partial "
                             "batch; set config.cache_features=True, or read an array_record build or prepared set.")
        rows = global_batch // pipelines
        offset = pipeline * rows
        if mix is not None and mix_group and mix_group < global_batch and rows % mix_group:
            raise ValueError(f"Mixup groups of {mix_group} rows cross the {rows} rows of each of the {pipelines} "
                             f"hosts; set config.aug.mixup_group to a divisor of {rows} (or 0).")
    num = source.num_examples if indices is None else len(indices)
    if source.kind == "stream":
        num = streamed_epoch_size(source, pipelines, indices=indices)
    order = order_lib.ExampleOrder(num, global_batch, seed, start_step=start_step, rows=rows, row_offset=offset,
                                   keep_partial_batch=keep_partial_batch, repeats=repeats, num_replicas=replicas)
    image_size, scale, random_erasing = int(image_size), tuple(float(s) for s in crop_scale), float(random_erasing)
    if rand_augment is not None and not isinstance(rand_augment, randaugment.RandAugmentSpec):
        rand_augment = randaugment.RandAugmentSpec(rand_augment) if str(rand_augment) else None

    # Each record is numbered before it is read (`number`), so that the records dropped on the way leave gaps that
    # `crops` counts (count_skipped); the number is dropped again otherwise. Numbers run on across epochs where the
    # batches do (every drop is counted, at the next record kept) and restart with each epoch where the batches end
    # with it (keep_partial_batch: the probe), where a drop after an epoch's last kept record is not counted.
    @tf.autograph.experimental.do_not_convert
    def crop(image, label, position, epoch, number):
        image = train_crop(image, order_lib.example_seed(seed, epoch, position), image_size=image_size, scale=scale,
                           random_erasing=random_erasing, interpolation=interpolation, rand_augment=rand_augment)
        return image, label, epoch, number

    if source.kind == "stream":
        @tf.autograph.experimental.do_not_convert
        def example(ex, position, epoch, number):
            return crop(ex[0], ex[1], position, epoch, number)

        streamed = streamed_epochs(source, order, shuffle_buffer=shuffle_buffer, cycle_length=cycle_length,
                                   pipeline=pipeline, pipelines=pipelines, indices=indices)

        def one_epoch(epoch, numbered=True):  # -> ((image, label), position, epoch, number)
            ds = streamed(epoch)
            return ds.enumerate().map(lambda number, item: (*item, number)) if numbered else ds

        def numbered_epochs():
            return order.epochs(lambda epoch: one_epoch(epoch, numbered=False), end_epoch).enumerate().map(
                lambda number, item: (*item, number))
    else:
        subset = None if indices is None else tf.constant(indices, tf.int64)

        def indices(epoch):  # (index in the source, position, epoch)
            ds = order.epoch(epoch)
            if subset is not None:
                ds = ds.map(lambda i, position, e: (tf.gather(subset, i), position, e))
            return ds

        def one_epoch(epoch):  # -> (image, label, position, epoch, number)
            return source.examples(indices(epoch).enumerate().map(lambda number, item: (*item, number)))

        def numbered_epochs():
            return source.examples(order.epochs(indices, end_epoch).enumerate().map(
                lambda number, item: (*item, number)))

        example = crop

    def crops(ds):  # an image that fails to decode costs one example (as in pre-training), not the run
        ds = map_examples(ds, example, source.is_encoded)
        if not count_skipped:
            return ds.map(lambda image, label, epoch, number: (image, label))

        def gap(last, item):  # last: (epoch, number) of the previous record kept
            image, label, epoch, number = item
            # the records dropped just before this one; where numbers restart with each epoch, from the epoch's start
            dropped = number - last[1] - 1 if not keep_partial_batch else tf.where(
                tf.equal(epoch, last[0]), number - last[1] - 1, number)
            return (epoch, number), (image, label, tf.cast(dropped, tf.int32))

        return ds.scan((tf.constant(-1, tf.int64), tf.constant(-1, tf.int64)), gap)

    if keep_partial_batch:  # batches end with the epoch
        # This pipeline's rows of the last, partial step; with none, an empty batch keeps every host in step.
        last_rows = order.num_examples - (order.steps_per_epoch - 1) * global_batch - offset

        def epoch_batches(epoch):
            ds = crops(one_epoch(epoch)).batch(rows)
            if last_rows <= 0:
                ds = ds.concatenate(tf.data.Dataset.from_tensors(tuple(
                    tf.zeros([0, *spec.shape[1:]], spec.dtype) for spec in ds.element_spec)))
            return ds

        ds = order.epochs(epoch_batches, end_epoch)
    else:
        ds = crops(numbered_epochs()).batch(rows, drop_remainder=True)
    if order.repeats > 1 and order.num_replicas > 1 and pipelines == 1:  # the copies of an image go to different
        # replicas (RASampler); a pipeline serving part of the rows gets them in row order already (order.py)
        row_items = tf.constant(order.batch_rows())
        ds = ds.map(lambda *batch: tuple(tf.gather(t, row_items) for t in batch),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if mix is not None:
        mix = dict(mix)
        group = int(mix_group or 0)
        first_group = 0
        if pipelines > 1:  # this pipeline's groups keep their number in the global batch (mixup.mix_groups)
            group = group if 0 < group < global_batch else rows
            first_group = offset // group

        @tf.autograph.experimental.do_not_convert
        def mix_step(step, batch):
            images, y, *skipped = batch
            mix_seed = tf.random.experimental.stateless_fold_in(
                tf.stack([tf.constant(seed, tf.int64), step]), MIX_SEED_SALT)
            if group:
                images, targets, _ = mixup.mix_groups(images, y, mix_seed, group_size=group, first_group=first_group,
                                                      **mix)
            else:
                images, targets, _ = mixup.mix_batch(images, y, mix_seed, **mix)
            return (images, targets, *skipped)

        ds = tf.data.Dataset.zip(tf.data.Dataset.range(int(start_step), np.iinfo(np.int64).max), ds)
        ds = ds.map(mix_step, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    return ds.with_options(_options(threads, tf.data.experimental.AutoShardPolicy.DATA))


def per_replica_batches(ds, local_replicas, replica_rows=None):
    """Batches of an input pipeline's rows -> its `local_replicas` replicas' batches (each row block in turn, one
    per replica and step): what `Strategy.distribute_datasets_from_function` expects of a pipeline.

    Full batches (replica_rows None) split evenly, keeping a static batch size (TPUs need it); with `replica_rows`
    replica r takes rows [r * replica_rows, (r + 1) * replica_rows) of each batch, fewer or none of a last,
    partial one (the linear probe's)."""
    local = int(local_replicas)
    if local == 1:
        return ds
    if replica_rows is not None:
        n = int(replica_rows)
        return ds.flat_map(lambda *batch: tf.data.Dataset.range(local).map(
            lambda r: tuple(t[r * n:(r + 1) * n] for t in batch)))

    def split(*batch):
        return tf.data.Dataset.from_tensor_slices(tuple(
            tf.reshape(t, [local, t.shape[0] // local, *t.shape[1:]]) for t in batch))

    return ds.flat_map(split)


def cached_feature_dataset(features, labels, *, batch_size, seed, start_step=0, end_epoch=None):
    """Batches (features float32 [b, D], labels int64 [b]) of features computed once, in the order of order.py
    with a last partial batch per epoch (ceil(N / batch_size) steps per epoch)."""
    features = tf.constant(features, tf.float32)
    labels = tf.constant(labels, tf.int64)
    order = order_lib.ExampleOrder(int(labels.shape[0]), batch_size, seed, start_step=start_step,
                                   keep_partial_batch=True)

    def one_epoch(epoch):
        index = tf.gather(order.permutation(epoch), order.positions(epoch))
        return tf.data.Dataset.from_tensor_slices((tf.gather(features, index), tf.gather(labels, index))).batch(
            int(batch_size))

    return order.epochs(one_epoch, end_epoch).prefetch(tf.data.AUTOTUNE)
