"""The ProtoSeg head inside Detectron2's SemanticSegmentor, and its parametric baselines."""
import math

import pytest
import torch
import torch.nn.functional as F

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from protoseg.solver import build_optimizer

from conftest import random_batch, toy_cfg


def build(opts=(), name="protoseg_r18-d8_fcn_toy.yaml", seed=0):
    torch.manual_seed(seed)
    return build_model(toy_cfg(name, opts))


def test_eval_needs_no_labels_is_deterministic_and_leaves_prototypes():
    model = build()
    model.train()
    model(random_batch())  # one training step moves the prototypes
    model.eval()
    protos = model.sem_seg_head.memory.prototypes.clone()
    images = [{"image": x["image"]} for x in random_batch(seed=1)]
    with torch.no_grad():
        a, b = model(images), model(images)
    assert a[0]["sem_seg"].shape == (8, 64, 64)
    assert torch.equal(a[0]["sem_seg"], b[0]["sem_seg"])
    # evaluation with labels present still never clusters nor updates
    with torch.no_grad():
        model(random_batch(seed=2))
    assert torch.equal(model.sem_seg_head.memory.prototypes, protos)


def test_training_step_returns_the_three_losses_and_updates_prototypes():
    model = build()
    model.train()
    before = model.sem_seg_head.memory.prototypes.clone()
    losses = model(random_batch())
    assert set(losses) == {"loss_ce", "loss_ppc", "loss_ppd"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    after = model.sem_seg_head.memory.prototypes
    assert not torch.equal(before, after)
    assert torch.allclose(after.norm(dim=-1), torch.ones(after.shape[:2]), atol=1e-5)
    assert int(model.sem_seg_head.iteration) == 1
    stats = model.sem_seg_head.memory.latest_statistics
    assert set(stats) == {"used_share", "intra_class_cosine"}


def test_prototypes_survive_checkpoint_round_trip(tmp_path):
    model = build()
    model.train()
    for seed in range(3):
        model(random_batch(seed=seed))
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("ckpt")
    fresh = build(seed=123)
    assert not torch.equal(fresh.sem_seg_head.memory.prototypes, model.sem_seg_head.memory.prototypes)
    DetectionCheckpointer(fresh).load(str(tmp_path / "ckpt.pth"))
    assert torch.equal(fresh.sem_seg_head.memory.prototypes, model.sem_seg_head.memory.prototypes)
    assert int(fresh.sem_seg_head.iteration) == 3
    model.eval(), fresh.eval()
    images = [{"image": x["image"]} for x in random_batch(seed=9)]
    with torch.no_grad():
        assert torch.equal(model(images)[0]["sem_seg"], fresh(images)[0]["sem_seg"])


def test_prototypes_are_not_optimised():
    model = build()
    cfg = toy_cfg()
    optimizer = build_optimizer(cfg, model)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(model.sem_seg_head.memory.prototypes) not in in_optimizer
    assert in_optimizer == {id(p) for p in model.parameters() if p.requires_grad}
    assert "sem_seg_head.memory.prototypes" in model.state_dict()


def test_parameter_counts_protoseg_is_baseline_minus_classifier():
    # METHOD.md: ProtoSeg = parametric baseline minus its C-way classifier (paper's param counts),
    # plus the reference's two LayerNorms (features: 2D, class scores: 2C).
    C, D = 8, 64
    proto = sum(p.numel() for p in build().parameters())
    baseline = sum(p.numel() for p in build(name="parametric_r18-d8_fcn_toy.yaml").parameters())
    assert baseline - proto == C * (D + 1) - 2 * D - 2 * C
    k10 = build(["MODEL.PARAMETRIC.NUM_PROTOTYPES", 10], name="parametric_r18-d8_fcn_toy.yaml")
    assert sum(p.numel() for p in k10.parameters()) - baseline == C * 10 * (D + 1) - C * (D + 1)
    # the nonparametric head's learnable parameters do not depend on K
    assert sum(p.numel() for p in build(["MODEL.PROTOSEG.NUM_PROTOTYPES", 20]).parameters()) == proto


@pytest.mark.parametrize("k", [1, 10])
def test_parametric_baseline_trains_a_step(k):
    model = build(["MODEL.PARAMETRIC.NUM_PROTOTYPES", k], name="parametric_r18-d8_fcn_toy.yaml")
    model.train()
    losses = model(random_batch())
    assert set(losses) == {"loss_ce"} and torch.isfinite(losses["loss_ce"])
    model.eval()
    with torch.no_grad():
        assert model([{"image": random_batch()[0]["image"]}])[0]["sem_seg"].shape == (8, 64, 64)


def test_warmup_skips_prototype_learning():
    model = build(["MODEL.PROTOSEG.WARMUP_ITERS", 2])
    model.train()
    protos = model.sem_seg_head.memory.prototypes.clone()
    for seed in range(2):
        losses = model(random_batch(seed=seed))
        assert losses["loss_ppc"].item() == 0.0 and losses["loss_ppd"].item() == 0.0
    assert torch.equal(model.sem_seg_head.memory.prototypes, protos)
    losses = model(random_batch(seed=5))
    assert losses["loss_ppc"].item() > 0
    assert not torch.equal(model.sem_seg_head.memory.prototypes, protos)


def test_sixteen_bit_ignore_value_is_honoured():
    model = build(["MODEL.SEM_SEG_HEAD.IGNORE_VALUE", 65535])
    model.train()
    batch = random_batch(ignore=65535)
    for x in batch:
        x["sem_seg"][:, :8] = 65535
    losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    all_ignored = random_batch(ignore=65535)
    for x in all_ignored:
        x["sem_seg"][:] = 65535
    before = model.sem_seg_head.memory.prototypes.clone()
    losses = model(all_ignored)
    assert all(v.item() == 0.0 for v in losses.values())
    assert torch.equal(model.sem_seg_head.memory.prototypes, before)


def test_training_under_autocast_keeps_prototypes_finite_unit_norm():
    model = build()
    model.train()
    for seed in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = model(random_batch(seed=seed))
        sum(losses.values()).backward()
        assert all(torch.isfinite(v) for v in losses.values())
    protos = model.sem_seg_head.memory.prototypes
    assert protos.dtype == torch.float32 and torch.isfinite(protos).all()
    assert torch.allclose(protos.norm(dim=-1), torch.ones(protos.shape[:2]), atol=1e-5)


@pytest.mark.parametrize("distance", ["euclidean", "huber"])
def test_distance_variants_train(distance):
    model = build(["MODEL.PROTOSEG.DISTANCE", distance])
    model.train()
    losses = model(random_batch())
    assert all(torch.isfinite(v) for v in losses.values())
    assert torch.isfinite(model.sem_seg_head.memory.prototypes).all()


def test_reference_switches_build_and_train():
    model = build([
        "MODEL.PROTOSEG.PROJECTION", "mlp", "MODEL.PROTOSEG.ASSIGNMENT", "gumbel",
        "MODEL.PROTOSEG.CLASS_SCORE_NORM", "temperature", "MODEL.PROTOSEG.UPDATE_FROM_CORRECT_ONLY", False,
        "MODEL.PROTOSEG.PPC_TEMPERATURE", 1.0,
    ])
    model.train()
    losses = model(random_batch())
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("opts", [(), ("MODEL.PROTOSEG.CHUNK_SIZE", 100), ("MODEL.PROTOSEG.ASSIGNMENT", "gumbel"),
                                  ("MODEL.PROTOSEG.SIMILARITY_PRECISION", "bfloat16")])
def test_training_step_of_the_head_has_no_data_dependent_operation(opts):
    """No host synchronisation in the step: the head's training forward and backward
    (similarities, class scores, clustering, update, CE + PPC + PPD) run on fake tensors, which
    carry shapes but no values, so that any value-dependent operation (``.item()``, ``if tensor``,
    boolean-mask indexing, ``nonzero``, ``unique``: each a device-to-host copy on CUDA) raises."""
    from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode

    model = build(opts)
    model.train()
    model(random_batch())  # a real first step: the one-time broadcast of the prototypes
    head = model.sem_seg_head
    batch = random_batch(seed=1)
    images = torch.stack([(x["image"] - model.pixel_mean) / model.pixel_std for x in batch])
    features = model.backbone(images)
    targets = torch.stack([x["sem_seg"] for x in batch])
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake_features = {k: mode.from_tensor(v.detach()).requires_grad_() for k, v in features.items()}
        _, losses = head(fake_features, mode.from_tensor(targets))
        assert {"loss_ce", "loss_ppc", "loss_ppd"} <= set(losses)
        sum(losses.values()).backward()
        with_grad = [k for k, v in fake_features.items() if v.grad is not None]
        assert with_grad and all(fake_features[k].grad.shape == features[k].shape for k in with_grad)
        with pytest.raises(DataDependentOutputException):  # the check itself works
            losses["loss_ce"].item()


# ---- class-weighted CE and align_corners upsampling (MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS,
# ---- UPSAMPLE_ALIGN_CORNERS: the reference code's ce_weight and align_corners=True) -----------------

TOY_WEIGHTS = [0.5, 2.0, 1.0, 1.5, 0.8, 1.2, 0.9, 1.1]  # 8 toy classes
HEAD_CONFIGS = {"protoseg": "protoseg_r18-d8_fcn_toy.yaml", "parametric": "parametric_r18-d8_fcn_toy.yaml"}


def spy_on_scores(head):
    """Record the (B, C, h, w) class scores the head computes in every forward (``training_scores``
    in training, ``class_scores`` at inference) in the returned list."""
    seen, training_scores, class_scores = [], head.training_scores, head.class_scores

    def spy_training(embedding, targets):
        scores, own_losses = training_scores(embedding, targets)
        seen.append(scores.detach())
        return scores, own_losses

    def spy_inference(embedding):
        scores = class_scores(embedding)
        if not head.training:
            seen.append(scores.detach())
        return scores

    head.training_scores, head.class_scores = spy_training, spy_inference
    return seen


def test_weighted_ce_of_the_head_two_pixels_by_hand():
    model = build(["MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS", TOY_WEIGHTS], name=HEAD_CONFIGS["parametric"])
    model.train()
    head = model.sem_seg_head
    # pixel a: class 0 scores 2, the 7 others 0; pixel b: class 1 scores 1, the others 0
    scores = torch.zeros(1, 8, 1, 2)
    scores[0, 0, 0, 0], scores[0, 1, 0, 1] = 2.0, 1.0
    head.training_scores = lambda embedding, targets: (scores, {})
    features = model.backbone(torch.zeros(1, 3, 64, 64))
    _, losses = head(features, torch.tensor([[[0, 1]]]))  # labels of the same 1x2 size
    l_a, l_b = math.log(math.exp(2) + 7) - 2, math.log(math.exp(1) + 7) - 1
    expected = (0.5 * l_a + 2.0 * l_b) / (0.5 + 2.0)
    assert losses["loss_ce"].item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("name", sorted(HEAD_CONFIGS))
def test_weighted_ce_of_every_head_equals_torch_weighted_cross_entropy(name, align_corners):
    model = build([
        "MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS", TOY_WEIGHTS, "MODEL.SEM_SEG_HEAD.UPSAMPLE_ALIGN_CORNERS", align_corners,
    ], name=HEAD_CONFIGS[name])
    model.train()
    seen = spy_on_scores(model.sem_seg_head)
    batch = random_batch()
    losses = model(batch)
    targets = torch.stack([x["sem_seg"] for x in batch])
    up = F.interpolate(seen[0], size=(64, 64), mode="bilinear", align_corners=align_corners)
    expected = torch.nn.CrossEntropyLoss(weight=torch.tensor(TOY_WEIGHTS), ignore_index=255)(up, targets)
    assert losses["loss_ce"].item() == pytest.approx(expected.item(), rel=1e-5)
    unweighted = torch.nn.CrossEntropyLoss(ignore_index=255)(up, targets)
    assert abs(losses["loss_ce"].item() - unweighted.item()) > 1e-4  # the weights matter


@pytest.mark.parametrize("name", sorted(HEAD_CONFIGS))
def test_wrong_number_of_class_weights_raises_naming_the_key(name):
    with pytest.raises(ValueError, match=r"MODEL\.SEM_SEG_HEAD\.CLASS_WEIGHTS = .*NUM_CLASSES \(8\)"):
        build(["MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS", [1.0, 1.0, 1.0]], name=HEAD_CONFIGS[name])
    with pytest.raises(ValueError, match=r"MODEL\.SEM_SEG_HEAD\.CLASS_WEIGHTS = .*> 0"):
        build(["MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS", [1.0] * 7 + [0.0]], name=HEAD_CONFIGS[name])


def test_class_weights_are_not_in_checkpoints_and_follow_the_module():
    model = build(["MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS", TOY_WEIGHTS])
    assert torch.equal(model.sem_seg_head.class_weights, torch.tensor(TOY_WEIGHTS))
    assert not any("class_weights" in k for k in model.state_dict())
    assert build().sem_seg_head.class_weights is None  # default: unweighted
    assert model.to(torch.float64).sem_seg_head.class_weights.dtype == torch.float64


def test_auxiliary_ce_uses_the_class_weights_and_align_corners():
    model = build([
        "MODEL.RESNETS.OUT_FEATURES", ["res4", "res5"], "MODEL.SEM_SEG_HEAD.AUX_IN_FEATURE", "res4",
        "MODEL.SEM_SEG_HEAD.AUX_LOSS_WEIGHT", 0.4, "MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS", TOY_WEIGHTS,
        "MODEL.SEM_SEG_HEAD.UPSAMPLE_ALIGN_CORNERS", True,
    ], name=HEAD_CONFIGS["parametric"])
    model.train()
    aux_logits = []
    model.sem_seg_head.aux_head.classifier.register_forward_hook(lambda m, i, out: aux_logits.append(out.detach()))
    batch = random_batch()
    losses = model(batch)
    targets = torch.stack([x["sem_seg"] for x in batch])
    up = F.interpolate(aux_logits[0], size=(64, 64), mode="bilinear", align_corners=True)
    expected = 0.4 * torch.nn.CrossEntropyLoss(weight=torch.tensor(TOY_WEIGHTS), ignore_index=255)(up, targets)
    assert losses["loss_aux"].item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("name", sorted(HEAD_CONFIGS))
def test_inference_upsampling_with_align_corners(name):
    outputs, scores = {}, {}
    images = [{"image": x["image"]} for x in random_batch(n=1)]
    for align_corners in (False, True):
        model = build(["MODEL.SEM_SEG_HEAD.UPSAMPLE_ALIGN_CORNERS", align_corners], name=HEAD_CONFIGS[name])
        model.eval()
        seen = spy_on_scores(model.sem_seg_head)
        with torch.no_grad():
            outputs[align_corners] = model(images)[0]["sem_seg"]  # (8, 64, 64), whole-image protocol
        scores[align_corners] = seen[0]
    assert torch.equal(scores[False], scores[True])  # same seed, same model: only the upsampling differs
    s = scores[True]
    assert s.shape[-2:] == (8, 8)  # stride 8
    aligned = F.interpolate(s, size=(64, 64), mode="bilinear", align_corners=True)[0]
    assert torch.allclose(outputs[True], aligned, atol=1e-6)
    # align_corners=True: the corner outputs are the corner scores themselves
    for y, x in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
        assert torch.allclose(outputs[True][:, y, x], s[0, :, y, x], atol=1e-6)
    half_pixel = F.interpolate(s, scale_factor=8, mode="bilinear", align_corners=False)[0]
    assert torch.allclose(outputs[False], half_pixel, atol=1e-6)
    assert not torch.allclose(outputs[True], outputs[False], atol=1e-3)


def test_weighted_aligned_training_step_has_no_data_dependent_operation():
    test_training_step_of_the_head_has_no_data_dependent_operation(
        ("MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS", TOY_WEIGHTS, "MODEL.SEM_SEG_HEAD.UPSAMPLE_ALIGN_CORNERS", True)
    )
