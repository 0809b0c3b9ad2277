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


@pytest.mark.parametrize("blocked", [False, True])
def test_the_class_score_gradient_goes_to_the_first_of_tied_prototypes(monkeypatch, blocked):
    """The class maximum's index (torch.max, or for many classes on CPU the blocked form, here in
    blocks of 3 rows); with tied prototypes the gradient of the class score goes to the first, as
    the class-major torch.max's does."""
    import protoseg.modeling.prototype_scores as ps

    if blocked:
        monkeypatch.setattr(ps, "_ARGMAX_BLOCK_ELEMENTS", 3 * 4 * 5)
        monkeypatch.setattr(ps, "_MIN_CLASSES_BLOCKED_ARGMAX", 1)
    torch.manual_seed(0)
    C, K, D, N = 5, 4, 8, 11
    protos = F.normalize(torch.randn(C, K, D), dim=-1)
    protos[:, 2] = protos[:, 1]  # prototypes 1 and 2 of every class are identical
    x = F.normalize(torch.randn(N, D), dim=1).requires_grad_()
    scores, _, _ = prototype_scores(x, protos, torch.zeros(N, dtype=torch.long))
    weights = torch.randn(N, C)
    (scores * weights).sum().backward()
    sims = x.detach() @ protos.reshape(C * K, D).t()
    values, first = sims.view(N, C, K).max(2)
    assert torch.equal(scores.detach(), values)
    expected = (weights[:, :, None] * F.one_hot(first, K)).reshape(N, C * K) @ protos.reshape(C * K, D)
    assert torch.allclose(x.grad, expected, atol=1e-6)


def test_a_second_backward_recomputes_the_consumed_buffer():
    """The unchunked backward reuses the forward's buffer in place; retain_graph still works."""
    torch.manual_seed(0)
    protos = F.normalize(torch.randn(4, 3, 6), dim=-1)
    x = F.normalize(torch.randn(20, 6), dim=1).requires_grad_()
    scores, own, lse = prototype_scores(x, protos, torch.randint(0, 4, (20,)))
    loss = scores.sum() + own.sum() + lse.sum()
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    x.grad = None
    loss.backward()
    assert torch.allclose(x.grad, first, atol=1e-6)


@pytest.mark.parametrize("distance", ["cosine", "euclidean", "huber"])
@pytest.mark.parametrize("chunk_size", [0, 7, 30])
def test_nearest_class_scores_equal_the_max_over_the_class_major_similarities(distance, chunk_size):
    from protoseg.modeling import PrototypeMemory

    torch.manual_seed(0)
    memory = PrototypeMemory(7, 3, 5, distance=distance)
    x = torch.randn(30, 5)
    expected = memory.class_scores(memory.similarity(x))
    assert torch.allclose(memory.nearest_class_scores(x, chunk_size), expected, atol=1e-6)


def test_chunked_nearest_class_scores_pass_the_same_gradient():
    """Used with gradient during the warm-up (CE only): chunks must not cut the graph."""
    from protoseg.modeling.prototype_scores import nearest_prototype_scores

    torch.manual_seed(0)
    protos = F.normalize(torch.randn(6, 4, 8), dim=-1)
    weights = torch.randn(25, 6)
    grads = []
    for chunk_size in (0, 10):
        x = F.normalize(torch.randn(25, 8, generator=torch.Generator().manual_seed(1)), dim=1).requires_grad_()
        (nearest_prototype_scores(x, protos, chunk_size=chunk_size) * weights).sum().backward()
        grads.append(x.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-6) and grads[0].abs().sum() > 0
