"""The fused, memory-bounded pixel-prototype scores against plain autograd on the full matrix."""
import pytest
import torch
import torch.nn.functional as F

from protoseg.modeling.prototype_scores import prototype_scores

from conftest import random_batch, toy_cfg


def reference(x, protos, labels, tau):
    """Autograd on the full (N, C*K) similarity matrix."""
    C, K, D = protos.shape
    S = x @ protos.reshape(C * K, D).t()
    view = S.view(-1, C, K)
    own = view[torch.arange(x.shape[0]), labels.clamp(0, C - 1)]
    return view.max(2).values, own, torch.logsumexp(S / tau, dim=1)


@pytest.mark.parametrize("chunk_size", [0, 7, 64])
def test_fused_equals_autograd_values_and_gradients(chunk_size):
    torch.manual_seed(0)
    N, C, K, D = 50, 6, 4, 8
    protos = F.normalize(torch.randn(C, K, D), dim=-1)
    labels = torch.randint(0, C, (N,))
    labels[:5] = 255  # ignored pixels
    weights = [torch.randn(N, C), torch.randn(N, K), torch.randn(N)]
    results = []
    for fn in (reference, lambda x, p, l, t: prototype_scores(x, p, l, t, chunk_size=chunk_size)):
        x = F.normalize(torch.randn(N, D, generator=torch.Generator().manual_seed(1)), dim=1).requires_grad_()
        outs = fn(x, protos, labels, 0.1)
        sum((o * w).sum() for o, w in zip(outs, weights)).backward()
        results.append([o.detach() for o in outs] + [x.grad])
    for got, expected in zip(results[1], results[0]):
        assert torch.allclose(got, expected, atol=2e-5), (got - expected).abs().max()


def test_prototypes_can_be_updated_before_the_backward():
    protos = F.normalize(torch.randn(3, 2, 4), dim=-1)
    x = F.normalize(torch.randn(10, 4), dim=1).requires_grad_()
    outs = prototype_scores(x, protos, torch.randint(0, 3, (10,)))
    protos.mul_(2.0)  # the memory update writes its buffer in place
    sum(o.sum() for o in outs).backward()
    assert torch.isfinite(x.grad).all()


def test_chunked_head_trains_like_unchunked():
    from detectron2.modeling import build_model

    results = []
    for chunk in (0, 100):
        torch.manual_seed(0)
        model = build_model(toy_cfg(opts=["MODEL.PROTOSEG.CHUNK_SIZE", chunk, "MODEL.SEM_SEG_HEAD.DROPOUT", 0.0]))
        model.train()
        losses = model(random_batch())
        sum(losses.values()).backward()
        grad = model.sem_seg_head.decoder.fuse.weight.grad.clone()
        results.append(({k: v.item() for k, v in losses.items()}, grad, model.sem_seg_head.memory.prototypes.clone()))
    (l0, g0, p0), (l1, g1, p1) = results
    assert l0 == pytest.approx(l1, rel=1e-5)
    assert torch.allclose(g0, g1, atol=1e-6, rtol=1e-4)
    assert torch.allclose(p0, p1, atol=1e-6)
