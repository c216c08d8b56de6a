r"""Converts an official MoCo v3 PyTorch checkpoint (facebookresearch/moco-v3) into a directory every command reads.

    pip install -r requirements-convert.txt          # PyTorch (CPU) is needed to read .pth.tar files
    python -m tf_mocov3.convert_official --input=vit-b-300ep.pth.tar --output=/tmp/mocov3_vit_base
    python -m tf_mocov3.convert_official --input=r-50-1000ep.pth.tar --output=/tmp/mocov3_r50_1000ep

The output has a pre-training workdir's layout: pass it as --pretrained or to tf_mocov3.load_backbone
(layouts, conversions and checks: tf_mocov3/weights/convert_official.py).
"""

import json

from absl import flags

from tf_mocov3 import cli

flags.DEFINE_string("input", None, "The official MoCo v3 checkpoint (.pth.tar).")
flags.DEFINE_string("output", None, "The directory to write (must not hold converted weights yet).")
flags.DEFINE_string("arch", None, "One of vit_small, vit_base, vit_conv_small, vit_conv_base, resnet50 "
                    "(weights/convert_official.OFFICIAL_ARCHS); inferred from the shapes if unset.")
flags.DEFINE_string("model_overrides", None,
                    "JSON dict of backbone overrides for a custom arch, e.g. '{\"num_heads\": 6}'.")
cli.define_flags(required=("input", "output"))


def main(argv):
    del argv  # cli.run rejects stray arguments
    from tf_mocov3.weights import convert_official  # pylint: disable=import-outside-toplevel

    f = cli.FLAGS
    try:
        overrides = json.loads(f.model_overrides) if f.model_overrides else None
    except json.JSONDecodeError as err:
        raise ValueError(f"--model_overrides is not a JSON dict ({err}); e.g. '{{\"num_heads\": 6}}'.") from None
    report = convert_official.convert_file(f.input, f.output, arch=f.arch, overrides=overrides)
    check = ("" if report["arch"].startswith("resnet") else  # a ResNet has no position embedding to compare
             f"; pos_embed max |diff| vs sin-cos = {report['pos_embed_max_abs_diff']:.2e}")
    print(f"Converted {report['kind']} checkpoint {f.input} ({report['arch']}, {report['image_size']} px): "
          f"{report['tensors_converted']} tensors{check}; dropped {len(report['keys_dropped'])} "
          f"num_batches_tracked.")
    print(f"Wrote {f.output}: use --pretrained={f.output} or tf_mocov3.load_backbone('{f.output}').")


if __name__ == "__main__":
    cli.run(main, errors=(ImportError,))  # the missing-PyTorch error names the pip command
