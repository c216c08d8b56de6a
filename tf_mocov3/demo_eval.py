r"""The demo's evaluation command: kNN and a linear probe of the pre-trained backbone beside two baselines.

  python -m tf_mocov3.demo_eval --workdir=runs/demo [--train_examples=5000] [--test_examples=0]

Runs after `python -m tf_mocov3.train --config=configs/demo.py --workdir=runs/demo` (which runs it itself when
config.demo_eval is on); writes WORKDIR/metrics.json (key "demo_eval") and WORKDIR/demo_eval.png
(see tf_mocov3/evaluation/demo.py).
"""

from absl import flags

from tf_mocov3 import cli

cli.define_flags(workdir="The demo's pre-training workdir.", required=("workdir",))
flags.DEFINE_integer("train_examples", None, "Memory bank / probe training images (default: "
                     "evaluation/demo.py's TRAIN_EXAMPLES, 5000).")
flags.DEFINE_integer("test_examples", None, "Test images, 0 = the whole test split (default: "
                     "evaluation/demo.py's TEST_EXAMPLES, 5000).")


def main(argv):
    del argv  # cli.run rejects stray arguments
    from tf_mocov3.evaluation import demo  # pylint: disable=import-outside-toplevel

    sizes = {name: cli.FLAGS[name].value for name in ("train_examples", "test_examples")
             if cli.FLAGS[name].value is not None}
    demo.evaluate_demo(cli.FLAGS.workdir, **sizes)


if __name__ == "__main__":
    cli.run(main)
