#!/usr/bin/env python
"""Print the parameter count of the model of any config (learnable, by part, prototype buffer).

    python tools/count_params.py configs/ade20k/protoseg_swin-b_upernet_ade20k.yaml [more configs]
    python tools/count_params.py CONFIG --opts MODEL.SEM_SEG_HEAD.NUM_CLASSES 847

The model is built on the CPU with random weights (nothing is loaded). Counts are the paper's
"# Param" column: learnable parameters; ProtoSeg's prototypes are buffers, listed apart.
"""
import argparse
import logging

from tabulate import tabulate

from detectron2.modeling import build_model

from protoseg.config import load_config
from protoseg.modeling.parameter_count import parameter_counts


def count_config(config_file: str, opts=()):
    cfg = load_config(config_file, list(opts) + ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    return parameter_counts(build_model(cfg))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", help="config files")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides for every config")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    rows = []
    for config in args.configs:
        c = count_config(config, args.opts)
        parts = ", ".join(f"{k.split('/', 1)[1]} {v / 1e6:.2f}" for k, v in c.items() if k.startswith("learnable/"))
        rows.append([config, f"{c['learnable'] / 1e6:.2f}", parts, f"{c['prototype_buffer'] / 1e6:.3f}", f"{c['frozen'] / 1e6:.2f}"])
    headers = ["config", "learnable (M)", "by part (M)", "prototype buffer (M)", "frozen (M)"]
    print(tabulate(rows, headers=headers, tablefmt="github"))
    return rows


if __name__ == "__main__":
    main()
