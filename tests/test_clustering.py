"""sinkhorn_knopp against Algorithm 1 of the paper, run literally on each class alone."""
import math

import numpy as np
import pytest
import torch

from protoseg.modeling import sinkhorn_knopp


def algorithm1(scores: np.ndarray, iters: int = 3, kappa: float = 0.05) -> np.ndarray:
    """The paper's Algorithm 1 for one class, line by line, in float64.
    scores: (n, K) -> Q (n, K). (`L /= exp(L/kappa)` in the paper is a typo for `L = exp(L/kappa)`.)"""
    L = np.exp(scores / kappa).T  # K x n
    L = L / L.sum()
    K, n = L.shape
    for _ in range(iters):
        L = L / L.sum(axis=1, keepdims=True)
        L = L / K
        L = L / L.sum(axis=0, keepdims=True)
        L = L / n
    L = L * n
    return L.T


def test_symmetric_case_by_hand():
    # exp(s/kappa) = [[e^2, 1], [1, e^2]] with kappa = 0.5 already has equal row and column sums,
    # so Sinkhorn keeps it: Q[0] = [e^2, 1] / (e^2 + 1).
    scores = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    q = sinkhorn_knopp(scores, torch.tensor([0, 0]), num_classes=1, kappa=0.5)
    e2 = math.exp(2.0)
    expected = torch.tensor([[e2 / (e2 + 1), 1 / (e2 + 1)], [1 / (e2 + 1), e2 / (e2 + 1)]])
    assert torch.allclose(q, expected, atol=1e-6)
    assert q[0, 0].item() == pytest.approx(0.880797, abs=1e-6)


def test_equals_algorithm1_per_class_with_mixed_classes():
    g = torch.Generator().manual_seed(0)
    n, K, C = 300, 5, 7
    scores = torch.rand(n, K, generator=g) * 2 - 1
    labels = torch.randint(0, C, (n,), generator=g)
    labels[labels == 3] = 4  # class 3 absent
    q = sinkhorn_knopp(scores, labels, num_classes=C, iters=3, kappa=0.05)
    assert q.dtype == torch.float32 and q.shape == (n, K)
    for c in range(C):
        sel = labels == c
        if sel.sum() == 0:
            continue
        expected = algorithm1(scores[sel].double().numpy())
        np.testing.assert_allclose(q[sel].numpy(), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(q.sum(1).numpy(), np.ones(n), atol=1e-5)


def test_classes_do_not_interact():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(40, 4, generator=g)
    b = torch.rand(60, 4, generator=g)
    alone = sinkhorn_knopp(a, torch.zeros(40, dtype=torch.long), num_classes=2)
    together = sinkhorn_knopp(torch.cat([a, b]), torch.cat([torch.zeros(40), torch.ones(60)]).long(), num_classes=2)
    assert torch.allclose(alone, together[:40], atol=1e-6)


def test_equipartition_with_many_iterations():
    # Eq. 8's constraint: each prototype gets ~n/K of the class's mass once Sinkhorn has converged.
    g = torch.Generator().manual_seed(2)
    scores = torch.randn(200, 4, generator=g).mul(0.3).clamp(-1, 1)
    q = sinkhorn_knopp(scores, torch.zeros(200, dtype=torch.long), num_classes=1, iters=100)
    np.testing.assert_allclose(q.sum(0).numpy(), np.full(4, 50.0), rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_do_not_overflow(dtype):
    # exp(1 / 0.05) = 4.9e8 overflows float16 (max 65504): clustering must run in float32.
    scores = torch.tensor([[1.0, 0.9, -1.0], [0.95, 1.0, 0.2], [-0.5, 0.1, 1.0]], dtype=dtype)
    labels = torch.zeros(3, dtype=torch.long)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = sinkhorn_knopp(scores, labels, num_classes=1)
    assert q.dtype == torch.float32 and torch.isfinite(q).all()
    expected = algorithm1(scores.double().numpy())
    np.testing.assert_allclose(q.numpy(), expected, rtol=1e-4, atol=1e-6)


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"scores \(n, K\)"):
        sinkhorn_knopp(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long), num_classes=1)
