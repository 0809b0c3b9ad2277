#!/usr/bin/env python
"""Train or evaluate ProtoSeg (or its parametric baselines) with Detectron2.

    python train_net.py --config-file configs/toy/protoseg_r18-d8_fcn_toy.yaml
    python train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS path/to/model.pth
    python train_net.py --config-file CONFIG --resume              # continue from last_checkpoint
    python train_net.py --config-file CONFIG --eval-only --resume  # score OUTPUT_DIR's last checkpoint
    python train_net.py --config-file CONFIG --skip-weights sem_seg_head.classifier \
        MODEL.WEIGHTS other_classes.pth MODEL.SEM_SEG_HEAD.NUM_CLASSES 19   # fine-tune, new classifier
    python train_net.py --config-file CONFIG --num-gpus 8          # one machine, 8 GPUs
    python train_net.py --config-file CONFIG --num-gpus 2 MODEL.DEVICE cpu   # no GPU: 2 gloo processes
    python train_net.py --config-file CONFIG --num-gpus 8 --num-machines 2 --machine-rank 0 \
        --dist-url tcp://HOST:PORT                                 # and --machine-rank 1 on the other

An OUTPUT_DIR belongs to one run at a time (training or --eval-only): the run locks it
(OUTPUT_DIR/.protoseg_run.lock, naming host, pid, start and command) before writing into it and
releases it at its end; a second run there is refused, a lock left by a killed run of this
machine is taken over with a warning. --resume refuses a checkpoint past SOLVER.MAX_ITER; from a
checkpoint at MAX_ITER it trains nothing, writes no checkpoint and runs the final evaluation again.

MODEL.WEIGHTS must fit the model: a missing, unexpected or mis-shaped key is an error, except that
a file of backbone keys only (tools/convert_pretrained.py) initialises the backbone of a training
run, and --skip-weights leaves the named modules out of a fine-tuning initialisation.

The console (and OUTPUT_DIR/log.txt, without colour codes) starts with the versions and device, a
summary of the run (config file, model, data, schedule with the effective warm-up, precision,
output, test protocol) and the model's size in one line; the full config is always written to
OUTPUT_DIR/config.yaml. --print-config also logs the full config, --print-model the model's
modules. An evaluation ends with "Results on DATASET: mIoU ..  fwIoU ..  mACC ..  pACC ..". An
error in a DataLoader worker is reported by its own message first ("LabelMapError: label map ...
has id(s) ..."), then its traceback. Known-harmless warnings of torch and Detectron2 are filtered
when protoseg is imported (protoseg.KNOWN_WARNINGS); `python -m detectron2.utils.collect_env`
prints the full environment report.
"""
import argparse
import os
import sys
from contextlib import contextmanager


def get_parser():
    """The options of Detectron2's ``default_argument_parser`` (same names and defaults) and the
    project's (give them before the KEY VALUE config overrides). Built with argparse alone, so
    that ``--help`` and a wrong option answer without importing torch or Detectron2."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to the config file")
    parser.add_argument(
        "--resume", action="store_true",
        help="training: continue from the last checkpoint of OUTPUT_DIR (its last_checkpoint), if any; "
             "with --eval-only: score that checkpoint instead of MODEL.WEIGHTS",
    )
    parser.add_argument("--eval-only", action="store_true", help="evaluate only (the weights of MODEL.WEIGHTS)")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per machine (GPUs, or CPU processes)")
    parser.add_argument("--num-machines", type=int, default=1, help="number of machines")
    parser.add_argument("--machine-rank", type=int, default=0, help="rank of this machine (unique per machine)")
    # Detectron2's default: a port fixed per user, so that an orphaned process shows as a port in use
    port = 2 ** 15 + 2 ** 14 + hash(os.getuid() if sys.platform != "win32" else 1) % 2 ** 14
    parser.add_argument(
        "--dist-url", default=f"tcp://127.0.0.1:{port}",
        help="URL of the process group's rendezvous (machine 0's tcp://HOST:PORT); 'auto' picks a free port",
    )
    parser.add_argument(
        "--allow-random-weights", action="store_true",
        help="with --eval-only: evaluate even without MODEL.WEIGHTS (a randomly initialised model)",
    )
    parser.add_argument(
        "--skip-weights", action="append", default=[], metavar="PREFIX",
        help="training: do not load the keys of MODEL.WEIGHTS under this module prefix (e.g. "
             "sem_seg_head.classifier, to fine-tune on another class set); repeat for several",
    )
    parser.add_argument(
        "--print-config", action="store_true",
        help="log the full config (always written to OUTPUT_DIR/config.yaml), not only its summary",
    )
    parser.add_argument(
        "--print-model", action="store_true", help="log the model's modules, not only its size",
    )
    parser.add_argument(
        "opts", default=None, nargs=argparse.REMAINDER,
        help="config overrides at the end of the command: space-separated KEY VALUE pairs",
    )
    return parser


@contextmanager
def setup(args):
    """The run's config (``args.config_file`` + ``args.opts`` with the project's keys, checked
    against the run's datasets), for the duration of the run in its ``OUTPUT_DIR``: the folder is
    locked for this run (another run there is refused), then Detectron2's ``default_setup`` steps
    (loggers, ``config.yaml``, seed) with a summary of the environment and the config (the full
    config too with ``--print-config``). The lock is released when the block ends.

    ``--eval-only`` locks the folder too: it writes ``log.txt`` and the ``inference/`` report there,
    which a training in the same folder writes as well.
    """
    from protoseg.config import load_config
    from protoseg.data.class_count import check_dataset_class_counts
    from protoseg.engine import output_dir_lock, setup_run

    cfg = load_config(args.config_file, args.opts, freeze=True)
    check_dataset_class_counts(cfg)  # in seconds, before the folder, the model and the data loader
    with output_dir_lock(cfg.OUTPUT_DIR):
        setup_run(cfg, args, print_config=getattr(args, "print_config", False))
        yield cfg


def main(args):
    # protoseg first: it filters the known-harmless warnings that Detectron2's modules raise at import
    from protoseg.engine import Trainer, evaluate_checkpoint

    # (getattr: callers such as lab/studies.py parse with Detectron2's parser, without these options)
    skip_weights = getattr(args, "skip_weights", [])
    if args.eval_only and skip_weights:
        raise ValueError("--skip-weights is for training; --eval-only loads every key of MODEL.WEIGHTS")
    Trainer.print_model = getattr(args, "print_model", False)
    with setup(args) as cfg:  # OUTPUT_DIR is this run's until the block ends
        if args.eval_only:
            allow_random = getattr(args, "allow_random_weights", False)
            return evaluate_checkpoint(cfg, allow_random_weights=allow_random, resume=args.resume)
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume, skip_weights=skip_weights)
        return trainer.train()


def launch(*args, **kwargs):
    """:func:`protoseg.engine.launch` (imported when called)."""
    from protoseg.engine import launch as protoseg_launch

    return protoseg_launch(*args, **kwargs)


if __name__ == "__main__":
    args = get_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
