"""Swin Transformer backbone (Liu et al., ICCV 2021) on timm's ``SwinTransformer`` modules.

The parameters are timm's (so timm's filter of the official checkpoints applies, see
``tools/convert_pretrained.py``); the forward is ours, for segmentation inputs of any size:

- timm (1.0.31) rolls the tokens for the shifted windows and *then* pads them to a multiple of
  the window, so with padding the attention mask no longer isolates the wrapped-around tokens
  (timm issue #2438). Every segmentation crop needs padding (a 512 crop gives 128/64/32/16 tokens,
  none a multiple of 7 or 12), so blocks run here as Swin's segmentation code does
  (Swin-Transformer-Semantic-Segmentation, mmseg): pad, roll, mask built on the padded grid.
- Windows keep their size and shift at every stage (timm's ``always_partition``), where timm would
  shrink a window to a small feature map; attention masks are built per input (``strict_img_size``
  off); the patch embedding pads the image to a multiple of 4 (``dynamic_img_pad``) and the patch
  merging pads odd sizes, so any H x W works and stage s has ceil(H / 2^(s+1)) rows.
- Each returned stage goes through its own LayerNorm (the segmentation code's ``norm0..3``); the
  classification head and final norm are removed (timm's ``prune_intermediate_layers``), as are
  the stages after the last returned one.
"""
from functools import partial
from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from timm.layers import PatchEmbed, trunc_normal_
from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock, window_partition, window_reverse

from .stages import ALL_STAGES, stage_indices

__all__ = ["SwinBackbone", "build_swin_backbone", "shifted_window_block"]

PATCH_SIZE = 4


def shifted_window_block(block: SwinTransformerBlock, x: torch.Tensor) -> torch.Tensor:
    """One Swin block with the segmentation code's padding: (B, H, W, C) -> (B, H, W, C).

    LayerNorm, pad H and W to multiples of the window M, cyclic shift (if the block has one),
    window attention (shifted blocks: with the mask (nW, M*M, M*M) of the padded grid), reverse
    shift, crop; then the MLP. The padded tokens are zeros that take part in the attention, as in
    the original.
    """
    _, h, w, c = x.shape
    win, shift = block.window_size, block.shift_size
    y = block.norm1(x)
    y = F.pad(y, (0, 0, 0, -w % win[1], 0, -h % win[0]))
    hp, wp = y.shape[1:3]
    if any(shift):
        y = torch.roll(y, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    windows = window_partition(y, win).reshape(-1, win[0] * win[1], c)
    windows = block.attn(windows, mask=block.get_attn_mask(y) if any(shift) else None)
    y = window_reverse(windows.reshape(-1, win[0], win[1], c), win, hp, wp)
    if any(shift):
        y = torch.roll(y, shifts=shift, dims=(1, 2))
    x = x + block.drop_path1(y[:, :h, :w])
    return x + block.drop_path2(block.mlp(block.norm2(x)))


class SwinBackbone(Backbone):
    """Swin-T/S/B/L returning ``out_features`` among res2..res5: stage i = 0..3 is
    (B, C * 2^i, ceil(H / 2^(i+2)), ceil(W / 2^(i+2))), NCHW, after its LayerNorm (C = embed_dim).
    Input (B, 3, H, W), any H and W."""

    @configurable
    def __init__(
        self,
        *,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.3,
        ape: bool = False,
        patch_norm: bool = True,
        pretrain_img_size: int = 224,
        out_features: Sequence[str] = tuple(ALL_STAGES),
        use_checkpoint: bool = False,
        in_channels: int = 3,
    ):
        super().__init__()
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(f"MODEL.SWIN.DEPTHS and NUM_HEADS need 4 stages, got {list(depths)}, {list(num_heads)}")
        stages = stage_indices(out_features, "MODEL.SWIN.OUT_FEATURES")
        self.encoder = SwinTransformer(
            img_size=pretrain_img_size,
            patch_size=PATCH_SIZE,
            in_chans=in_channels,
            num_classes=0,
            embed_dim=embed_dim,
            depths=tuple(depths),
            num_heads=tuple(num_heads),
            window_size=window_size,
            always_partition=True,
            strict_img_size=False,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop_path_rate=drop_path_rate,
            embed_layer=partial(PatchEmbed, dynamic_img_pad=True),
        )
        self.encoder.prune_intermediate_layers(indices=[max(stages.values())], prune_norm=True, prune_head=True)
        if not patch_norm:
            self.encoder.patch_embed.norm = nn.Identity()
        self.absolute_pos_embed = None
        if ape:
            grid = pretrain_img_size // PATCH_SIZE
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, grid, grid))
            trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.use_checkpoint = use_checkpoint

        self._out_features = list(out_features)
        self._out_feature_channels = {f: embed_dim * 2**i for f, i in stages.items()}
        self._out_feature_strides = {f: PATCH_SIZE * 2**i for f, i in stages.items()}
        self.output_norms = nn.ModuleDict({f: nn.LayerNorm(self._out_feature_channels[f]) for f in out_features})

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        s = cfg.MODEL.SWIN
        return {
            "embed_dim": s.EMBED_DIM,
            "depths": s.DEPTHS,
            "num_heads": s.NUM_HEADS,
            "window_size": s.WINDOW_SIZE,
            "mlp_ratio": s.MLP_RATIO,
            "qkv_bias": s.QKV_BIAS,
            "drop_path_rate": s.DROP_PATH_RATE,
            "ape": s.APE,
            "patch_norm": s.PATCH_NORM,
            "pretrain_img_size": s.PRETRAIN_IMG_SIZE,
            "out_features": s.OUT_FEATURES,
            "use_checkpoint": s.USE_CHECKPOINT,
            "in_channels": input_shape.channels,
        }

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = self.encoder.patch_embed(x)  # (B, ceil(H/4), ceil(W/4), C), NHWC
        if self.absolute_pos_embed is not None:
            ape = F.interpolate(self.absolute_pos_embed, size=x.shape[1:3], mode="bicubic", align_corners=False)
            x = x + ape.permute(0, 2, 3, 1)
        outputs = {}
        for i, stage in enumerate(self.encoder.layers):
            x = stage.downsample(x)
            for block in stage.blocks:
                if self.use_checkpoint and self.training:
                    x = checkpoint(shifted_window_block, block, x, use_reentrant=False)
                else:
                    x = shifted_window_block(block, x)
            name = ALL_STAGES[i]
            if name in self.output_norms:
                outputs[name] = self.output_norms[name](x).permute(0, 3, 1, 2).contiguous()
        return outputs


@BACKBONE_REGISTRY.register()
def build_swin_backbone(cfg, input_shape: ShapeSpec):
    """Swin Transformer from ``MODEL.SWIN.*``."""
    return SwinBackbone(cfg, input_shape)
