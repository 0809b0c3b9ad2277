"""One step of prototype learning through ``PrototypeMemory.learn`` (and the head's class-score
normalisation), on small hand-checkable numbers: the assignment, the update rule and the losses
that the step returns, each against the paper's equations computed independently here."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detectron2.modeling import build_model

from protoseg.modeling import PrototypeMemory

from conftest import toy_cfg
from test_clustering import algorithm1


def identity(scores):
    return scores


def unit(*v):
    return F.normalize(torch.tensor(v, dtype=torch.float64), dim=-1).float()


def memory_with(prototypes, **kw) -> PrototypeMemory:
    """A memory holding ``prototypes`` (C, K, D)."""
    C, K, D = prototypes.shape
    memory = PrototypeMemory(C, K, D, **kw)
    memory.prototypes.copy_(prototypes)
    return memory


@pytest.mark.parametrize("distance", ["euclidean", "huber"])
def test_far_pixels_are_assigned_by_the_tempered_transport_plan(distance):
    """Unnormalised embeddings 9-10 units from their class's prototypes: exp(similarity / kappa)
    is below 1e-170, so the per-class shift must be taken at the same temperature 1/kappa
    (``exp((s - max) / kappa)``) for the plan to exist in float32. Targets = argmax of the paper's
    Algorithm 1 on each class, computed in float64."""
    protos = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [[-5.0, -5.0], [-6.0, -5.0], [-5.0, -6.0]]])
    memory = memory_with(protos, distance=distance, momentum=0.5)
    x = torch.tensor([[10.0, 0.0], [0.0, 10.0], [-7.0, -7.5], [5.0, 5.0], [4.0, -9.0], [-14.0, -5.0]])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    learning = memory.learn(x, labels, identity)

    sim = -torch.cdist(x.double(), protos.double().view(-1, 2))  # (n, C*K) euclidean similarity
    if distance == "huber":
        sim = -0.1 * (torch.sqrt(sim**2 / 0.1**2 + 1) - 1)
    expected = []
    for c in range(2):
        rows = (labels == c).nonzero().flatten()
        plan = algorithm1(sim[rows, c * 3 : c * 3 + 3].numpy())
        expected += (c * 3 + plan.argmax(1)).tolist()
    assert expected == [1, 2, 0, 3, 5, 4]  # every prototype of both classes used
    assert learning.targets.tolist() == expected


def test_update_from_correct_only_is_the_default_and_reads_the_class_scores():
    """Class 0 has one pixel the model classifies correctly and one it gives to class 1; with
    mu = 0 a prototype becomes the l2-normalised sum of its update pixels."""
    protos = torch.stack([unit(1, 0), unit(0, 1)])[:, None]  # (C=2, K=1, D=2)
    x = torch.stack([unit(1, 0.2), unit(0.2, 1), unit(0.1, 1)])
    labels = torch.tensor([0, 0, 1])  # pixel 1 is nearer to class 1: misclassified

    cfg = toy_cfg(opts=["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 2, "MODEL.PROTOSEG.NUM_PROTOTYPES", 1,
                        "MODEL.PROTOSEG.MOMENTUM", 0.0])
    default = PrototypeMemory(cfg, dim=2)
    default.prototypes.copy_(protos)
    counts = default.learn(x, labels, identity).pixel_counts
    assert counts.flatten().tolist() == [1, 1]
    assert torch.allclose(default.prototypes[0, 0], x[0], atol=1e-6)
    assert torch.allclose(default.prototypes[1, 0], x[2], atol=1e-6)

    every_pixel = memory_with(protos, momentum=0.0, update_from_correct_only=False)
    counts = every_pixel.learn(x, labels, identity).pixel_counts
    assert counts.flatten().tolist() == [2, 1]
    assert torch.allclose(every_pixel.prototypes[0, 0], F.normalize(x[0] + x[1], dim=0), atol=1e-6)


def test_ppc_and_ppd_of_the_step_are_eq11_and_eq12():
    """Four pixels, each next to one of the 4 prototypes (C = 2, K = 2), so that the clustering
    gives every pixel its nearest prototype (target 0 included), and one ignored pixel. Eq. 11:
    -log softmax(S_i / tau)[t_i], Eq. 12: (1 - S_i[t_i])^2, each a mean over the labelled pixels,
    times lambda_1 and lambda_2."""
    protos = torch.stack([torch.stack([unit(1, 0), unit(0, 1)]), torch.stack([unit(-1, 0), unit(0, -1)])])
    memory = memory_with(protos, ppc_temperature=0.5, ppc_weight=0.5, ppd_weight=0.25)
    x = torch.stack([unit(1, 0.3), unit(0.2, 1), unit(-1, -0.4), unit(-0.1, -1), unit(1, 1)])
    labels = torch.tensor([0, 0, 1, 1, 255])
    learning = memory.learn(x, labels, identity)
    assert learning.targets.tolist() == [0, 1, 2, 3, -1]

    targets = torch.tensor([0, 1, 2, 3])
    sim = x[:4].double() @ protos.double().view(4, 2).t()  # (n, C*K), before the update
    ppc = -torch.log_softmax(sim / 0.5, dim=1).gather(1, targets[:, None]).mean()
    ppd = ((1 - sim.gather(1, targets[:, None])) ** 2).mean()
    assert learning.losses["loss_ppc"].item() == pytest.approx(0.5 * ppc.item(), rel=1e-5)
    assert learning.losses["loss_ppd"].item() == pytest.approx(0.25 * ppd.item(), rel=1e-5)


@pytest.mark.parametrize("distance", ["euclidean", "huber"])
def test_unnormalised_distances_move_the_prototype_towards_the_pixel_mean(distance):
    """Eq. 14 without the sphere: p <- mu p + (1 - mu) mean of the assigned pixels."""
    memory = memory_with(torch.zeros(1, 1, 2), distance=distance, momentum=0.5)
    x = torch.tensor([[2.0, 0.0], [0.0, 4.0], [1.0, 2.0]])  # mean (1, 2)
    memory.learn(x, torch.zeros(3, dtype=torch.long), identity)
    assert torch.allclose(memory.prototypes[0, 0], torch.tensor([0.5, 1.0]), atol=1e-6)


def test_class_score_temperature_divides_the_nearest_prototype_similarity():
    """``CLASS_SCORE_NORM temperature``: the head's logits are max_k x . p_{c,k} / T (Eq. 6 over T)."""
    cfg = toy_cfg(opts=["MODEL.PROTOSEG.CLASS_SCORE_NORM", "temperature",
                        "MODEL.PROTOSEG.CLASS_SCORE_TEMPERATURE", 0.25])
    head = build_model(cfg).sem_seg_head
    memory = head.memory
    torch.manual_seed(0)
    x = F.normalize(torch.randn(20, memory.dim), dim=1)
    labels = torch.randint(0, memory.num_classes, (20,))
    protos = memory.prototypes.double()  # before the step's update
    logits = memory.learn(x, labels, head.score_norm).class_logits
    nearest = (x.double() @ protos.view(-1, memory.dim).t()).view(20, memory.num_classes, -1).amax(-1)
    assert nearest.abs().max() > 0.1
    np.testing.assert_allclose(logits.detach().numpy(), (nearest / 0.25).numpy(), atol=1e-5)
