#!/usr/bin/env python
"""Train or evaluate ProtoSeg (or its parametric baselines) with Detectron2.

    python train_net.py --config-file configs/toy/protoseg_r18-d8_fcn_toy.yaml
    python train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS path/to/model.pth
    python train_net.py --config-file CONFIG --resume              # continue from last_checkpoint
    python train_net.py --config-file CONFIG --num-gpus 8          # one machine, 8 GPUs
    python train_net.py --config-file CONFIG --num-gpus 2 MODEL.DEVICE cpu   # no GPU: 2 gloo processes
    python train_net.py --config-file CONFIG --num-gpus 8 --num-machines 2 --machine-rank 0 \
        --dist-url tcp://HOST:PORT                                 # and --machine-rank 1 on the other
"""
from detectron2.engine import default_argument_parser

from protoseg.engine import Trainer, evaluate_checkpoint, launch, setup_cfg


def main(args):
    cfg = setup_cfg(args)
    if args.eval_only:
        return evaluate_checkpoint(cfg)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
