r"""Prepare an image folder for training: sharded array_record (default) or TFRecord files, and their metadata.

  python -m tf_mocov3.prepare_data --input=IMAGE_FOLDER --output=DIR [--format=tfrecord] [--examples_per_shard=1024]
      [--workers=N]

--format=array_record (default): random access (a global shuffle per epoch), read through our Python, from local
disks only: one host, or several GPU hosts each with its copy. --format=tfrecord: read by pure tf.data, from any file
system TensorFlow reads (DIR may be gs://...): what a TPU pod slice and a tf.data service need.

IMAGE_FOLDER holds one sub-folder of images per class (split "train"), or train/, val/ or validation/ (split
"validation") and test/ folders that do.
Every command then reads DIR with --config.dataset.name=prepared --config.dataset.path=DIR. Running it again after
a kill continues where it stopped (finished shards are kept). See tf_mocov3/data/prepare.py.
"""

import logging

from absl import flags

from tf_mocov3 import cli

flags.DEFINE_string("input", None, "Image folder: <class>/<image>, or <split>/<class>/<image>.", required=True)
flags.DEFINE_string("output", None, "Folder to write the shards and metadata.json into (gs://... with tfrecord).",
                    required=True)
flags.DEFINE_enum("format", "array_record", ["array_record", "tfrecord"],
                  "Shard file format: array_record (random access, local disks) or tfrecord (pure tf.data: TPU pods, "
                  "gs://, tf.data service).")
flags.DEFINE_integer("examples_per_shard", 1024, "Records per shard.")
flags.DEFINE_integer("workers", 0, "Processes writing shards in parallel (0: one per CPU).")
flags.DEFINE_bool("verify", True, "Decode every image with Pillow (at 1/8 scale for JPEGs) and skip the bad ones.")


def main(argv):
    del argv  # cli.run rejects stray arguments
    from tf_mocov3.data import prepare  # pylint: disable=import-outside-toplevel

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    f = cli.FLAGS
    try:
        meta = prepare.prepare(f.input, f.output, examples_per_shard=f.examples_per_shard,
                               workers=f.workers or None, verify=f.verify, file_format=f.format)
    except prepare.PrepareError as err:
        cli.fail(str(err))
    for split, info in meta["splits"].items():
        print(f"{split}: {info['num_examples']} images in {len(info['shards'])} shards, "
              f"{info['num_skipped']} skipped; {len(meta['classes'])} classes.")
    print(f"Read it with --config.dataset.name=prepared --config.dataset.path={f.output}")


if __name__ == "__main__":
    cli.run(main)
