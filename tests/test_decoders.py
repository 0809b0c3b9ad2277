"""The decoders (FCN, HRNetV2, UperNet, SegFormer MLP) and the auxiliary FCN head, on plain
``ShapeSpec`` dicts and random features of the four strides (no backbone needed)."""
import pytest
import torch
import torch.nn.functional as F

from detectron2.layers import ShapeSpec

from protoseg.modeling.decoders import FCNDecoder, HRNetV2Decoder, build_decoder
from protoseg.modeling.heads import AuxiliaryFCNHead
from protoseg.modeling.decoders import SegFormerMLPDecoder, UperNetDecoder
from protoseg.modeling.heads import ParametricSegHead, ProtoSegHead
from protoseg.modeling.heads.cross_entropy import masked_cross_entropy

from conftest import toy_cfg

LEVELS = ["res2", "res3", "res4", "res5"]
SMALL = (8, 16, 24, 32)  # channels of the small test backbone, strides 4/8/16/32
# Backbone widths at the paper's settings (res2..res5).
HRNET_W48 = (48, 96, 192, 384)
SWIN_B = (128, 256, 512, 1024)
MIT_B2_B5 = (64, 128, 320, 512)
MIT_B0 = (32, 64, 160, 256)


def shapes(channels, strides=(4, 8, 16, 32)):
    return {f: ShapeSpec(channels=c, stride=s) for f, c, s in zip(LEVELS, channels, strides)}


def random_features(input_shape, batch=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        f: torch.randn(batch, s.channels, size // s.stride, size // s.stride, generator=g).requires_grad_()
        for f, s in input_shape.items()
    }


def decoder_cfg(name, opts=(), in_features=LEVELS, convs_dim=16):
    return toy_cfg(opts=[
        "MODEL.SEM_SEG_HEAD.DECODER_NAME", name, "MODEL.SEM_SEG_HEAD.IN_FEATURES", list(in_features),
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", convs_dim, *opts,
    ])


def num_params(module):
    return sum(p.numel() for p in module.parameters())


def conv_bn(cin, cout, k, bias=False):
    """Parameters of a k x k conv (+ bias) followed by BN (weight and bias)."""
    return cin * cout * k * k + (cout if bias else 0) + 2 * cout


# (decoder name, config overrides, expected out_channels for SMALL with CONVS_DIM 16)
DECODERS = [
    ("HRNetV2Decoder", ["MODEL.SEM_SEG_HEAD.HRNET_VARIANT", "mmseg"], sum(SMALL)),
    ("HRNetV2Decoder", ["MODEL.SEM_SEG_HEAD.HRNET_VARIANT", "reference"], sum(SMALL)),
    ("UperNetDecoder", [], 16),
    ("SegFormerMLPDecoder", ["MODEL.SEM_SEG_HEAD.SEGFORMER_VARIANT", "original"], 16),
    ("SegFormerMLPDecoder", ["MODEL.SEM_SEG_HEAD.SEGFORMER_VARIANT", "mmseg"], 16),
]


@pytest.mark.parametrize("name,opts,channels", DECODERS)
def test_decoder_builds_from_config_runs_forward_backward_and_reads_every_level(name, opts, channels):
    torch.manual_seed(0)
    input_shape = shapes(SMALL)
    decoder = build_decoder(decoder_cfg(name, opts), input_shape)
    assert type(decoder).__name__ == name
    assert decoder.out_stride == 4 and decoder.out_channels == channels
    features = random_features(input_shape, size=64)
    out = decoder(features)
    assert out.shape == (2, channels, 16, 16)
    out.square().mean().backward()
    for f in LEVELS:  # every level contributes to the embedding
        assert features[f].grad is not None and features[f].grad.abs().sum() > 0, f
    assert all(p.grad is not None for p in decoder.parameters())


def test_fcn_decoder_is_mmseg_fcn_r101_d8():
    # mmseg configs/_base_/models/fcn_r50-d8.py (fcn_r101-d8 only deepens the backbone): FCNHead on
    # the 2048-channel stride-8 feature, channels 512, num_convs 2, concat_input True, dropout 0.1.
    cfg = toy_cfg()
    head = cfg.MODEL.SEM_SEG_HEAD
    assert (head.NUM_CONVS, head.CONCAT_INPUT, head.DROPOUT) == (2, True, 0.1)
    with torch.device("meta"):
        decoder = FCNDecoder({"res5": ShapeSpec(channels=2048, stride=8)}, in_feature="res5", channels=512)
    expected = conv_bn(2048, 512, 3) + conv_bn(512, 512, 3) + conv_bn(2048 + 512, 512, 3)
    assert num_params(decoder) == expected == 23_596_032
    assert decoder.out_stride == 8 and decoder.out_channels == 512


def test_parameter_counts_at_the_papers_widths():
    with torch.device("meta"):
        hrnet = HRNetV2Decoder(shapes(HRNET_W48), in_features=LEVELS)
        hrnet_ref = HRNetV2Decoder(shapes(HRNET_W48), in_features=LEVELS, kernel_size=3, conv_bias=True)
        upernet = UperNetDecoder(shapes(SWIN_B), in_features=LEVELS, channels=512)
        segformer = {
            (name, variant): SegFormerMLPDecoder(shapes(chs), in_features=LEVELS, embed_dim=dim, variant=variant)
            for name, chs, dim in [("B4", MIT_B2_B5, 768), ("B0", MIT_B0, 256)]
            for variant in ("original", "mmseg")
        }
    # HRNetV2-W48, mmseg fcn_hr48: concat 720 -> 1x1 conv (no bias) + BN.
    assert hrnet.out_channels == 720
    assert num_params(hrnet) == 720 * 720 + 2 * 720 == 519_840
    # the reference's 3x3 conv with bias + BN
    assert num_params(hrnet_ref) == 720 * 720 * 9 + 720 + 2 * 720 == 4_667_760
    # UperNet on Swin-B, channels 512: PPM (4 x 1x1 on 1024), bottleneck 3x3 on 1024 + 4 x 512,
    # 1x1 laterals on 128/256/512, three 3x3 fpn convs, 3x3 fpn_bottleneck on 4 x 512.
    ppm = 4 * conv_bn(1024, 512, 1)
    bottleneck = conv_bn(1024 + 4 * 512, 512, 3)
    laterals = sum(conv_bn(c, 512, 1) for c in SWIN_B[:-1])
    fpn = 3 * conv_bn(512, 512, 3)
    fpn_bottleneck = conv_bn(4 * 512, 512, 3)
    assert num_params(upernet) == ppm + bottleneck + laterals + fpn + fpn_bottleneck == 33_239_040
    # SegFormer: per level linear (C_i + 1) x E (original) or 1x1 conv + BN (mmseg); fuse 4E -> E + BN.
    for name, chs, dim in [("B4", MIT_B2_B5, 768), ("B0", MIT_B0, 256)]:
        fuse = conv_bn(4 * dim, dim, 1)
        assert num_params(segformer[name, "original"]) == sum((c + 1) * dim for c in chs) + fuse
        assert num_params(segformer[name, "mmseg"]) == sum(conv_bn(c, dim, 1) for c in chs) + fuse
    assert num_params(segformer["B4", "original"]) == 3_150_336
    assert num_params(segformer["B0", "original"]) == 394_752


def test_auxiliary_head_parameters_at_the_papers_widths():
    # mmseg auxiliary FCNHead: 3x3 conv 256 + BN on res4, then a 1x1 C-way classifier with bias.
    C = 150
    with torch.device("meta"):
        r101 = AuxiliaryFCNHead({"res4": ShapeSpec(channels=1024, stride=8)}, in_feature="res4",
                                num_classes=C, ignore_value=255)
        swin = AuxiliaryFCNHead(shapes(SWIN_B), in_feature="res4", num_classes=C, ignore_value=255)
    assert num_params(r101) == conv_bn(1024, 256, 3) + 256 * C + C == 2_398_358
    assert num_params(swin) == conv_bn(512, 256, 3) + 256 * C + C == 1_218_710


def test_hrnet_variants_compute_resize_concat_conv_bn_relu():
    torch.manual_seed(0)
    input_shape = shapes(SMALL)
    features = random_features(input_shape, size=32)
    for variant, align_corners in [("mmseg", False), ("reference", True)]:
        cfg = decoder_cfg("HRNetV2Decoder", ["MODEL.SEM_SEG_HEAD.HRNET_VARIANT", variant])
        decoder = build_decoder(cfg, input_shape)
        decoder.eval()
        x = torch.cat([features["res2"]] + [
            F.interpolate(features[f], size=(8, 8), mode="bilinear", align_corners=align_corners)
            for f in LEVELS[1:]
        ], dim=1)
        conv, bn = decoder.fuse, decoder.fuse.norm
        expected = F.relu(bn(F.conv2d(x, conv.weight, conv.bias, padding=conv.padding)))
        with torch.no_grad():
            assert torch.allclose(decoder(features), expected, atol=1e-5)
        # reference checkpoint names: fuse.{weight,bias} = cls_head.0.*, fuse.norm.* = cls_head.1.0.*
        keys = set(decoder.state_dict())
        assert {"fuse.weight", "fuse.norm.weight", "fuse.norm.running_mean"} <= keys
        assert ("fuse.bias" in keys) == (variant == "reference")
        assert conv.kernel_size == ((1, 1) if variant == "mmseg" else (3, 3))


@pytest.mark.parametrize("variant,first_level", [("original", "res5"), ("mmseg", "res2")])
def test_segformer_concatenation_order(variant, first_level):
    # NVlabs/SegFormer concatenates [c4, c3, c2, c1], mmseg [c1, ..., c4]: with the fuse reading
    # only its first E input channels, only that level reaches the output.
    torch.manual_seed(0)
    input_shape = shapes(SMALL)
    decoder = SegFormerMLPDecoder(input_shape, in_features=LEVELS, embed_dim=16, variant=variant)
    with torch.no_grad():
        decoder.fuse.weight[:, 16:] = 0
    features = random_features(input_shape, size=32)
    decoder(features).sum().backward()
    for f in LEVELS:
        assert (features[f].grad.abs().sum() > 0) == (f == first_level), f


def test_decoder_config_errors_name_the_key():
    input_shape = shapes(SMALL)
    with pytest.raises(ValueError, match="HRNET_VARIANT"):
        build_decoder(decoder_cfg("HRNetV2Decoder", ["MODEL.SEM_SEG_HEAD.HRNET_VARIANT", "openseg"]), input_shape)
    with pytest.raises(ValueError, match="SEGFORMER_VARIANT"):
        cfg = decoder_cfg("SegFormerMLPDecoder", ["MODEL.SEM_SEG_HEAD.SEGFORMER_VARIANT", "x"])
        build_decoder(cfg, input_shape)
    with pytest.raises(ValueError, match="fine to coarse"):
        build_decoder(decoder_cfg("UperNetDecoder", in_features=LEVELS[::-1]), input_shape)
    with pytest.raises(KeyError, match="IN_FEATURES"):
        build_decoder(decoder_cfg("UperNetDecoder", in_features=["res2", "res6"]), input_shape)
    with pytest.raises(KeyError, match="AUX_IN_FEATURE"):
        cfg = decoder_cfg("UperNetDecoder", ["MODEL.SEM_SEG_HEAD.AUX_IN_FEATURE", "res6"])
        ParametricSegHead(cfg, input_shape)


# ---- heads on the decoders: the auxiliary head and the parameter identity ----------------------

HEAD_DECODERS = [("FCNDecoder", ["res5"])] + [
    (name, LEVELS) for name in ("HRNetV2Decoder", "UperNetDecoder", "SegFormerMLPDecoder")
]


def head_cfg(name, in_features, opts=()):
    return decoder_cfg(name, ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 5, *opts], in_features=in_features)


def random_targets(batch=2, size=64, num_classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, num_classes, (batch, size, size), generator=g)
    targets[:, :4] = 255
    return targets


@pytest.mark.parametrize("name,in_features", HEAD_DECODERS)
def test_protoseg_head_is_parametric_head_minus_the_classifier(name, in_features):
    # Paper's counts: ProtoSeg = parametric baseline minus its C x D + C classifier, on any decoder,
    # with the auxiliary head in both. Without the reference's LayerNorms the difference is exact;
    # with them (the default) ProtoSeg has 2D + 2C more.
    C = 5
    aux = ["MODEL.SEM_SEG_HEAD.AUX_IN_FEATURE", "res4"]
    no_norms = ["MODEL.PROTOSEG.FEATURE_LAYERNORM", False, "MODEL.PROTOSEG.CLASS_SCORE_NORM", "temperature"]
    input_shape = shapes(SMALL)
    baseline = ParametricSegHead(head_cfg(name, in_features, aux), input_shape)
    D = baseline.decoder.out_channels
    proto = ProtoSegHead(head_cfg(name, in_features, aux + no_norms), input_shape)
    assert proto.aux_head is not None and baseline.aux_head is not None
    assert num_params(baseline) - num_params(proto) == C * D + C
    proto_ln = ProtoSegHead(head_cfg(name, in_features, aux), input_shape)
    assert num_params(baseline) - num_params(proto_ln) == C * D + C - 2 * D - 2 * C


def test_auxiliary_head_loss_is_weighted_cross_entropy():
    torch.manual_seed(0)
    input_shape = shapes(SMALL)
    head = AuxiliaryFCNHead(input_shape, in_feature="res4", num_classes=5, ignore_value=255,
                            loss_weight=0.4, dropout=0.0)
    features, targets = random_features(input_shape), random_targets()
    loss = head(features, targets)
    logits = head.classifier(head.fcn.convs(features["res4"]))  # (2, 5, 4, 4)
    up = F.interpolate(logits, size=(64, 64), mode="bilinear", align_corners=False)
    assert torch.allclose(loss, 0.4 * masked_cross_entropy(up, targets, 255))
    assert loss.item() > 0


@pytest.mark.parametrize("head_cls", [ParametricSegHead, ProtoSegHead])
def test_auxiliary_head_trains_only_and_reaches_the_backbone(head_cls):
    torch.manual_seed(0)
    input_shape = shapes(SMALL)
    opts = ["MODEL.SEM_SEG_HEAD.AUX_IN_FEATURE", "res4", "MODEL.SEM_SEG_HEAD.AUX_LOSS_WEIGHT", 0.4]
    head = head_cls(head_cfg("FCNDecoder", ["res5"], opts), input_shape)  # the decoder reads res5 only
    head.train()
    head.aux_head.fcn.dropout.eval()  # deterministic, to recompute the loss below
    features, targets = random_features(input_shape), random_targets()
    _, losses = head(features, targets)
    expected_keys = {"loss_ce", "loss_aux"} | ({"loss_ppc", "loss_ppd"} if head_cls is ProtoSegHead else set())
    assert set(losses) == expected_keys
    aux = head.aux_head
    with torch.no_grad():
        logits = aux.classifier(aux.fcn(features))
        up = F.interpolate(logits, size=(64, 64), mode="bilinear", align_corners=False)
        assert torch.allclose(losses["loss_aux"], 0.4 * masked_cross_entropy(up, targets, 255), atol=1e-6)
    # res4 feeds only the auxiliary head: its gradient comes from loss_aux
    assert features["res4"].grad is None
    losses["loss_aux"].backward()
    assert features["res4"].grad.abs().sum() > 0
    # inference: the auxiliary head is not run
    calls = []
    aux.register_forward_hook(lambda *args: calls.append(1))
    head.eval()
    with torch.no_grad():
        logits, extra = head(random_features(input_shape, seed=1))
    assert logits.shape == (2, 5, 64, 64) and extra == {} and calls == []


def test_no_auxiliary_head_by_default():
    head = ParametricSegHead(head_cfg("UperNetDecoder", LEVELS), shapes(SMALL))
    assert head.aux_head is None
    _, losses = head(random_features(shapes(SMALL)), random_targets())
    assert set(losses) == {"loss_ce"}
