#!/usr/bin/env python
"""Initialise a model for a larger vocabulary from a checkpoint trained on a smaller one.

    python tools/expand_vocabulary.py output/ade20k150/model_final.pth pretrained/init_ade20k_full_300.pth \
        --from-dataset ade20k_sem_seg_train --to-dataset ade20k_full_300_sem_seg_train
    python train_net.py --config-file configs/ade20k_full/protoseg_segformer_MiT-B2_300cls_bs16_40k.yaml \
        MODEL.WEIGHTS pretrained/init_ade20k_full_300.pth

Classes are matched by name (``stuff_classes`` of the registered datasets, or text files with one
name per line via --from-classes / --to-classes); the prototypes (and classifier rows, class-score
LayerNorm) of shared classes move to their new ids, new classes start as in a fresh model, and the
rest of the network is copied. The optimizer state is not carried over (a new run starts). See
``protoseg/vocabulary.py``.
"""
import argparse
from pathlib import Path

import torch

from detectron2.data import MetadataCatalog

import protoseg  # noqa: F401  (registers the datasets)
from protoseg.vocabulary import expand_vocabulary


def class_list(dataset, path):
    if path:
        return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    classes = MetadataCatalog.get(dataset).get("stuff_classes", None)
    if not classes:
        raise SystemExit(f"dataset {dataset!r} has no stuff_classes (not registered, or not prepared yet)")
    return list(classes)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="model trained on the smaller vocabulary (.pth)")
    parser.add_argument("output", help="initial weights for the larger vocabulary (.pth)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-dataset")
    source.add_argument("--from-classes", help="text file, one class name per line, in id order")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-dataset")
    target.add_argument("--to-classes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the new classes' initial values")
    args = parser.parse_args(argv)

    old = class_list(args.from_dataset, args.from_classes)
    new = class_list(args.to_dataset, args.to_classes)
    checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    state, fresh = expand_vocabulary(checkpoint["model"], old, new, seed=args.seed)
    torch.save({"model": state, "__author__": f"tools/expand_vocabulary.py from {args.checkpoint}"}, args.output)
    print(f"{len(new) - len(fresh)} of {len(new)} classes carried over from {len(old)}; "
          f"{len(fresh)} new (e.g. {fresh[:5]}); written to {args.output}")


if __name__ == "__main__":
    main()
