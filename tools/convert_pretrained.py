#!/usr/bin/env python
"""Convert an official ImageNet checkpoint into backbone weights that ``MODEL.WEIGHTS`` loads.

    python tools/convert_pretrained.py resnet resnet101-63fe2227.pth   pretrained/r101_torchvision.pth
    python tools/convert_pretrained.py resnet resnet101_v1c-e67eebb6.pth pretrained/r101_v1c.pth
    python tools/convert_pretrained.py swin   swin_base_patch4_window12_384.pth pretrained/swin_b_w12_384.pth
    python tools/convert_pretrained.py hrnet  hrnetv2_w48_imagenet_pretrained.pth pretrained/hrnet_w48.pth
    python tools/convert_pretrained.py mit    mit_b4.pth pretrained/mit_b4.pth

(docs/PRETRAINED.md says where each official file comes from.) The architecture is read from the
checkpoint; the converted weights are checked against our backbone built with it (every key and
shape), and the config keys that build that backbone are printed. Keys of the release that no rule
maps are an error; the classification parts are dropped on purpose and listed. The output is
``{"model": {"backbone.<key>": tensor}, "__author__": ..., "matching_heuristics": False}``, loadable
with ``torch.load(weights_only=True)`` (as ``ProtoSegCheckpointer`` does).
"""
import argparse
import re
from collections import Counter
from typing import Callable, Dict, List, NamedTuple, Sequence, Tuple, Union

import torch
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone

from protoseg.config import load_config
from protoseg.modeling.backbones import MIT_VARIANTS, HRNetBackbone, MixVisionTransformer, SwinBackbone

StateDict = Dict[str, torch.Tensor]
# (regex matching a whole release key, replacement: a re.sub template or function; "" drops the key)
Rule = Tuple[str, Union[str, Callable[[re.Match], str]]]

BN = r"(weight|bias|running_mean|running_var)"


class Conversion(NamedTuple):
    weights: StateDict  # our backbone's keys, without the "backbone." prefix
    dropped: List[str]  # release keys left out on purpose
    initialised: List[str]  # our keys the release has no value for, filled with their initial value
    config: Dict[str, object]  # config keys that build the backbone these weights fit


class UnmappedKeysError(ValueError):
    pass


def rename(state_dict: StateDict, rules: Sequence[Rule], family: str) -> Tuple[StateDict, List[str]]:
    """Apply the first rule whose regex matches the whole key; (renamed, dropped). BN counters
    (``num_batches_tracked``) are dropped silently. Raises UnmappedKeysError listing the keys no
    rule matches."""
    renamed, dropped, unmapped = {}, [], []
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        for pattern, replacement in rules:
            if re.fullmatch(pattern, key):
                if replacement:
                    renamed[re.sub(pattern, replacement, key)] = value
                else:
                    dropped.append(key)
                break
        else:
            unmapped.append(key)
    if unmapped:
        raise UnmappedKeysError(f"{family}: {len(unmapped)} keys of the checkpoint match no rule: {unmapped[:20]}")
    return renamed, dropped


def check_against(model: nn.Module, weights: StateDict, family: str) -> None:
    """Raise UnmappedKeysError unless ``weights`` has exactly ``model``'s keys (BN counters aside)
    with the same shapes."""
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = [f"{k}: {tuple(weights[k].shape)} vs {tuple(s)}" for k, s in expected.items()
             if k in weights and weights[k].shape != s]
    if missing or unexpected or wrong:
        raise UnmappedKeysError(
            f"{family}: the converted weights do not fit the backbone built from them: missing {missing[:10]}, "
            f"unexpected {unexpected[:10]}, shape mismatches {wrong[:10]}"
        )


def count_blocks(state_dict: StateDict, prefix: str) -> int:
    """Number of distinct ``<prefix><i>.`` indices among the keys."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in state_dict if (m := pattern.match(k))})


# ---- ResNet: torchvision (basic stem) or mmcv ResNetV1c (deep stem) -> Detectron2 ResNet ----------
def _res(suffix: str) -> Callable[[re.Match], str]:
    """Replacement naming block m[2] of torchvision's layer m[1] in Detectron2's res(m[1] + 1)."""
    return lambda m: f"res{int(m[1]) + 1}.{m[2]}." + m.expand(suffix)


RESNET_BLOCK_RULES = [
    (r"layer([1-4])\.(\d+)\.conv(\d)\.weight", _res(r"conv\3.weight")),
    (rf"layer([1-4])\.(\d+)\.bn(\d)\.{BN}", _res(r"conv\3.norm.\4")),
    (r"layer([1-4])\.(\d+)\.downsample\.0\.weight", _res("shortcut.weight")),
    (rf"layer([1-4])\.(\d+)\.downsample\.1\.{BN}", _res(r"shortcut.norm.\3")),
    (r"fc\.(weight|bias)", ""),
]
TORCHVISION_STEM_RULES = [(r"conv1\.weight", "stem.conv1.weight"), (rf"bn1\.{BN}", r"stem.conv1.norm.\1")]
# ResNetV1c stem: Sequential(conv, BN, ReLU, conv, BN, ReLU, conv, BN, ReLU) = DeepLabStem conv1..3
V1C_STEM_RULES = [(rf"stem\.{3 * i}\.weight", f"stem.conv{i + 1}.weight") for i in range(3)] + [
    (rf"stem\.{3 * i + 1}\.{BN}", rf"stem.conv{i + 1}.norm.\1") for i in range(3)
]
RESNET_DEPTHS = {"bottleneck": {6: 50, 23: 101, 36: 152}, "basic": {2: 18, 6: 34}}


def convert_resnet(state_dict: StateDict) -> Conversion:
    deep_stem = "stem.0.weight" in state_dict
    block = "bottleneck" if "layer1.0.conv3.weight" in state_dict else "basic"
    depth = RESNET_DEPTHS[block].get(count_blocks(state_dict, "layer3."))
    if depth is None:
        blocks = count_blocks(state_dict, "layer3.")
        raise UnmappedKeysError(f"resnet: {blocks} {block} blocks in layer3 match no ResNet of {RESNET_DEPTHS}")
    rules = (V1C_STEM_RULES if deep_stem else TORCHVISION_STEM_RULES) + RESNET_BLOCK_RULES
    weights, dropped = rename(state_dict, rules, "resnet")
    stem_channels = weights["stem.conv3.weight" if deep_stem else "stem.conv1.weight"].shape[0]
    config = {
        "MODEL.BACKBONE.NAME": "build_dilated_resnet_backbone",
        "MODEL.RESNETS.DEPTH": depth,
        "MODEL.RESNETS.STEM_TYPE": "deeplab" if deep_stem else "basic",
        "MODEL.RESNETS.STEM_OUT_CHANNELS": stem_channels,
        "MODEL.RESNETS.RES2_OUT_CHANNELS": weights["res2.0.conv1.weight"].shape[0] * (4 if depth >= 50 else 1),
        "MODEL.RESNETS.STRIDE_IN_1X1": False,  # torchvision and ResNetV1c stride in the 3x3 conv
    }
    cfg = load_config()
    for key, value in config.items():
        cfg.merge_from_list([key, value])
    cfg.merge_from_list(["MODEL.RESNETS.OUT_FEATURES", ["res2", "res3", "res4", "res5"], "MODEL.RESNETS.NORM", "BN",
                         "MODEL.BACKBONE.FREEZE_AT", 0])
    with torch.device("meta"):
        check_against(build_backbone(cfg, ShapeSpec(channels=3)), weights, "resnet")
    return Conversion(weights, dropped, [], config)


# ---- Swin: official release -> timm's layout (timm's own filter) -> our wrapper ------------------
def convert_swin(state_dict: StateDict, window_size: int = 0) -> Conversion:
    from timm.models.swin_transformer import checkpoint_filter_fn

    table = state_dict["layers.0.blocks.0.attn.relative_position_bias_table"]
    embed_dim = state_dict["patch_embed.proj.weight"].shape[0]
    ckpt_window = (int(round(table.shape[0] ** 0.5)) + 1) // 2
    ape = state_dict.get("absolute_pos_embed")
    arch = dict(
        embed_dim=embed_dim,
        depths=[count_blocks(state_dict, f"layers.{i}.blocks.") for i in range(4)],
        num_heads=[state_dict[f"layers.{i}.blocks.0.attn.relative_position_bias_table"].shape[1] for i in range(4)],
        window_size=window_size or ckpt_window,
        mlp_ratio=state_dict["layers.0.blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
        qkv_bias="layers.0.blocks.0.attn.qkv.bias" in state_dict,
        ape=ape is not None,
        patch_norm="patch_embed.norm.weight" in state_dict,
        # sets only the APE grid; the released models pretrained at 384 have window 12
        pretrain_img_size=4 * int(round(ape.shape[1] ** 0.5)) if ape is not None else 224 if ckpt_window == 7 else 384,
    )
    with torch.device("meta"):
        model = SwinBackbone(**arch)
    state_dict = dict(state_dict)
    if ape is not None:  # (1, H*W, C) tokens -> (1, C, H, W) map, as resized in our forward
        grid = arch["pretrain_img_size"] // 4
        state_dict["absolute_pos_embed"] = ape.reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    # classification head and final norm (our outputs have their own norms) go first, under their release names
    head_rules = [(r"head\..*", ""), (r"norm\.(weight|bias)", ""), (r".*", r"\g<0>")]
    state_dict, dropped = rename(state_dict, head_rules, "swin")
    # timm's filter drops the buffers it recomputes (relative_position_index, attn_mask), moves
    # layers.i.downsample to layers.(i+1), resizes the relative position tables if window_size differs
    timm_layout = checkpoint_filter_fn(state_dict, model.encoder)
    rules = [(r"(patch_embed|layers)\..*", r"encoder.\g<0>"), (r"absolute_pos_embed", r"\g<0>")]
    weights, _ = rename(timm_layout, rules, "swin")
    initialised = []
    for name, norm in model.output_norms.items():  # new LayerNorms, as Swin's segmentation code adds
        weights[f"output_norms.{name}.weight"] = torch.ones(norm.normalized_shape)
        weights[f"output_norms.{name}.bias"] = torch.zeros(norm.normalized_shape)
        initialised += [f"output_norms.{name}.weight", f"output_norms.{name}.bias"]
    check_against(model, weights, "swin")
    config = {"MODEL.BACKBONE.NAME": "build_swin_backbone"}
    config.update({f"MODEL.SWIN.{k.upper()}": v for k, v in arch.items()})
    return Conversion(weights, dropped, initialised, config)


# ---- HRNet: HRNet-ImageNet release (same layout as timm) -> our wrapper ------------------------
def convert_hrnet(state_dict: StateDict) -> Conversion:
    width = state_dict["transition1.0.0.weight"].shape[0]
    rules = [(r"(conv[12]|bn[12]|layer1|transition[123]|stage[234])\..*", r"encoder.\g<0>"),
             (r"(incre_modules|downsamp_modules|final_layer|classifier)\..*", "")]
    weights, dropped = rename(state_dict, rules, "hrnet")
    with torch.device("meta"):
        check_against(HRNetBackbone(width=width), weights, "hrnet")
    return Conversion(weights, dropped, [], {"MODEL.BACKBONE.NAME": "build_hrnet_backbone", "MODEL.HRNET.WIDTH": width})


# ---- MiT: SegFormer release -> our MiT (same names) -----------------------------------------------
def convert_mit(state_dict: StateDict) -> Conversion:
    spec = (tuple(state_dict[f"patch_embed{i}.proj.weight"].shape[0] for i in range(1, 5)),
            tuple(count_blocks(state_dict, f"block{i}.") for i in range(1, 5)))
    variant = next((name for name, s in MIT_VARIANTS.items() if tuple(s) == spec), None)
    if variant is None:
        raise UnmappedKeysError(f"mit: embed dims / depths {spec} are none of {MIT_VARIANTS}")
    rules = [(r"(patch_embed[1-4]|block[1-4]|norm[1-4])\..*", r"\g<0>"), (r"head\.(weight|bias)", "")]
    weights, dropped = rename(state_dict, rules, "mit")
    with torch.device("meta"):
        check_against(MixVisionTransformer(variant=variant), weights, "mit")
    return Conversion(weights, dropped, [], {"MODEL.BACKBONE.NAME": "build_mit_backbone", "MODEL.MIT.VARIANT": variant})


CONVERTERS: Dict[str, Callable[..., Conversion]] = {
    "resnet": convert_resnet,
    "swin": convert_swin,
    "hrnet": convert_hrnet,
    "mit": convert_mit,
}


def load_release(path: str, trust: bool = False) -> StateDict:
    """The tensors of a release file, unwrapped from its ``model`` / ``state_dict`` entry."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as e:
        raise ValueError(
            f"{path} holds more than tensors ({type(e).__name__}); if you trust it, rerun with --trust"
        ) from e
    for key in ("model", "state_dict"):
        if isinstance(checkpoint, dict) and key in checkpoint:
            checkpoint = checkpoint[key]
    return {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}


def save_weights(conversion: Conversion, path: str, source: str) -> None:
    model = {f"backbone.{k}": v.contiguous() for k, v in conversion.weights.items()}
    torch.save({"model": model, "__author__": f"tools/convert_pretrained.py from {source}",
                "matching_heuristics": False}, path)


def summarize(keys: Sequence[str]) -> str:
    """'head.fc.* (2), norm.* (2)': keys grouped by module, for the report."""
    groups = Counter(re.sub(r"\.(weight|bias|running_mean|running_var)$", "", k).split(".")[0] for k in keys)
    return ", ".join(f"{g}.* ({n})" for g, n in groups.items()) or "none"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("family", choices=sorted(CONVERTERS))
    parser.add_argument("source", help="official ImageNet checkpoint (.pth)")
    parser.add_argument("output", help="converted weights (.pth) for MODEL.WEIGHTS")
    parser.add_argument("--window-size", type=int, default=0,
                        help="swin: window of the target model (its relative position tables are resized); "
                        "default: the checkpoint's")
    parser.add_argument("--trust", action="store_true", help="allow a release file that holds pickled objects")
    args = parser.parse_args(argv)

    state_dict = load_release(args.source, args.trust)
    extra = {"window_size": args.window_size} if args.family == "swin" else {}
    conversion = CONVERTERS[args.family](state_dict, **extra)
    save_weights(conversion, args.output, args.source)
    print(f"{args.family}: {len(conversion.weights)} tensors written to {args.output}")
    print(f"  dropped on purpose (classification parts): {summarize(conversion.dropped)}")
    if conversion.initialised:
        print(f"  not in the release, initialised as in a fresh model: {', '.join(conversion.initialised)}")
    # as command-line overrides (KEY VALUE ...) for train_net.py
    print("  config: " + " ".join(f"{k} {str(v).replace(' ', '')}" for k, v in conversion.config.items()))


if __name__ == "__main__":
    main()
