"""The Triton prototype-score kernels (modeling/prototypes/triton_scores.py) against the fused
PyTorch implementation (scores.py), values and gradients, under the Triton interpreter on CPU.

Small shapes: the interpreter runs each block operation in NumPy. Blocks of 16 make the small
problems span several pixel, class and channel tiles, with ragged last tiles.
"""
import importlib
import importlib.util
import sys

import pytest
import torch
import torch.nn.functional as F

from protoseg.modeling.prototypes.scores import prototype_scores

MODULE = "protoseg.modeling.prototypes.triton_scores"
needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed (pip install triton)"
)
SMALL_BLOCKS = (16, 16, 16)


@pytest.fixture(scope="module")
def kernels():
    """The module, and the device its kernels run on here: CUDA, or the CPU under the interpreter
    (tests/conftest.py sets TRITON_INTERPRET=1 on machines without CUDA before triton is imported)."""
    module = importlib.import_module(MODULE)
    if module._interpreting():
        device = "cpu"
        from triton.runtime.interpreter import InterpretedFunction

        assert isinstance(module._scores_fwd_kernel, InterpretedFunction), (
            "TRITON_INTERPRET=1 was set after triton was imported: set it before (tests/conftest.py does)"
        )
    else:
        assert torch.cuda.is_available(), "no CUDA and TRITON_INTERPRET is not set (tests/conftest.py sets it)"
        device = "cuda"
    return module, device


def _unit(*shape, seed):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _values_and_grad(fn, x, weights):
    """fn(x) -> 3 outputs; their values and the gradient of sum_o (o * w_o) with respect to x."""
    x = x.clone().requires_grad_()
    outs = fn(x)
    loss = sum((o * w).sum() for o, w in zip(outs, weights) if w is not None)
    (grad,) = torch.autograd.grad(loss, x)
    return [o.detach().cpu() for o in outs] + [grad.cpu()]


def _compare(kernels, N, C, K, D, blocks, precision="float32", weights_of=(0, 1, 2), seed=0):
    module, device = kernels
    protos = _unit(C, K, D, seed=seed).to(device)
    x = _unit(N, D, seed=seed + 1).to(device)
    g = torch.Generator().manual_seed(seed + 2)
    labels = torch.randint(0, C, (N,), generator=g)
    labels[::7] = 255  # ignored pixels: clamped like prototype_scores does
    labels = labels.to(device)
    shapes = [(N, C), (N, K), (N,)]
    weights = [torch.randn(s, generator=g).to(device) if i in weights_of else None for i, s in enumerate(shapes)]
    expected = _values_and_grad(lambda v: prototype_scores(v, protos, labels, 0.1, precision=precision), x, weights)
    got = _values_and_grad(
        lambda v: module.triton_prototype_scores(v, protos, labels, 0.1, precision=precision, blocks=blocks),
        x,
        weights,
    )
    for name, a, b in zip(("scores", "own", "lse", "grad_x"), got, expected):
        assert a.shape == b.shape and a.dtype == torch.float32, name
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5), (name, (a - b).abs().max().item())


@needs_triton
@pytest.mark.parametrize(
    "N, C, K, D, blocks",
    [
        (37, 19, 3, 24, SMALL_BLOCKS),  # ragged pixel, class and channel tiles; D not a power of two
        (32, 16, 1, 16, SMALL_BLOCKS),  # K = 1; everything a multiple of the blocks
        (20, 5, 4, 8, None),  # the default blocks: one tile, mostly masked
        (9, 33, 2, 40, (16, 32, 32)),  # unequal blocks
    ],
)
def test_values_and_gradient_equal_the_fused_pytorch_scores(kernels, N, C, K, D, blocks):
    _compare(kernels, N, C, K, D, blocks)


@needs_triton
@pytest.mark.parametrize("output", [0, 1, 2])
def test_gradient_of_each_output_alone(kernels, output):
    _compare(kernels, 21, 18, 3, 20, SMALL_BLOCKS, weights_of=(output,), seed=3)


@needs_triton
@pytest.mark.parametrize("precision", ["tf32", "bfloat16"])
def test_precisions_equal_the_fused_pytorch_scores(kernels, precision):
    """"bfloat16": both multiply bfloat16 values and accumulate in float32. "tf32": on CPU float32;
    on CUDA both round to TF32 (the products differ by more than the tolerance: not compared)."""
    if precision == "tf32" and kernels[1] == "cuda":
        pytest.skip("TF32 products of cuBLAS and Triton differ beyond float32 tolerances")
    _compare(kernels, 21, 18, 3, 20, SMALL_BLOCKS, precision=precision, seed=5)


@needs_triton
def test_exact_ties_take_the_first_prototype_like_torch_max(kernels):
    """Prototypes 0, 1 and 2 of class 0 have exactly the same similarity to x = e_0 (products
    with zeros are exact); the class score's gradient must go to prototype 0 only."""
    module, device = kernels
    N, D = 17, 20
    s = 2 ** -0.5
    protos = torch.zeros(2, 3, D)
    protos[0, 0, [0, 1]] = s
    protos[0, 1, [0, 2]] = torch.tensor([s, -s])
    protos[0, 2, [0, 3]] = s
    protos[1] = _unit(3, D, seed=7)
    x = torch.zeros(N, D)
    x[:, 0] = 1.0
    labels = torch.zeros(N, dtype=torch.long)
    protos, x, labels = protos.to(device), x.to(device), labels.to(device)
    weights = [torch.tensor([1.0, 0.0], device=device).expand(N, 2), None, None]
    got = _values_and_grad(
        lambda v: module.triton_prototype_scores(v, protos, labels, 0.1, blocks=SMALL_BLOCKS), x, weights
    )
    expected = _values_and_grad(lambda v: prototype_scores(v, protos, labels, 0.1), x, weights)
    assert torch.equal(got[0][:, 0], torch.full((N,), s))
    assert torch.equal(got[3], protos[0, 0].cpu().expand(N, D))
    for a, b in zip(got, expected):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


@needs_triton
def test_no_pixels(kernels):
    module, device = kernels
    x = torch.zeros(0, 8, device=device, requires_grad=True)
    protos = _unit(3, 2, 8, seed=0).to(device)
    scores, own, lse = module.triton_prototype_scores(x, protos, torch.zeros(0, dtype=torch.long, device=device))
    assert scores.shape == (0, 3) and own.shape == (0, 2) and lse.shape == (0,)
    (scores.sum() + own.sum() + lse.sum()).backward()
    assert x.grad.shape == (0, 8)


@needs_triton
def test_cpu_tensors_without_the_interpreter_are_refused(kernels, monkeypatch):
    module, _ = kernels
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        module.triton_prototype_scores(_unit(4, 8, seed=0), _unit(3, 2, 8, seed=1), torch.zeros(4, dtype=torch.long))


def test_the_module_imports_without_triton(monkeypatch):
    """A second copy of the module, loaded while ``import triton`` fails."""
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` raise ImportError
    monkeypatch.setitem(sys.modules, "triton.language", None)
    real = importlib.util.find_spec(MODULE)
    spec = importlib.util.spec_from_file_location(MODULE + "_without_triton", real.origin)
    copy = importlib.util.module_from_spec(spec)
    copy.__package__ = MODULE.rpartition(".")[0]  # its relative imports (.scores)
    spec.loader.exec_module(copy)
    assert not copy.triton_available()
    with pytest.raises(RuntimeError, match="triton"):
        copy.triton_prototype_scores(torch.zeros(2, 4), torch.zeros(3, 1, 4), torch.zeros(2, dtype=torch.long))


@needs_triton
def test_a_training_step_with_the_triton_kernel_equals_the_torch_one(kernels, toy_dataset, tmp_path, monkeypatch):
    """MODEL.PROTOSEG.SCORES_KERNEL triton through train_net's Trainer: two steps of the toy model
    from the same seed give the losses, gradients and prototypes of the "torch" kernel."""
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.events import EventStorage

    from protoseg.engine import Trainer

    from conftest import toy_cfg

    import protoseg.modeling.prototypes.memory as memory_module

    module, device = kernels
    calls = []
    monkeypatch.setattr(memory_module, "triton_prototype_scores",
                        lambda *args: calls.append(1) or module.triton_prototype_scores(*args))
    results = {}
    for kernel in ("torch", "triton"):
        cfg = toy_cfg(opts=[
            "MODEL.PROTOSEG.SCORES_KERNEL", kernel, "MODEL.DEVICE", device, "DATASETS.TRAIN", ("toy_test_train",),
            "DATASETS.TEST", (), "SOLVER.IMS_PER_BATCH", 2, "DATALOADER.NUM_WORKERS", 0, "INPUT.CROP.SIZE", (64, 64),
            "SOLVER.MAX_ITER", 10, "SOLVER.WARMUP_ITERS", 0, "OUTPUT_DIR", str(tmp_path / kernel),
        ])
        seed_all_rng(0)
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        losses = []
        with EventStorage(0) as storage:
            trainer.storage = trainer._trainer.storage = storage
            for it in range(2):
                storage.iter = trainer._trainer.iter = it
                trainer.run_step()
                losses.append({k: v[0] for k, v in storage.latest().items() if k.startswith("loss_")})
        head = trainer.model.sem_seg_head
        results[kernel] = (losses, head.memory.prototypes.clone(), head.decoder.state_dict())
    assert len(calls) == 2  # the triton run's two steps, none of the torch run's
    (loss_t, protos_t, dec_t), (loss_k, protos_k, dec_k) = results["torch"], results["triton"]
    for a, b in zip(loss_t, loss_k):
        assert set(a) == set(b) == {"loss_ce", "loss_ppc", "loss_ppd"}
        for name in a:
            assert b[name] == pytest.approx(a[name], rel=1e-4, abs=1e-6), name
    assert torch.allclose(protos_k, protos_t, atol=1e-5)
    for name, value in dec_t.items():  # the second step's parameters carry the first step's gradients
        assert torch.allclose(dec_k[name].float(), value.float(), rtol=1e-4, atol=1e-5), name


def test_the_triton_kernel_is_refused_for_other_distances():
    from protoseg.modeling.prototypes import PrototypeMemory

    with pytest.raises(ValueError, match="SCORES_KERNEL triton computes cosine.*DISTANCE is 'huber'"):
        PrototypeMemory(2, 2, 4, distance="huber", scores_kernel="triton")
