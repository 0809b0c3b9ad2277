#!/usr/bin/env python
"""Convert a checkpoint of the public reference implementation (tfzhou/ProtoSeg, openseg.pytorch's
``HRNet_W48_Proto``) into weights for ``configs/cityscapes/reference_protoseg_hrnetv2_W48_bs8_80k.yaml``.

    python tools/convert_reference_checkpoint.py hrnet_w48_proto_lr1x_hrnet_proto_80k_latest.pth \
        pretrained/protoseg_reference_hrnet_w48.pth
    python train_net.py --config-file configs/cityscapes/reference_protoseg_hrnetv2_W48_bs8_80k.yaml \
        --eval-only MODEL.WEIGHTS pretrained/protoseg_reference_hrnet_w48.pth

The reference's state dict (possibly under ``state_dict`` and with ``module.`` prefixes):

    backbone.*                       HRNet-W48 (official HRNet names)  -> backbone.encoder.*
    cls_head.0.{weight,bias}         3x3 conv 720 -> 720               -> sem_seg_head.decoder.fuse.*
    cls_head.1.0.*                   its BatchNorm                     -> sem_seg_head.decoder.fuse.norm.*
    proj_head.proj.{0,2}.*           projection 1x1 conv, ReLU, 1x1    -> sem_seg_head.projection.{0,2}.*
    proj_head.mlp2.*                 the same tensors again (alias)    -> checked equal, dropped
    feat_norm.*                      LayerNorm of the embedding        -> sem_seg_head.feature_norm.*
    mask_norm.*                      LayerNorm of the class scores     -> sem_seg_head.score_norm.*
    prototypes (C, K, 720)                                              -> sem_seg_head.memory.prototypes (l2-normalised)

Every key must be consumed and every key of the model built from the config filled; the width,
C and K are read from the checkpoint and printed as config overrides when they differ from the
config's. The reference config reproduces the reference's forward exactly, so the converted model
gives the reference's logits (to ~1e-5, measured against the reference code itself on CPU):
its projection l2-normalises over the image WIDTH (``MODEL.PROTOSEG.PROJECTION: reference_mlp``),
it reads images as BGR and normalises them with ImageNet mean/std in RGB order (``INPUT.FORMAT:
BGR`` with the usual ``PIXEL_MEAN``/``PIXEL_STD``), and it upsamples logits with
``align_corners=True``. A config without these gives other outputs from the same weights.
"""
import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from convert_pretrained import (  # this tool builds on the backbone converter beside it
    BN,
    UnmappedKeysError,
    check_against,
    convert_hrnet,
    load_release,
    rename,
    summarize,
)
from detectron2.modeling import build_model

from protoseg.config import load_config

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "cityscapes" / "reference_protoseg_hrnetv2_W48_bs8_80k.yaml"

HEAD_RULES = [
    (r"cls_head\.0\.(weight|bias)", r"sem_seg_head.decoder.fuse.\1"),
    (rf"cls_head\.1\.0\.{BN}", r"sem_seg_head.decoder.fuse.norm.\1"),
    (r"proj_head\.proj\.([02])\.(weight|bias)", r"sem_seg_head.projection.\1.\2"),
    (r"proj_head\.mlp2\.([02])\.(weight|bias)", ""),
    (r"feat_norm\.(weight|bias)", r"sem_seg_head.feature_norm.\1"),
    (r"mask_norm\.(weight|bias)", r"sem_seg_head.score_norm.\1"),
    (r"prototypes", "sem_seg_head.memory.prototypes"),
]


def reference_config(state_dict, config_file=DEFAULT_CONFIG):
    """The config of ``config_file`` with NUM_CLASSES, NUM_PROTOTYPES and HRNET.WIDTH of the checkpoint."""
    num_classes, num_prototypes, _ = state_dict["prototypes"].shape
    width = state_dict["backbone.transition1.0.0.weight"].shape[0]
    cfg = load_config(config_file)
    overrides = {"MODEL.SEM_SEG_HEAD.NUM_CLASSES": num_classes, "MODEL.PROTOSEG.NUM_PROTOTYPES": num_prototypes,
                 "MODEL.HRNET.WIDTH": width}
    cfg.merge_from_list([x for kv in overrides.items() for x in kv])
    return cfg, overrides


def convert_reference(state_dict, config_file=DEFAULT_CONFIG):
    """Reference state dict -> (our full-model weights, config overrides, dropped keys)."""
    state_dict = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    if "prototypes" not in state_dict:
        raise UnmappedKeysError("reference: no 'prototypes' tensor: not a ProtoSeg (HRNet_W48_Proto) checkpoint")
    for i in (0, 2):
        for p in ("weight", "bias"):
            proj, alias = f"proj_head.proj.{i}.{p}", f"proj_head.mlp2.{i}.{p}"
            if alias in state_dict and not torch.equal(state_dict[proj], state_dict[alias]):
                raise UnmappedKeysError(f"reference: {alias} differs from {proj}; they should be one module")
    backbone = {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    head = {k: v for k, v in state_dict.items() if not k.startswith("backbone.")}
    weights, dropped = rename(head, HEAD_RULES, "reference")
    weights["sem_seg_head.memory.prototypes"] = F.normalize(weights["sem_seg_head.memory.prototypes"].float(), dim=-1)
    backbone_weights = convert_hrnet(backbone)
    weights.update({f"backbone.{k}": v for k, v in backbone_weights.weights.items()})
    dropped += [f"backbone.{k}" for k in backbone_weights.dropped]

    cfg, overrides = reference_config(state_dict, config_file)
    cfg.merge_from_list(["MODEL.DEVICE", "meta", "MODEL.WEIGHTS", ""])
    with torch.device("meta"):
        model = build_model(cfg)
    # the head's iteration counter has no reference counterpart: start it where training ended
    weights["sem_seg_head.iteration"] = torch.tensor(cfg.SOLVER.MAX_ITER, dtype=torch.long)
    check_against(model, weights, "reference")
    return weights, overrides, dropped


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="the reference's checkpoint (.pth)")
    parser.add_argument("output", help="converted weights (.pth) for MODEL.WEIGHTS")
    parser.add_argument("--config-file", default=str(DEFAULT_CONFIG), help="config the weights are for")
    parser.add_argument("--trust", action="store_true", help="allow a checkpoint that holds pickled objects "
                        "(openseg saves its config next to the weights)")
    args = parser.parse_args(argv)
    weights, overrides, dropped = convert_reference(load_release(args.source, args.trust), args.config_file)
    torch.save({"model": {k: v.contiguous() for k, v in weights.items()},
                "__author__": f"tools/convert_reference_checkpoint.py from {args.source}",
                "matching_heuristics": False}, args.output)
    print(f"reference: {len(weights)} tensors written to {args.output}; dropped: {summarize(dropped)}")
    print("config overrides: " + " ".join(f"{k} {v}" for k, v in overrides.items()))


if __name__ == "__main__":
    main()
