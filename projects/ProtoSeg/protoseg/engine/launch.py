"""Multi-process launch on GPUs and on CPUs, by this launcher or by torchrun / a submitit job.

Detectron2 v0.6's ``launch`` requires CUDA (NCCL, ``torch.cuda.set_device``) and its
``create_ddp_model`` passes ``device_ids=[local_rank]``, which DistributedDataParallel refuses for a
CPU model. :func:`launch` is Detectron2's on a machine with CUDA and otherwise starts the same
workers with the gloo backend (as later Detectron2 does); :func:`create_ddp_model` is Detectron2's
with ``device_ids`` left out for CPU models. Same arguments as Detectron2's, so
``train_net.py --num-gpus N`` means N processes per machine on either kind of machine.

Under torchrun (``python -m torch.distributed.run``), which starts the processes itself and gives
each its ranks and rendezvous in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), :func:`launch` starts nothing: this process
joins the process group from the environment (``env://``; NCCL with CUDA, gloo without) and runs
the main function as one of the ranks. A submitit job (:func:`export_submitit_environment`) sets
the same variables from its task's ``submitit.JobEnvironment`` and takes the same path.

The CPU workers use public Detectron2 API only. Detectron2's per-machine process group (for
``comm.get_local_rank`` / ``get_local_size``) is created with ``comm.create_local_process_group``
where Detectron2 has it (after v0.6). v0.6 has no public way to create it, so there a CPU worker
and a torchrun process have none: nothing on the CPU path reads it, and in v0.6 only its
``create_ddp_model`` calls ``get_local_rank`` (for GPU models), which :func:`create_ddp_model`
replaces by the local rank it knows (``device_ids`` of the torchrun process's ``LOCAL_RANK``).

In every process the main function runs through :func:`~protoseg.engine.console.run_reporting_worker_errors`:
an error of a DataLoader worker is reported by its own message first.
"""
import functools
import logging
import os
import re
import socket
import sys
from typing import Dict, NamedTuple, Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from detectron2.engine import create_ddp_model as d2_create_ddp_model
from detectron2.engine import default_argument_parser
from detectron2.engine import launch as d2_launch
from detectron2.engine.launch import DEFAULT_TIMEOUT
from detectron2.utils import comm

from .console import run_reporting_worker_errors

__all__ = [
    "launch",
    "create_ddp_model",
    "export_submitit_environment",
    "find_free_port",
    "broadcast_buffers",
    "submitit_variables",
    "TorchrunEnvironment",
    "torchrun_environment",
]

logger = logging.getLogger(__name__)

# torchrun's variables, all of which a process it started has; the ranks tell that it did
# (MASTER_ADDR / MASTER_PORT alone are set by some cluster setups for other launchers too)
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
RANK_VARIABLES = TORCHRUN_VARIABLES[:4]


class TorchrunEnvironment(NamedTuple):
    """The ranks and rendezvous that torchrun (or a submitit job) gives a process."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int

    @property
    def num_machines(self) -> int:
        return self.world_size // self.local_world_size

    @property
    def machine_rank(self) -> int:
        return self.rank // self.local_world_size


def torchrun_environment(environ=os.environ) -> Optional[TorchrunEnvironment]:
    """This process's ranks from torchrun's variables (:data:`TORCHRUN_VARIABLES`), or None when
    none of the rank variables is set. Raises ValueError naming the variable at fault when only
    some are set or one is not a valid number."""
    if not any(name in environ for name in RANK_VARIABLES):
        return None
    present = [name for name in TORCHRUN_VARIABLES if name in environ]
    missing = [name for name in TORCHRUN_VARIABLES if name not in environ]
    if missing:
        raise ValueError(
            f"the environment has torchrun's {', '.join(present)} but not {', '.join(missing)}: start the "
            "processes with torchrun (python -m torch.distributed.run), or unset these variables"
        )
    values = {}
    for name in RANK_VARIABLES + ("MASTER_PORT",):
        try:
            values[name] = int(environ[name])
        except ValueError:
            raise ValueError(f"environment variable {name}={environ[name]!r} is not an integer") from None
    env = TorchrunEnvironment(
        values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"], values["LOCAL_WORLD_SIZE"],
        environ["MASTER_ADDR"], values["MASTER_PORT"],
    )
    if not (0 <= env.rank < env.world_size and 0 <= env.local_rank < env.local_world_size
            and env.world_size % env.local_world_size == 0):
        raise ValueError(f"inconsistent torchrun environment: {env}")
    return env


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
    exit_when_done: bool = True,
):
    """Run ``main_func(*args)`` in ``num_processes_per_machine`` processes on each of
    ``num_machines`` machines (Detectron2's ``launch`` semantics; ``dist_url`` "auto" picks a free
    local port for one machine). GPUs: Detectron2's launch (NCCL). No CUDA: gloo processes, each
    with ``cpu_count // num_processes_per_machine`` intra-op threads.

    Under torchrun (:func:`torchrun_environment`) this process is one rank of the run that
    torchrun started: it joins the group from the environment and runs ``main_func`` here. The
    process counts given must then be left at their defaults (1, 1, 0) or agree with the
    environment (ValueError otherwise); a ``dist_url`` other than Detectron2's default is not
    used (a warning names the one used). With ``exit_when_done`` a rank of several leaves with
    ``os._exit(0)`` once every rank is done (see :func:`_exit_cleanly`); otherwise it returns
    ``main_func``'s result (a submitit task, whose result submitit writes after the return)."""
    env = torchrun_environment()
    if env is not None:
        check_launch_arguments(env, num_processes_per_machine, num_machines, machine_rank, dist_url)
        result = _run_as_torchrun_rank(main_func, env, args, timeout)
        if exit_when_done and env.world_size > 1:
            _exit_cleanly()
        return result
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


def check_launch_arguments(env: TorchrunEnvironment, num_processes_per_machine, num_machines, machine_rank,
                           dist_url) -> None:
    """Refuse process counts that contradict torchrun's environment ``env`` (ValueError naming
    the option, its value and the environment's); warn that a ``dist_url`` other than the
    default of Detectron2's argument parser is not used."""
    given = {
        "--num-gpus (processes per machine)": (num_processes_per_machine, 1, env.local_world_size),
        "--num-machines": (num_machines, 1, env.num_machines),
        "--machine-rank": (machine_rank, 0, env.machine_rank),
    }
    for option, (value, default, from_env) in given.items():
        if value != default and value != from_env:
            raise ValueError(
                f"{option} {value} contradicts torchrun's environment ({from_env}; RANK={env.rank}, "
                f"WORLD_SIZE={env.world_size}, LOCAL_WORLD_SIZE={env.local_world_size}): under torchrun, "
                "torchrun's --nnodes / --nproc-per-node decide the processes; leave the option out"
            )
    if dist_url not in (None, "env://", default_argument_parser().get_default("dist_url")):
        logger.warning(
            "--dist-url %s is not used under torchrun: the processes meet at torchrun's MASTER_ADDR:MASTER_PORT "
            "(%s:%d)", dist_url, env.master_addr, env.master_port,
        )


def _run_as_torchrun_rank(main_func, env: TorchrunEnvironment, args, timeout):
    """``main_func(*args)`` as rank ``env.rank`` of a process group joined from the environment
    (nothing to join for a world of one); the group is left after every rank is done."""
    if env.world_size == 1:
        return run_reporting_worker_errors(main_func, *args)
    if torch.cuda.is_available():
        if env.local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK {env.local_rank} but this machine has {torch.cuda.device_count()} GPU(s): "
                "start at most one process per GPU (torchrun --nproc-per-node)"
            )
        torch.cuda.set_device(env.local_rank)
        backend = "nccl"
    else:
        _set_cpu_threads(env.local_world_size)
        backend = "gloo"
    _join_process_group(backend, "env://", env.world_size, env.rank, timeout)
    create_local_process_group(env.local_world_size)
    comm.synchronize()
    result = run_reporting_worker_errors(main_func, *args)
    comm.synchronize()
    dist.destroy_process_group()
    return result


def _cpu_worker(local_rank, main_func, world_size, per_machine, machine_rank, dist_url, args, timeout):
    """One gloo process: the process groups Detectron2's ``comm`` expects, then ``main_func``."""
    global_rank = machine_rank * per_machine + local_rank
    _set_cpu_threads(per_machine)
    _join_process_group("gloo", dist_url, world_size, global_rank, timeout)
    create_local_process_group(per_machine)
    comm.synchronize()
    run_reporting_worker_errors(main_func, *args)
    comm.synchronize()
    _exit_cleanly()


def _set_cpu_threads(per_machine: int) -> None:
    """An equal share of this machine's cores for each of its ``per_machine`` processes."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // per_machine))


def _join_process_group(backend: str, init_method: str, world_size: int, rank: int, timeout) -> None:
    try:
        dist.init_process_group(backend, init_method=init_method, world_size=world_size, rank=rank, timeout=timeout)
    except Exception:
        logger.error("process group: %s backend, rendezvous %s (rank %d of %d)", backend, init_method, rank, world_size)
        raise


def _exit_cleanly() -> None:
    """Leave this process with exit code 0, without interpreter teardown. Every rank is done and
    its files are written; gloo's destructors can abort at exit ("terminate called without an
    active exception", seen now and then on 2-process CPU runs), which would report a finished
    run as crashed."""
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
    """Detectron2's ``create_ddp_model``; for a CPU model, DDP without ``device_ids``; for a GPU
    model of a torchrun process, ``device_ids`` from its ``LOCAL_RANK`` (Detectron2 v0.6 would
    ask its per-machine group, which such a process does not have there)."""
    if comm.get_world_size() > 1 and next(model.parameters()).device.type == "cpu":
        kwargs.pop("fp16_compression", None)
        return DistributedDataParallel(model, **kwargs)
    env = torchrun_environment()
    if comm.get_world_size() > 1 and env is not None:
        kwargs.setdefault("device_ids", [env.local_rank])
    return d2_create_ddp_model(model, **kwargs)


def export_submitit_environment(environ=os.environ) -> TorchrunEnvironment:
    """In a task of a submitit job: set torchrun's variables (:data:`TORCHRUN_VARIABLES`) in
    ``environ`` from ``submitit.JobEnvironment()`` (one process per task; machine 0 is the job's
    first host, the port is derived from the job id so that all tasks agree on it), then return
    them as :func:`torchrun_environment` reads them. :func:`launch` then takes its torchrun path."""
    import submitit

    job = submitit.JobEnvironment()
    variables = submitit_variables(job.global_rank, job.num_tasks, job.local_rank, job.num_nodes,
                                   job.hostnames[0], job.job_id)
    environ.update(variables)
    return torchrun_environment(environ)


def submitit_variables(global_rank: int, num_tasks: int, local_rank: int, num_nodes: int, first_host: str,
                       job_id: str) -> Dict[str, str]:
    """torchrun's variables for task ``global_rank`` of a job of ``num_tasks`` tasks on
    ``num_nodes`` nodes. MASTER_PORT is in [20000, 60000), from the digits of ``job_id`` (an array
    job's id "123_4" included): the same in every task of the job, rarely the same for two jobs
    of one node."""
    digits = re.sub(r"\D", "", str(job_id))
    port = 20000 + int(digits or 0) % 40000
    return {
        "RANK": str(global_rank),
        "WORLD_SIZE": str(num_tasks),
        "LOCAL_RANK": str(local_rank),
        "LOCAL_WORLD_SIZE": str(num_tasks // num_nodes),
        "MASTER_ADDR": first_host,
        "MASTER_PORT": str(port),
    }


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
