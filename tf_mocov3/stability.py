r"""The stability experiment (paper Figures 4-5 in miniature): one short run with a random frozen patch projection
and one with a trained one, at a high learning rate, with the kNN monitor every few steps.

  python -m tf_mocov3.stability --config=configs/stability_fashion_mnist.py --workdir=/tmp/stability

Writes WORKDIR/stability.png (kNN top-1 and first-/last-block gradient norms of both runs) and WORKDIR/stability.json,
and prints each run's final and best kNN top-1 and its largest dip (tf_mocov3/evaluation/stability.py).
"""

from tf_mocov3 import cli

cli.define_flags(config="Config file (configs/stability_fashion_mnist.py).",
                 workdir="Directory for both runs, the plot and the table.", required=("config", "workdir"))


def main(argv):
    del argv  # cli.run rejects stray arguments
    from tf_mocov3.evaluation import stability  # pylint: disable=import-outside-toplevel

    stability.run_stability(cli.configure(cli.FLAGS.config), cli.FLAGS.workdir)


if __name__ == "__main__":
    cli.run(main)
