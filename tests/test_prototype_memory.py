"""PrototypeMemory: assignment targets, Eq. 14 momentum update, statistics, collapse behaviour."""
import pytest
import torch
import torch.nn.functional as F

from protoseg.modeling import PrototypeMemory


def unit(*v):
    return F.normalize(torch.tensor(v, dtype=torch.float32), dim=-1)


def make_memory(C=3, K=2, D=2, **kw):
    mem = PrototypeMemory(C, K, D, **kw)
    return mem


def test_initial_prototypes_are_unit_vectors_buffers():
    mem = make_memory(5, 4, 16)
    assert "prototypes" in dict(mem.named_buffers())
    assert list(mem.parameters()) == []
    assert torch.allclose(mem.prototypes.norm(dim=-1), torch.ones(5, 4), atol=1e-6)


def test_momentum_update_eq14_by_hand():
    mem = make_memory(C=3, K=2, D=2, momentum=0.9)
    protos = torch.stack([
        torch.stack([unit(1, 0), unit(0, 1)]),
        torch.stack([unit(1, 1), unit(1, -1)]),
        torch.stack([unit(-1, 0), unit(0, -1)]),
    ])
    mem.prototypes.copy_(protos)
    x = torch.stack([unit(1, 0.2), unit(1, -0.2), unit(0.3, 1), unit(5, 5), unit(-1, 0.1)])
    # pixels 0, 1 -> (class 0, proto 0); pixel 2 -> (0, 1); pixel 3 ignored (-1); pixel 4 -> (2, 0)
    update_targets = torch.tensor([0, 0, 1, -1, 4])
    counts = mem.update(x, update_targets)

    m00 = F.normalize(x[0] + x[1], dim=0)  # = (1, 0)
    expected00 = F.normalize(0.9 * protos[0, 0] + 0.1 * m00, dim=0)
    expected01 = F.normalize(0.9 * protos[0, 1] + 0.1 * x[2], dim=0)
    expected20 = F.normalize(0.9 * protos[2, 0] + 0.1 * x[4], dim=0)
    assert torch.allclose(mem.prototypes[0, 0], expected00, atol=1e-6)
    assert torch.allclose(mem.prototypes[0, 1], expected01, atol=1e-6)
    assert torch.allclose(mem.prototypes[2, 0], expected20, atol=1e-6)
    # no pixel: unchanged (prototype (2, 1); class 1 absent; the ignored pixel changed nothing)
    assert torch.equal(mem.prototypes[2, 1], protos[2, 1])
    assert torch.equal(mem.prototypes[1], protos[1])
    # classes 0 and 2 had update pixels: 3 of their 4 prototypes received some
    assert PrototypeMemory.used_share(counts).item() == pytest.approx(0.75)
    assert torch.allclose(mem.prototypes.norm(dim=-1), torch.ones(3, 2), atol=1e-6)


def test_zero_momentum_replaces_by_normalised_mean():
    mem = make_memory(C=1, K=1, D=3, momentum=0.0)
    x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    mem.update(x, torch.tensor([0, 0]))
    assert torch.allclose(mem.prototypes[0, 0], unit(1, 1, 0), atol=1e-6)


def test_non_finite_embeddings_never_reach_the_buffer():
    mem = make_memory(C=2, K=2, D=4, momentum=0.5)
    before = mem.prototypes.clone()
    x = torch.full((3, 4), float("nan"))
    x[2] = torch.tensor([float("inf"), 0, 0, 0])
    mem.update(x, torch.tensor([0, 1, 2]))
    assert torch.equal(mem.prototypes, before)


def test_assign_targets_and_ignore():
    torch.manual_seed(0)
    C, K, D = 30, 10, 8  # C*K = 300 > 255
    mem = make_memory(C, K, D)
    x = F.normalize(torch.randn(50, D), dim=1)
    labels = torch.randint(0, C, (50,))
    labels[:5] = 255  # dataset ignore value
    labels[5] = 25    # 25 * 10 + k covers 255
    targets, update_targets = mem.assign(mem.own_class_scores(mem.similarity(x), labels), labels)
    assert (targets[:5] == -1).all()
    valid = labels < C
    assert ((targets[valid] // K) == labels[valid]).all()
    assert torch.equal(targets, update_targets)
    # argmax of the transport plan: each pixel goes to one of its own class's prototypes
    assert ((targets[valid] >= 0) & (targets[valid] < C * K)).all()


def test_single_prototype_is_class_mean():
    mem = make_memory(C=2, K=1, D=2, momentum=0.0)
    x = torch.stack([unit(1, 0), unit(0, 1), unit(-1, 0)])
    labels = torch.tensor([0, 0, 1])
    targets, _ = mem.assign(mem.own_class_scores(mem.similarity(x), labels), labels)
    assert targets.tolist() == [0, 0, 1]
    mem.update(x, targets)
    assert torch.allclose(mem.prototypes[0, 0], unit(1, 1), atol=1e-6)
    assert torch.allclose(mem.prototypes[1, 0], unit(-1, 0), atol=1e-6)


def simulate(assignment: str, steps: int = 150) -> float:
    """One class whose pixels come from 4 well-separated modes; K = 4 prototypes, random init."""
    torch.manual_seed(0)
    D, K = 16, 4
    modes = F.normalize(torch.randn(K, D), dim=1)
    mem = PrototypeMemory(1, K, D, momentum=0.9, assignment=assignment)
    for _ in range(steps):
        which = torch.randint(0, K, (256,))
        x = F.normalize(modes[which] + 0.1 * torch.randn(256, D), dim=1)
        labels = torch.zeros(256, dtype=torch.long)
        _, update_targets = mem.assign(mem.own_class_scores(mem.similarity(x), labels), labels)
        mem.update(x, update_targets)
    return mem.intra_class_cosine().item()


def test_argmax_keeps_prototypes_diverse_gumbel_collapses():
    # METHOD.md: the reference's Gumbel sample of the plan drives a class's prototypes together
    # (reference issue #15); the argmax keeps them apart.
    argmax_cos, gumbel_cos = simulate("argmax"), simulate("gumbel")
    assert argmax_cos < 0.3
    assert gumbel_cos > argmax_cos + 0.3


def test_rejects_bad_switches():
    with pytest.raises(ValueError, match="DISTANCE"):
        PrototypeMemory(2, 2, 2, distance="manhattan")
    with pytest.raises(ValueError, match="ASSIGNMENT"):
        PrototypeMemory(2, 2, 2, assignment="soft")


def test_tiny_classes_and_more_prototypes_than_pixels():
    # a class with one pixel, and K = 5 prototypes for a class of 3 pixels
    torch.manual_seed(0)
    mem = make_memory(C=3, K=5, D=4, momentum=0.5)
    x = F.normalize(torch.randn(4, 4), dim=1)
    labels = torch.tensor([0, 1, 1, 1])
    targets, update_targets = mem.assign(mem.own_class_scores(mem.similarity(x), labels), labels)
    assert ((targets // 5) == labels).all()
    counts = mem.update(x, update_targets)
    assert torch.isfinite(mem.prototypes).all()
    assert torch.allclose(mem.prototypes.norm(dim=-1), torch.ones(3, 5), atol=1e-6)
    # class 0: 1 of 5 prototypes used; class 1: equipartition spreads its 3 pixels over 3 of 5
    assert PrototypeMemory.used_share(counts).item() == pytest.approx(0.4)
