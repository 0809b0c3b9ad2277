"""Multi-process launch on GPUs and on CPUs.

Detectron2 v0.6's ``launch`` requires CUDA (NCCL, ``torch.cuda.set_device``) and its
``create_ddp_model`` passes ``device_ids=[local_rank]``, which DistributedDataParallel refuses for a
CPU model. :func:`launch` is Detectron2's on a machine with CUDA and otherwise starts the same
workers with the gloo backend (as later Detectron2 does); :func:`create_ddp_model` is Detectron2's
with ``device_ids`` left out for CPU models. Same arguments as Detectron2's, so
``train_net.py --num-gpus N`` means N processes per machine on either kind of machine.

The CPU workers use public Detectron2 API only. Detectron2's per-machine process group (for
``comm.get_local_rank`` / ``get_local_size``) is created with ``comm.create_local_process_group``
where Detectron2 has it (after v0.6). v0.6 has no public way to create it, so there a CPU worker
has none: nothing on the CPU path reads it (in v0.6 only its ``create_ddp_model`` calls
``get_local_rank``, for GPU models, and :func:`create_ddp_model` does not call it for CPU models).

In every process the main function runs through :func:`~protoseg.engine.console.run_reporting_worker_errors`:
an error of a DataLoader worker is reported by its own message first.
"""
import functools
import logging
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from detectron2.engine import create_ddp_model as d2_create_ddp_model
from detectron2.engine import launch as d2_launch
from detectron2.engine.launch import DEFAULT_TIMEOUT
from detectron2.utils import comm

from .console import run_reporting_worker_errors

__all__ = ["launch", "create_ddp_model", "find_free_port", "broadcast_buffers"]


def find_free_port() -> int:
    """A TCP port that no socket of this machine is bound to now (the OS's pick for port 0).
    Another process may still take it before it is used."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))  # every interface, as Detectron2's launch
        return sock.getsockname()[1]


def launch(
    main_func,
    num_processes_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = None,
    args=(),
    timeout=DEFAULT_TIMEOUT,
):
    """Run ``main_func(*args)`` in ``num_processes_per_machine`` processes on each of
    ``num_machines`` machines (Detectron2's ``launch`` semantics; ``dist_url`` "auto" picks a free
    local port for one machine). GPUs: Detectron2's launch (NCCL). No CUDA: gloo processes, each
    with ``cpu_count // num_processes_per_machine`` intra-op threads."""
    if torch.cuda.is_available():
        main_func = functools.partial(run_reporting_worker_errors, main_func)
        return d2_launch(main_func, num_processes_per_machine, num_machines, machine_rank, dist_url, args, timeout)
    world_size = num_machines * num_processes_per_machine
    if world_size == 1:
        return run_reporting_worker_errors(main_func, *args)
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("--dist-url auto works on one machine only; give tcp://HOST:PORT of machine 0")
        dist_url = f"tcp://127.0.0.1:{find_free_port()}"
    if not dist_url:
        raise ValueError("a multi-machine launch needs --dist-url tcp://HOST:PORT (machine 0's address)")
    mp.spawn(
        _cpu_worker,
        nprocs=num_processes_per_machine,
        args=(main_func, world_size, num_processes_per_machine, machine_rank, dist_url, args, timeout),
        daemon=False,
    )


def _cpu_worker(local_rank, main_func, world_size, per_machine, machine_rank, dist_url, args, timeout):
    """One gloo process: the process groups Detectron2's ``comm`` expects, then ``main_func``."""
    global_rank = machine_rank * per_machine + local_rank
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // per_machine))
    try:
        dist.init_process_group("gloo", init_method=dist_url, world_size=world_size, rank=global_rank, timeout=timeout)
    except Exception:
        logging.getLogger(__name__).error("process group URL: %s", dist_url)
        raise
    create_local_process_group(per_machine)
    comm.synchronize()
    run_reporting_worker_errors(main_func, *args)
    # Every rank is done and its files are written. Leave without interpreter teardown: gloo's
    # destructors can abort at exit ("terminate called without an active exception", seen now and
    # then on 2-process CPU runs), which would report a finished run as crashed.
    comm.synchronize()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def create_local_process_group(per_machine: int) -> bool:
    """Detectron2's per-machine process group of this process, with
    ``comm.create_local_process_group`` (all processes call it together). Returns False, creating
    nothing, on a Detectron2 without that function (v0.6): see the module docstring."""
    create = getattr(comm, "create_local_process_group", None)
    if create is None:
        return False
    create(per_machine)
    return True


def create_ddp_model(model: torch.nn.Module, **kwargs) -> torch.nn.Module:
    """Detectron2's ``create_ddp_model``; for a CPU model, DDP without ``device_ids``."""
    if comm.get_world_size() > 1 and next(model.parameters()).device.type == "cpu":
        kwargs.pop("fp16_compression", None)
        return DistributedDataParallel(model, **kwargs)
    return d2_create_ddp_model(model, **kwargs)


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Copy the buffers (BatchNorm statistics, prototypes, ...) of the DDP-wrapped ``model`` of
    rank 0 to every rank; nothing for a model that is not DDP-wrapped. All ranks call it together.

    The trainer's DDP does not broadcast buffers (``broadcast_buffers=False``, Detectron2's
    choice), so each rank's BatchNorm keeps the running statistics of its own batches. One
    broadcast per dtype (the buffers flattened into one tensor)."""
    if not isinstance(model, DistributedDataParallel) or comm.get_world_size() == 1:
        return
    by_dtype = {}
    for buffer in model.module.buffers():
        by_dtype.setdefault(buffer.dtype, []).append(buffer)
    for buffers in by_dtype.values():
        flat = torch.cat([b.detach().reshape(-1) for b in buffers])
        dist.broadcast(flat, src=0)
        for buffer, value in zip(buffers, flat.split([b.numel() for b in buffers])):
            buffer.copy_(value.view_as(buffer))
