#!/usr/bin/env python
"""Train or evaluate ProtoSeg (or its parametric baselines) with Detectron2.

    python train_net.py --config-file configs/toy/protoseg_r18-d8_fcn_toy.yaml
    python train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS path/to/model.pth
    python train_net.py --config-file CONFIG --resume              # continue from last_checkpoint
    python train_net.py --config-file CONFIG --skip-weights sem_seg_head.classifier \
        MODEL.WEIGHTS other_classes.pth MODEL.SEM_SEG_HEAD.NUM_CLASSES 19   # fine-tune, new classifier
    python train_net.py --config-file CONFIG --num-gpus 8          # one machine, 8 GPUs
    python train_net.py --config-file CONFIG --num-gpus 2 MODEL.DEVICE cpu   # no GPU: 2 gloo processes
    python train_net.py --config-file CONFIG --num-gpus 8 --num-machines 2 --machine-rank 0 \
        --dist-url tcp://HOST:PORT                                 # and --machine-rank 1 on the other

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
# protoseg first: it filters the known-harmless warnings that Detectron2's modules raise at import
from protoseg.engine import Trainer, evaluate_checkpoint, launch, setup_cfg  # isort: skip

from detectron2.engine import default_argument_parser


def get_parser():
    """Detectron2's ``default_argument_parser`` with the project's options (give them before the
    KEY VALUE config overrides)."""
    parser = default_argument_parser()
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
    return parser


def main(args):
    # (getattr: callers such as lab/studies.py parse with Detectron2's parser, without these options)
    skip_weights = getattr(args, "skip_weights", [])
    if args.eval_only and skip_weights:
        raise ValueError("--skip-weights is for training; --eval-only loads every key of MODEL.WEIGHTS")
    Trainer.print_model = getattr(args, "print_model", False)
    cfg = setup_cfg(args)
    if args.eval_only:
        return evaluate_checkpoint(cfg, allow_random_weights=getattr(args, "allow_random_weights", False))
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume, skip_weights=skip_weights)
    return trainer.train()


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
