"""PPC (Eq. 11), PPD (Eq. 12) and the masked CE against hand-computed values."""
import math

import pytest
import torch

from protoseg.modeling import masked_cross_entropy, ppc_loss, ppd_loss


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
