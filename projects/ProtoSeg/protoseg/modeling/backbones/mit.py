"""Mix Transformer (MiT-B0..B5), the encoder of SegFormer (Xie et al., NeurIPS 2021).

Written here rather than imported: Detectron2 has no MiT and timm has none under that name. (timm's
``PyramidVisionTransformerV2``, from the same authors, computes the same function with
``mlp_ratios=4``, and ``tests/test_backbones.py`` checks our outputs against it, but its modules
are laid out as ``stages.i.blocks.j`` / ``stages.i.downsample``.) The submodules here carry the
names of the official SegFormer release (NVlabs/SegFormer ``mix_transformer.py``): ``patch_embed1``,
``block1.0.attn.q``, ``block1.0.mlp.dwconv.dwconv``, ``norm1``... so the ImageNet checkpoints
(``mit_b*.pth``) and the backbone part of the released SegFormer models load without renaming.

Each stage i = 1..4: an overlapping patch embedding (conv 7x7 stride 4, then 3x3 stride 2, with
LayerNorm), blocks of efficient self-attention (keys/values from the tokens reduced by an R_i x R_i
strided conv, R = 8, 4, 2, 1) and Mix-FFN (fc, 3x3 depthwise conv, GELU, fc), each pre-norm with a
residual and stochastic depth, then a LayerNorm. Dropout and attention dropout are left out: every
SegFormer model sets them to 0.
"""
import math
from typing import Dict, NamedTuple, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from timm.layers import DropPath, trunc_normal_

from .stages import ALL_STAGES, stage_indices

__all__ = ["MixVisionTransformer", "build_mit_backbone", "MIT_VARIANTS"]


class MiTSpec(NamedTuple):
    embed_dims: Tuple[int, int, int, int]
    depths: Tuple[int, int, int, int]


# Official release (mix_transformer.py, classes mit_b0..mit_b5) = SegFormer paper Sec. 3.1 / Appendix.
MIT_VARIANTS = {
    "b0": MiTSpec((32, 64, 160, 256), (2, 2, 2, 2)),
    "b1": MiTSpec((64, 128, 320, 512), (2, 2, 2, 2)),
    "b2": MiTSpec((64, 128, 320, 512), (3, 4, 6, 3)),
    "b3": MiTSpec((64, 128, 320, 512), (3, 4, 18, 3)),
    "b4": MiTSpec((64, 128, 320, 512), (3, 8, 27, 3)),
    "b5": MiTSpec((64, 128, 320, 512), (3, 6, 40, 3)),
}
NUM_HEADS = (1, 2, 5, 8)
SR_RATIOS = (8, 4, 2, 1)
MLP_RATIO = 4
PATCH_KERNELS, PATCH_STRIDES = (7, 3, 3, 3), (4, 2, 2, 2)
BLOCK_NORM_EPS = 1e-6  # the release's norm_layer for blocks and stage norms; the other LayerNorms use 1e-5


def tokens_to_map(x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *hw)


class OverlapPatchEmbed(nn.Module):
    """Conv (kernel k, stride s, padding k // 2) + LayerNorm: (B, C_in, H, W) -> tokens
    (B, ceil(H/s) * ceil(W/s), C_out) and their grid (ceil(H/s), ceil(W/s))."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, x: torch.Tensor):
        x = self.proj(x)
        return self.norm(x.flatten(2).transpose(1, 2)), tuple(x.shape[-2:])


class EfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys and values come from the token map reduced R x R by a
    strided conv + LayerNorm (``sr``, ``norm``; none for R = 1): (B, N, C) -> (B, N, C)."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)
        else:
            self.sr = self.norm = None

    def forward(self, x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, -1).transpose(1, 2)
        if self.sr is not None:
            x = self.norm(self.sr(tokens_to_map(x, hw)).flatten(2).transpose(1, 2))
        k, v = self.kv(x).reshape(b, -1, 2, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C / heads)) v
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class DepthwiseConv(nn.Module):
    """3x3 depthwise conv on tokens (B, H*W, C) laid out on their grid (the release's ``DWConv``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        return self.dwconv(tokens_to_map(x, hw)).flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    """fc -> 3x3 depthwise conv -> GELU -> fc: (B, N, C) -> (B, N, C)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = DepthwiseConv(hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), hw)))


class MixBlock(nn.Module):
    """x + DropPath(attn(LN(x))), then x + DropPath(MixFFN(LN(x))): (B, N, C) -> (B, N, C)."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.mlp = MixFFN(dim, dim * MLP_RATIO)

    def forward(self, x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.mlp(self.norm2(x), hw))


def init_mit_weights(m: nn.Module) -> None:
    """The release's initialisation: truncated normal (std 0.02) linear weights, zero biases,
    unit LayerNorms, convs normal with std sqrt(2 / fan_out)."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        nn.init.zeros_(m.bias)


class MixVisionTransformer(Backbone):
    """MiT-B0..B5 returning ``out_features`` among res2..res5: stage i (0..3) is
    (B, embed_dims[i], ceil(H / 4 / 2^i), ceil(W / 4 / 2^i)), NCHW, after its LayerNorm.
    Input (B, 3, H, W), any H and W."""

    @configurable
    def __init__(
        self,
        *,
        variant: str = "b4",
        drop_path_rate: float = 0.1,
        out_features: Sequence[str] = tuple(ALL_STAGES),
        in_channels: int = 3,
    ):
        super().__init__()
        if variant not in MIT_VARIANTS:
            raise ValueError(f"MODEL.MIT.VARIANT must be one of {sorted(MIT_VARIANTS)}, got {variant!r}")
        stages = stage_indices(out_features, "MODEL.MIT.OUT_FEATURES")
        spec = MIT_VARIANTS[variant]
        self.num_stages = max(stages.values()) + 1  # stages after the last output are not built
        drop_rates = torch.linspace(0, drop_path_rate, sum(spec.depths), device="cpu").tolist()
        dims = (in_channels,) + spec.embed_dims
        for i in range(self.num_stages):
            rates, drop_rates = drop_rates[: spec.depths[i]], drop_rates[spec.depths[i]:]
            setattr(self, f"patch_embed{i + 1}",
                    OverlapPatchEmbed(dims[i], dims[i + 1], PATCH_KERNELS[i], PATCH_STRIDES[i]))
            setattr(self, f"block{i + 1}",
                    nn.ModuleList([MixBlock(dims[i + 1], NUM_HEADS[i], SR_RATIOS[i], r) for r in rates]))
            setattr(self, f"norm{i + 1}", nn.LayerNorm(dims[i + 1], eps=BLOCK_NORM_EPS))
        self.apply(init_mit_weights)

        self._out_features = list(out_features)
        self._out_feature_channels = {f: spec.embed_dims[i] for f, i in stages.items()}
        self._out_feature_strides = {f: 4 * 2**i for f, i in stages.items()}

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        m = cfg.MODEL.MIT
        return {
            "variant": m.VARIANT,
            "drop_path_rate": m.DROP_PATH_RATE,
            "out_features": m.OUT_FEATURES,
            "in_channels": input_shape.channels,
        }

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        outputs = {}
        for i in range(self.num_stages):
            x, hw = getattr(self, f"patch_embed{i + 1}")(x)
            for block in getattr(self, f"block{i + 1}"):
                x = block(x, hw)
            x = tokens_to_map(getattr(self, f"norm{i + 1}")(x), hw)
            if ALL_STAGES[i] in self._out_features:
                outputs[ALL_STAGES[i]] = x
        return outputs


@BACKBONE_REGISTRY.register()
def build_mit_backbone(cfg, input_shape: ShapeSpec):
    """MiT from ``MODEL.MIT.*``."""
    return MixVisionTransformer(cfg, input_shape)
