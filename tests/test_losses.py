"""PPC (Eq. 11), PPD (Eq. 12) and the masked (and class-weighted) CE against hand-computed values."""
import math

import pytest
import torch

from protoseg.modeling import masked_cross_entropy, ppc_loss, ppd_loss
from protoseg.modeling.heads.cross_entropy import check_class_weights, upsampled_cross_entropy


def test_ppc_by_hand():
    logits = torch.tensor([[0.5, 0.1, -0.2], [0.0, 0.3, 0.9]])
    targets = torch.tensor([0, 2])
    # -log softmax(s / 0.1)[target], averaged over the two pixels
    l0 = math.log(math.exp(5) + math.exp(1) + math.exp(-2)) - 5
    l1 = math.log(math.exp(0) + math.exp(3) + math.exp(9)) - 9
    assert ppc_loss(logits, targets, temperature=0.1).item() == pytest.approx((l0 + l1) / 2, rel=1e-5)
    # the reference code's behaviour: no temperature
    l0_t1 = math.log(math.exp(0.5) + math.exp(0.1) + math.exp(-0.2)) - 0.5
    assert ppc_loss(logits[:1], targets[:1], temperature=1.0).item() == pytest.approx(l0_t1, rel=1e-6)


def test_ignore_never_collides_with_prototype_255():
    # ADE20K with K = 10: 1500 prototype indices, 255 is a real prototype (class 25, prototype 5).
    torch.manual_seed(0)
    logits = torch.randn(3, 1500)
    targets = torch.tensor([255, -1, 1499])
    both = ppc_loss(logits, targets)
    expected = (ppc_loss(logits[:1], targets[:1]) + ppc_loss(logits[2:], targets[2:])) / 2
    assert both.item() == pytest.approx(expected.item(), rel=1e-6)
    assert ppc_loss(logits[:1], targets[:1]).item() > 0  # prototype 255 is trained


def test_ppd_by_hand():
    logits = torch.tensor([[0.5, 0.1], [0.2, 0.9], [0.3, 0.3]])
    targets = torch.tensor([0, 1, -1])
    # ((1 - 0.5)^2 + (1 - 0.9)^2) / 2 valid pixels
    assert ppd_loss(logits, targets).item() == pytest.approx((0.25 + 0.01) / 2, rel=1e-6)


def test_all_ignored_is_zero_not_nan():
    logits = torch.randn(4, 6, requires_grad=True)
    targets = torch.full((4,), -1)
    for loss in (ppc_loss(logits, targets), ppd_loss(logits, targets), masked_cross_entropy(logits, targets, -1)):
        assert loss.item() == 0.0
        loss.backward()
        assert torch.isfinite(logits.grad).all()


def test_masked_cross_entropy_with_sixteen_bit_ignore():
    logits = torch.tensor([[[[2.0]], [[0.0]]]])  # (1, 2, 1, 1)
    targets = torch.tensor([[[0]]])
    expected = math.log(1 + math.exp(-2))
    assert masked_cross_entropy(logits, targets, 65535).item() == pytest.approx(expected, rel=1e-6)
    assert masked_cross_entropy(logits, torch.tensor([[[65535]]]), 65535).item() == 0.0


def test_ppd_for_distances_is_squared_distance():
    # similarity = -distance for the Euclidean / Huberized variants (Table 5d)
    logits = torch.tensor([[-0.5, -2.0], [-1.0, -0.1]])
    targets = torch.tensor([1, 0])
    assert ppd_loss(logits, targets, distance="euclidean").item() == pytest.approx((4.0 + 1.0) / 2)


# ---- class-weighted CE (MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS; the reference code's ce_weight) ------------


def test_weighted_cross_entropy_two_pixels_by_hand():
    # pixel a: scores (2, 0), class 0; pixel b: scores (0, 1), class 1; a third pixel is ignored
    logits = torch.tensor([[[[2.0, 0.0, 5.0]], [[0.0, 1.0, -5.0]]]])  # (1, 2, 1, 3)
    targets = torch.tensor([[[0, 1, 255]]])
    weight = torch.tensor([0.5, 2.0])
    l_a, l_b = math.log(1 + math.exp(-2)), math.log(1 + math.exp(-1))
    expected = (0.5 * l_a + 2.0 * l_b) / (0.5 + 2.0)  # sum_i w_{y_i} l_i / sum_i w_{y_i}
    assert masked_cross_entropy(logits, targets, 255, weight).item() == pytest.approx(expected, rel=1e-6)
    # all weights equal: the unweighted mean
    unweighted = masked_cross_entropy(logits, targets, 255, torch.tensor([3.0, 3.0])).item()
    assert unweighted == pytest.approx((l_a + l_b) / 2, rel=1e-6)


@pytest.mark.parametrize("ignore", [255, 65535, -1])
def test_weighted_cross_entropy_equals_torch_weighted_mean(ignore):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, 9, generator=g, requires_grad=True)
    targets = torch.randint(0, 5, (2, 7, 9), generator=g)
    targets[:, :2] = ignore
    weight = torch.rand(5, generator=g) + 0.5
    ours = masked_cross_entropy(logits, targets, ignore, weight)
    torch_ce = torch.nn.CrossEntropyLoss(weight=weight, ignore_index=ignore, reduction="mean")(logits, targets)
    assert ours.item() == pytest.approx(torch_ce.item(), rel=1e-6)
    (grad_ours,) = torch.autograd.grad(ours, logits)
    (grad_torch,) = torch.autograd.grad(torch_ce, logits)
    assert torch.allclose(grad_ours, grad_torch, atol=1e-7)


def test_weighted_cross_entropy_all_ignored_is_zero_not_nan():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    targets = torch.full((2, 4, 4), 255)
    loss = masked_cross_entropy(logits, targets, 255, torch.tensor([1.0, 2.0, 3.0]))
    assert loss.item() == 0.0  # torch's weighted "mean" is NaN here
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_weighted_cross_entropy_has_no_data_dependent_operation():
    """No host sync: the weighted CE runs on fake tensors (values unknown), where ``.item()``,
    boolean-mask indexing or ``nonzero`` would raise."""
    from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensor, FakeTensorMode

    with FakeTensorMode():
        logits = torch.randn(2, 3, 2, 2, requires_grad=True)
        targets = torch.randint(0, 3, (2, 4, 4))
        loss = upsampled_cross_entropy(logits, targets, 255, torch.ones(3), align_corners=True)
        loss.backward()
        assert isinstance(loss, FakeTensor) and loss.shape == () and logits.grad.shape == logits.shape
        with pytest.raises(DataDependentOutputException):  # the check itself works
            loss.item()


@pytest.mark.parametrize(
    "weights,match",
    [
        ([1.0, 1.0], r"MODEL\.SEM_SEG_HEAD\.CLASS_WEIGHTS must have one weight per class .*= 3.*got 2: \[1\.0, 1\.0\]"),
        ([1.0, 0.0, 1.0], r"MODEL\.SEM_SEG_HEAD\.CLASS_WEIGHTS must be finite and > 0, got \[0\.0\]"),
        ([1.0, -2.0, 1.0], r"MODEL\.SEM_SEG_HEAD\.CLASS_WEIGHTS must be finite and > 0, got \[-2\.0\]"),
        ([1.0, float("inf"), 1.0], r"MODEL\.SEM_SEG_HEAD\.CLASS_WEIGHTS must be finite and > 0, got \[inf\]"),
        ([1.0, float("nan"), 1.0], r"MODEL\.SEM_SEG_HEAD\.CLASS_WEIGHTS must be finite and > 0, got \[nan\]"),
    ],
)
def test_class_weights_are_checked_naming_the_key(weights, match):
    with pytest.raises(ValueError, match=match):
        check_class_weights(weights, 3)


def test_empty_class_weights_mean_unweighted():
    assert check_class_weights([], 3) is None and check_class_weights(None, 3) is None
    assert check_class_weights([1, 2, 3], 3) == (1.0, 2.0, 3.0)
