"""Shared fixtures: configs of the toy model, and a small toy-scenes dataset generated once."""
import importlib.util
import os
import socket
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels (modeling/prototypes/triton_scores.py) run on CPU tensors in Triton's
    # interpreter, which triton.jit chooses when a kernel (also one of triton.language's own) is
    # defined: before anything imports triton, which importing protoseg does. (torch does not.)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from protoseg.config import load_config  # noqa: E402
from protoseg.data import register_toy_scenes  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# the modules beside the scripts, importable as each script imports them (its folder is first on
# sys.path when it runs): datasets/toy_scenes.py (the toy-data generator), lab/studies.py,
# demo/predictor.py and demo/demo.py (which demo/web.py imports)
sys.path[:0] = [str(REPO / "datasets"), str(REPO / "lab"), str(REPO / "demo")]
import toy_scenes  # noqa: E402
TOY_CONFIGS = REPO / "configs" / "toy"


def toy_cfg(name: str = "protoseg_r18-d8_fcn_toy.yaml", opts=()):
    """A config of configs/toy with ``opts`` overrides (KEY, VALUE, ...), not frozen."""
    return load_config(TOY_CONFIGS / name, opts)


def load_script(name: str, path: Path):
    """Import a script of the repository (demo/, tools/) as module ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_then_exit(rank, target, world, port, *args):
    target(rank, world, port, *args)
    # The results are on disk. Leave without interpreter teardown: gloo's destructors can abort
    # at exit ("terminate called without an active exception"), now and then, after all work is done.
    os._exit(0)


def run_in_processes(target, world: int, *args, timeout: float = 600):
    """Run ``target(rank, world, port, *args)`` in ``world`` spawned processes (they can join a
    gloo group on 127.0.0.1:port) and wait for all; each must exit with 0."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_run_then_exit, args=(rank, target, world, port, *args)) for rank in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=timeout)
        assert p.exitcode == 0, f"rank process exited with {p.exitcode}"


def random_batch(n=2, size=64, num_classes=8, ignore=255, seed=0):
    """Detectron2 model inputs: n images (3, size, size) and label maps with some ignore pixels."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(n):
        labels = torch.randint(0, num_classes, (size, size), generator=g)
        labels[: size // 8] = ignore
        batch.append({"image": torch.rand(3, size, size, generator=g) * 255, "sem_seg": labels})
    return batch


@pytest.fixture(scope="session")
def toy_dataset(tmp_path_factory):
    """A small default-spec toy-scenes dataset, registered as toy_test_train / toy_test_val."""
    root = tmp_path_factory.mktemp("datasets") / "toy_scenes"
    toy_scenes.generate_toy_scenes(root, toy_scenes.ToySceneSpec(num_train=64, num_val=16))
    register_toy_scenes(root, prefix="toy_test")
    return root


@pytest.fixture(scope="session")
def trained_toy_checkpoint(toy_dataset, tmp_path_factory):
    """(cfg, path of model_final.pth) of ProtoSeg trained 40 iterations on the toy data (seeded)."""
    from detectron2.utils.env import seed_all_rng
    from protoseg.engine import Trainer

    out = tmp_path_factory.mktemp("toy_model")
    cfg = toy_cfg(opts=[
        "DATASETS.TRAIN", ("toy_test_train",), "DATASETS.TEST", ("toy_test_val",),
        "SOLVER.MAX_ITER", 40, "TEST.EVAL_PERIOD", 0, "SOLVER.CHECKPOINT_PERIOD", 10000,
        "OUTPUT_DIR", str(out), "DATALOADER.NUM_WORKERS", 0,
    ])
    cfg.freeze()
    seed_all_rng(0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return cfg, out / "model_final.pth"
