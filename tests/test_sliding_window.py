"""ProtoSegSemanticSegmentor's inference: sliding-window geometry, slide == whole where the model
allows it, images smaller than the window, count normalisation, window batching, flip and
multi-scale TTA, and the toy model's whole-image path unchanged."""
import math

import pytest
import torch
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone, SemanticSegmentor, build_model

from protoseg.modeling import ProtoSegSemanticSegmentor, sliding_windows

from conftest import toy_cfg

NUM_CLASSES = 5


class IdentityBackbone(Backbone):
    """The normalised image as the only feature ("image", stride 1); records the batches it sees."""

    def __init__(self):
        super().__init__()
        self.seen_shapes = []

    def forward(self, x):
        self.seen_shapes.append(tuple(x.shape))
        return {"image": x}

    def output_shape(self):
        return {"image": ShapeSpec(channels=3, stride=1)}


class ConvHead(nn.Module):
    """A head that is one conv on the image: (B, 3, H, W) -> (B, C, H, W) logits, zero padding."""

    def __init__(self, kernel_size=1, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, NUM_CLASSES, kernel_size, padding=kernel_size // 2)
        self.ignore_value = 255

    def forward(self, features, targets=None):
        return self.conv(features["image"]), {}


class ConstantHead(nn.Module):
    """Logits that do not depend on the input: (B, C, H, W) filled with ``values``."""

    def __init__(self, values):
        super().__init__()
        self.register_buffer("values", torch.tensor(values).view(1, -1, 1, 1))
        self.ignore_value = 255

    def forward(self, features, targets=None):
        x = features["image"]
        return self.values.expand(x.shape[0], -1, *x.shape[-2:]).clone(), {}


def segmentor(head=None, **kwargs):
    model = ProtoSegSemanticSegmentor(
        backbone=IdentityBackbone(), sem_seg_head=head or ConvHead(), pixel_mean=[100.0, 110.0, 120.0],
        pixel_std=[50.0, 60.0, 70.0], **kwargs,
    )
    return model.eval()


def image(h, w, seed=0):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed)) * 255


def run(model, img, **extra):
    with torch.no_grad():
        return model([{"image": img, **extra}])[0]["sem_seg"]


@pytest.mark.parametrize("h,w,size,stride", [(100, 37, (32, 32), (20, 20)), (64, 64, (16, 16), (16, 16)),
                                             (50, 70, (16, 24), (5, 7)), (10, 12, (16, 16), (8, 8))])
def test_windows_cover_every_pixel_within_the_image(h, w, size, stride):
    boxes = sliding_windows(h, w, size, stride)
    rows = max(h - size[0] + stride[0] - 1, 0) // stride[0] + 1  # mmseg's slide_inference grid
    cols = max(w - size[1] + stride[1] - 1, 0) // stride[1] + 1
    assert len(boxes) == rows * cols
    count = torch.zeros(h, w)
    for y0, y1, x0, x1 in boxes:
        assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w
        assert (y1 - y0, x1 - x0) == (min(size[0], h), min(size[1], w))  # clipped only by the image
        count[y0:y1, x0:x1] += 1
    assert count.min() >= 1


def test_slide_equals_whole_for_a_per_pixel_model():
    img = image(37, 53)
    whole = run(segmentor(), img)
    model = segmentor(sliding_window=True, window_size=(16, 16), window_stride=(10, 10), window_batch_size=3)
    slide = run(model, img)
    assert slide.shape == whole.shape == (NUM_CLASSES, 37, 53)
    torch.testing.assert_close(slide, whole, rtol=1e-5, atol=1e-5)
    n_windows = len(sliding_windows(37, 53, (16, 16), (10, 10)))
    batches = model.backbone.seen_shapes
    assert len(batches) == math.ceil(n_windows / 3) and max(b[0] for b in batches) == 3  # memory bound
    assert all(b[1:] == (3, 16, 16) for b in batches)


def test_overlap_count_normalisation_gives_back_constant_logits():
    values = [0.5, -1.0, 2.0, 3.0, -4.0]
    model = segmentor(ConstantHead(values), sliding_window=True, window_size=(16, 24), window_stride=(5, 7))
    out = run(model, image(50, 70))
    expected = torch.tensor(values).view(-1, 1, 1).expand(-1, 50, 70)
    torch.testing.assert_close(out, expected)  # windows overlap 1 to 16 times


def test_image_smaller_than_window_is_padded_and_cropped_back():
    img = image(20, 30)
    model = segmentor(sliding_window=True, window_size=(32, 48), window_stride=(16, 16))
    out = run(model, img, height=40, width=60)
    assert model.backbone.seen_shapes == [(1, 3, 32, 48)]
    whole = run(segmentor(), img, height=40, width=60)
    assert out.shape == (NUM_CLASSES, 40, 60)
    torch.testing.assert_close(out, whole, rtol=1e-5, atol=1e-5)


def test_window_covering_the_image_equals_whole_for_a_conv_model():
    # a 3x3 conv pads with 0, as the window's padding of the normalised image: outputs agree
    img = image(23, 29)
    whole = run(segmentor(ConvHead(kernel_size=3)), img)
    model = segmentor(ConvHead(kernel_size=3), sliding_window=True, window_size=(32, 32), window_stride=(32, 32))
    slide = run(model, img)
    torch.testing.assert_close(slide, whole, rtol=1e-5, atol=1e-5)


def test_toy_model_whole_path_is_detectron2s_and_one_window_equals_it():
    cfg = toy_cfg(opts=["MODEL.SEM_SEG_HEAD.NAME", "ParametricSegHead"])
    assert cfg.MODEL.META_ARCHITECTURE == "ProtoSegSemanticSegmentor"
    torch.manual_seed(0)
    ours = build_model(cfg).eval()
    cfg.MODEL.META_ARCHITECTURE = "SemanticSegmentor"
    theirs = build_model(cfg).eval()
    theirs.load_state_dict(ours.state_dict())
    inputs = [{"image": image(64, 96), "height": 32, "width": 48}, {"image": image(48, 80, seed=1)}]
    with torch.no_grad():
        a, b = ours(inputs), theirs(inputs)
    assert all(torch.equal(x["sem_seg"], y["sem_seg"]) for x, y in zip(a, b))
    cfg.MODEL.META_ARCHITECTURE = "ProtoSegSemanticSegmentor"
    window = cfg.TEST.SLIDING_WINDOW
    window.ENABLED, window.SIZE, window.STRIDE = True, (64, 96), (32, 32)  # one window: the image
    slide = build_model(cfg).eval()
    slide.load_state_dict(ours.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(slide(inputs[:1])[0]["sem_seg"], a[0]["sem_seg"], rtol=1e-5, atol=1e-5)


def test_flip_tta_is_flipped_back():
    img = image(24, 36)  # not flip-symmetric; a per-pixel model is flip-equivariant
    plain = run(segmentor(), img).softmax(dim=0)
    tta = run(segmentor(test_min_sizes=(24,), test_flip=True), img)
    torch.testing.assert_close(tta, plain, rtol=1e-5, atol=1e-6)
    # a model that is not flip-equivariant (one 3x3 conv) averages two different predictions
    flip_only = run(segmentor(ConvHead(kernel_size=3), test_min_sizes=(0,), test_flip=True), img)
    no_flip = run(segmentor(ConvHead(kernel_size=3), test_min_sizes=(0,)), img)
    assert (flip_only - no_flip).abs().max() > 1e-3


def test_multiscale_tta_averages_probabilities_at_the_output_size():
    img = torch.full((3, 24, 36), 80.0)
    model = segmentor(test_min_sizes=(12, 24, 48), test_flip=True, sliding_window=True, window_size=(16, 16),
                      window_stride=(12, 12))
    out = run(model, img, height=30, width=45)
    assert out.shape == (NUM_CLASSES, 30, 45)
    expected = run(segmentor(), img)[:, 0, 0].softmax(dim=0)
    torch.testing.assert_close(out, expected.view(-1, 1, 1).expand_as(out), rtol=1e-5, atol=1e-6)
    seen = {s[-2:] for s in model.backbone.seen_shapes}
    assert seen == {(16, 16)}  # every scale through 16x16 windows (12x18 padded to one window)
    assert model.test_protocol == "MS (12, 24, 48)+flip slide 16x16 stride 12x12"
    assert segmentor().test_protocol == "SS whole"


def test_stride_larger_than_window_is_refused():
    with pytest.raises(ValueError, match="STRIDE"):
        segmentor(sliding_window=True, window_size=(16, 16), window_stride=(20, 16))


def test_from_config_reads_the_test_keys():
    cfg = toy_cfg(opts=[
        "TEST.SLIDING_WINDOW.ENABLED", True, "TEST.SLIDING_WINDOW.SIZE", (64, 64),
        "TEST.SLIDING_WINDOW.STRIDE", (48, 40), "TEST.SLIDING_WINDOW.BATCH_SIZE", 2,
        "TEST.AUG.ENABLED", True, "TEST.AUG.MIN_SIZES", (96, 128), "TEST.AUG.FLIP", False,
    ])
    model = build_model(cfg)
    assert isinstance(model, ProtoSegSemanticSegmentor) and isinstance(model, SemanticSegmentor)
    assert (model.window_size, model.window_stride, model.window_batch_size) == ((64, 64), (48, 40), 2)
    assert model.test_min_sizes == (96, 128) and not model.test_flip


# enlarged to the output size, at the network's size, shrunk (PyTorch's kernel differs there)
RESIZED_INPUTS = [{"image": image(64, 96), "height": 75, "width": 113}, {"image": image(48, 80, seed=1)},
                  {"image": image(64, 96, seed=2), "height": 32, "width": 48}]


def full_size_scores(model, inputs):
    """forward's sem_seg, resized in one chunk of all classes (C, height, width)."""
    model.label_chunk_bytes, chunk_bytes = 2**40, model.label_chunk_bytes
    with torch.no_grad():
        out = [x["sem_seg"] for x in model(inputs)]
    model.label_chunk_bytes = chunk_bytes
    return out


@pytest.mark.parametrize("opts", [
    [],  # whole image, the ProtoSeg head: scores resized from the decoder's stride
    ["MODEL.SEM_SEG_HEAD.NAME", "ParametricSegHead"],
    ["TEST.SLIDING_WINDOW.ENABLED", True, "TEST.SLIDING_WINDOW.SIZE", (48, 48), "TEST.SLIDING_WINDOW.STRIDE", (32, 32)],
    ["TEST.AUG.ENABLED", True, "TEST.AUG.MIN_SIZES", (48, 64), "TEST.AUG.FLIP", True],
])
def test_label_maps_in_chunks_of_classes_equal_the_argmax_of_the_scores(opts):
    """predict_labels never holds (C, height, width); its labels are forward's argmax, exactly."""
    cfg = toy_cfg(opts=["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 37] + opts)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    model.label_chunk_bytes = 1  # the least chunk: 16 classes, so 3 chunks, the last one of 5
    labels = model.predict_labels(RESIZED_INPUTS)
    expected = [out.argmax(0) for out in full_size_scores(model, RESIZED_INPUTS)]
    assert [tuple(x.shape) for x in labels] == [(75, 113), (48, 80), (32, 48)]
    for got, want in zip(labels, expected):
        assert got.dtype == torch.int64 and torch.equal(got, want)
    assert bool((expected[0] < 16).any() and (expected[0] >= 32).any())  # several chunks win somewhere


def test_label_maps_of_another_head_and_ties_go_to_the_lower_class():
    values = [0.0] * 40
    values[20] = values[35] = values[3] = 2.0  # tied in three chunks of 16 classes
    tied = segmentor(ConstantHead(values), label_chunk_bytes=1)
    labels = tied.predict_labels([{"image": image(6, 7), "height": 9, "width": 5}])[0]
    assert labels.shape == (9, 5) and bool((labels == 3).all())
    conv = segmentor(ConvHead(kernel_size=3), label_chunk_bytes=1)
    inputs = [{"image": image(13, 17), "height": 20, "width": 30}]
    assert torch.equal(conv.predict_labels(inputs)[0], full_size_scores(conv, inputs)[0].argmax(0))


def test_scores_resized_in_chunks_of_classes_are_detectron2s():
    """forward's (C, height, width) is filled a chunk of classes at a time: bit-equal to Detectron2's
    SemanticSegmentor, which resizes all classes in one call."""
    cfg = toy_cfg(opts=["MODEL.SEM_SEG_HEAD.NAME", "ParametricSegHead", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 37])
    torch.manual_seed(0)
    ours = build_model(cfg).eval()
    ours.label_chunk_bytes = 1  # 16 classes at a time
    cfg.MODEL.META_ARCHITECTURE = "SemanticSegmentor"
    theirs = build_model(cfg).eval()
    theirs.load_state_dict(ours.state_dict())
    with torch.no_grad():
        for x, y in zip(ours(RESIZED_INPUTS), theirs(RESIZED_INPUTS)):
            assert x["sem_seg"].shape == y["sem_seg"].shape and torch.equal(x["sem_seg"], y["sem_seg"])
