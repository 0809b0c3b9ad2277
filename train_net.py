#!/usr/bin/env python
"""Train or evaluate ProtoSeg (or its parametric baselines) with Detectron2.

    python train_net.py --config-file configs/toy/protoseg_r18-d8_fcn_toy.yaml
    python train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS path/to/model.pth
    python train_net.py --config-file CONFIG --resume              # continue from last_checkpoint
    python train_net.py --config-file CONFIG --eval-only --resume  # score OUTPUT_DIR's last checkpoint
    python train_net.py --config-file CONFIG --skip-weights sem_seg_head.classifier \
        MODEL.WEIGHTS other_classes.pth MODEL.SEM_SEG_HEAD.NUM_CLASSES 19   # fine-tune, new classifier
    python train_net.py --config-file CONFIG --num-gpus 8          # one machine, 8 GPUs
    python train_net.py --config-file CONFIG --num-gpus 2 MODEL.DEVICE cpu   # no GPU: 2 gloo processes
    python train_net.py --config-file CONFIG --num-gpus 8 --num-machines 2 --machine-rank 0 \
        --dist-url tcp://HOST:PORT                                 # and --machine-rank 1 on the other
    torchrun --nproc-per-node 8 train_net.py --config-file CONFIG  # torchrun starts the processes
    python train_net.py --config-file CONFIG --submit slurm --num-machines 2 --num-gpus 8 \
        --partition PARTITION --timeout-min 1440                   # a SLURM job (submitit), 16 GPUs

Under torchrun (python -m torch.distributed.run; one machine or several with --nnodes and a
rendezvous) each process it starts is one rank: ranks and rendezvous come from its environment,
and --num-gpus / --num-machines / --machine-rank, if given, must agree with it (--dist-url is not
used). --submit slurm queues the run as a SLURM job through submitit (pip install
"protoseg-d2[slurm]"): --num-machines nodes with --num-gpus tasks (and GPUs, unless MODEL.DEVICE
is cpu) each, one rank per task, the job's files (its logs, stdout/stderr of every task) in
--job-dir; a job stopped by its time limit or preempted is requeued and continues from its last
checkpoint (--resume). --submit local runs the same job on this machine (submitit's local
executor) and waits for it.

An OUTPUT_DIR belongs to one run at a time (training or --eval-only): the run locks it
(OUTPUT_DIR/.protoseg_run.lock, naming host, pid, start and command) before writing into it and
releases it at its end; a second run there is refused, a lock left by a killed run of this
machine is taken over with a warning. --resume refuses a checkpoint past SOLVER.MAX_ITER; from a
checkpoint at MAX_ITER it trains nothing, writes no checkpoint and runs the final evaluation again.

MODEL.WEIGHTS must fit the model: a missing, unexpected or mis-shaped key is an error, except that
a file of backbone keys only (tools/convert_pretrained.py) initialises the backbone of a training
run, and --skip-weights leaves the named modules out of a fine-tuning initialisation.

The console (and OUTPUT_DIR/log.txt, without colour codes) starts with the versions and device, a
summary of the run (config file, model, data, schedule with the effective warm-up, precision,
output, test protocol) and the model's size in one line; the full config is always written to
OUTPUT_DIR/config.yaml. --print-config also logs the full config, --print-model the model's
modules. An evaluation ends with "Results on DATASET: mIoU ..  fwIoU ..  mACC ..  pACC ..". An
error in a DataLoader worker is reported by its own message first ("LabelMapError: label map ...
has id(s) ..."), then its traceback. Known-harmless warnings of torch and Detectron2 are filtered
when protoseg is imported (protoseg.KNOWN_WARNINGS); `python -m detectron2.utils.collect_env`
prints the full environment report.
"""
import argparse
import os
import sys
from contextlib import contextmanager


def get_parser():
    """The options of Detectron2's ``default_argument_parser`` (same names and defaults) and the
    project's (give them before the KEY VALUE config overrides). Built with argparse alone, so
    that ``--help`` and a wrong option answer without importing torch or Detectron2."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to the config file")
    parser.add_argument(
        "--resume", action="store_true",
        help="training: continue from the last checkpoint of OUTPUT_DIR (its last_checkpoint), if any; "
             "with --eval-only: score that checkpoint instead of MODEL.WEIGHTS",
    )
    parser.add_argument("--eval-only", action="store_true", help="evaluate only (the weights of MODEL.WEIGHTS)")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per machine (GPUs, or CPU processes)")
    parser.add_argument("--num-machines", type=int, default=1, help="number of machines")
    parser.add_argument("--machine-rank", type=int, default=0, help="rank of this machine (unique per machine)")
    # Detectron2's default: a port fixed per user, so that an orphaned process shows as a port in use
    port = 2 ** 15 + 2 ** 14 + hash(os.getuid() if sys.platform != "win32" else 1) % 2 ** 14
    parser.add_argument(
        "--dist-url", default=f"tcp://127.0.0.1:{port}",
        help="URL of the process group's rendezvous (machine 0's tcp://HOST:PORT); 'auto' picks a free port. "
             "Not used under torchrun or --submit",
    )
    parser.add_argument(
        "--allow-random-weights", action="store_true",
        help="with --eval-only: evaluate even without MODEL.WEIGHTS (a randomly initialised model)",
    )
    parser.add_argument(
        "--skip-weights", action="append", default=[], metavar="PREFIX",
        help="training: do not load the keys of MODEL.WEIGHTS under this module prefix (e.g. "
             "sem_seg_head.classifier, to fine-tune on another class set); repeat for several",
    )
    parser.add_argument(
        "--print-config", action="store_true",
        help="log the full config (always written to OUTPUT_DIR/config.yaml), not only its summary",
    )
    parser.add_argument(
        "--print-model", action="store_true", help="log the model's modules, not only its size",
    )
    add_submit_arguments(parser)
    parser.add_argument(
        "opts", default=None, nargs=argparse.REMAINDER,
        help="config overrides at the end of the command: space-separated KEY VALUE pairs",
    )
    return parser


def add_submit_arguments(parser):
    """The options of a submitit job (``--submit``); its size is --num-machines x --num-gpus."""
    group = parser.add_argument_group(
        "cluster job (submitit)",
        "with --submit, the run is a job of --num-machines nodes x --num-gpus tasks, one rank per task",
    )
    group.add_argument(
        "--submit", choices=("slurm", "local"), default=None,
        help="queue the run as a SLURM job (slurm), or run it as such a job on this machine and wait for "
             "it (local); needs submitit (pip install 'protoseg-d2[slurm]')",
    )
    group.add_argument(
        "--job-dir", default=None, metavar="DIR",
        help="the job's folder (submitit's pickles, each task's stdout/stderr); default OUTPUT_DIR/submitit",
    )
    group.add_argument("--partition", default=None, help="SLURM partition (default: the cluster's)")
    group.add_argument(
        "--timeout-min", type=int, default=24 * 60, metavar="MINUTES",
        help="the job's time limit; when it is reached the job is requeued and continues from its last "
             "checkpoint (default: %(default)s)",
    )
    group.add_argument(
        "--cpus-per-task", type=int, default=8,
        help="CPU cores of each task (its DataLoader workers; default: %(default)s)",
    )


@contextmanager
def setup(args):
    """The run's config (``args.config_file`` + ``args.opts`` with the project's keys, checked
    against the run's datasets), for the duration of the run in its ``OUTPUT_DIR``: the folder is
    locked for this run (another run there is refused), then Detectron2's ``default_setup`` steps
    (loggers, ``config.yaml``, seed) with a summary of the environment and the config (the full
    config too with ``--print-config``). The lock is released when the block ends.

    ``--eval-only`` locks the folder too: it writes ``log.txt`` and the ``inference/`` report there,
    which a training in the same folder writes as well.
    """
    from protoseg.config import load_config
    from protoseg.data.class_count import check_dataset_class_counts
    from protoseg.engine import output_dir_lock, setup_run

    cfg = load_config(args.config_file, args.opts, freeze=True)
    check_dataset_class_counts(cfg)  # in seconds, before the folder, the model and the data loader
    with output_dir_lock(cfg.OUTPUT_DIR):
        setup_run(cfg, args, print_config=getattr(args, "print_config", False))
        yield cfg


def main(args):
    # protoseg first: it filters the known-harmless warnings that Detectron2's modules raise at import
    from protoseg.engine import Trainer, evaluate_checkpoint

    # (getattr: callers such as lab/studies.py parse with Detectron2's parser, without these options)
    skip_weights = getattr(args, "skip_weights", [])
    if args.eval_only and skip_weights:
        raise ValueError("--skip-weights is for training; --eval-only loads every key of MODEL.WEIGHTS")
    Trainer.print_model = getattr(args, "print_model", False)
    with setup(args) as cfg:  # OUTPUT_DIR is this run's until the block ends
        if args.eval_only:
            allow_random = getattr(args, "allow_random_weights", False)
            return evaluate_checkpoint(cfg, allow_random_weights=allow_random, resume=args.resume)
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume, skip_weights=skip_weights)
        return trainer.train()


def launch(*args, **kwargs):
    """:func:`protoseg.engine.launch` (imported when called)."""
    from protoseg.engine import launch as protoseg_launch

    return protoseg_launch(*args, **kwargs)


class JobTask:
    """What each task of a submitit job runs: torchrun's variables from the task's
    ``submitit.JobEnvironment``, then :func:`launch`'s torchrun path (this task is one rank) with
    :func:`main`. Defined here, submitit pickles it with :func:`main` and :func:`setup` by value.

    On the job's time limit or preemption submitit calls :meth:`checkpoint` and requeues the job
    with what it returns: the same run with ``--resume``, which continues from OUTPUT_DIR's last
    checkpoint."""

    def __init__(self, args):
        self.args = args

    def __call__(self):
        from protoseg.engine.launch import export_submitit_environment

        export_submitit_environment()
        # processes: the job's; the result is returned for submitit to write
        return launch(main, 1, args=(self.args,), exit_when_done=False)

    def checkpoint(self, *unused):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(JobTask(argparse.Namespace(**{**vars(self.args), "resume": True})))


def submit(args) -> int:
    """Queue the run as a submitit job (``args.submit``: "slurm" or "local"); "local" waits for
    it. Returns the exit status: 0 once queued (slurm) or finished (local), 1 if the local job
    failed (its error and its log files are printed)."""
    from protoseg.config import load_config

    if args.machine_rank != 0 or args.dist_url != get_parser().get_default("dist_url"):
        raise SystemExit("--machine-rank and --dist-url are not for --submit: the job's environment gives "
                         "each task its rank and the rendezvous")
    if args.submit == "local" and args.num_machines != 1:
        raise SystemExit(f"--submit local runs on this machine: --num-machines must be 1, not {args.num_machines}")
    cfg = load_config(args.config_file, args.opts)  # a config error now, not once the job runs
    job_dir = args.job_dir or os.path.join(cfg.OUTPUT_DIR, "submitit")
    job = job_executor(args, job_dir, gpus=cfg.MODEL.DEVICE != "cpu").submit(JobTask(args))
    print(f"submitted job {job.job_id} ({args.submit}, {args.num_machines} x {args.num_gpus} tasks); "
          f"job folder {job_dir}, output {cfg.OUTPUT_DIR}", flush=True)
    if args.submit == "slurm":
        return 0
    job.wait()
    error = job.exception()
    if error is None:
        return 0
    print(f"job {job.job_id} failed: {error}\nlogs: {job.paths.stdout}, {job.paths.stderr}", file=sys.stderr)
    return 1


def job_executor(args, job_dir: str, gpus: bool):
    """submitit's executor of ``args.submit`` for a job of --num-machines nodes x --num-gpus tasks
    (and as many GPUs per node if ``gpus``), its files in ``job_dir``."""
    try:
        import submitit
    except ImportError:
        raise SystemExit("--submit needs submitit: pip install 'protoseg-d2[slurm]' (or pip install submitit)")
    executor = submitit.AutoExecutor(folder=job_dir, cluster=args.submit)
    executor.update_parameters(
        name="protoseg", nodes=args.num_machines, tasks_per_node=args.num_gpus, cpus_per_task=args.cpus_per_task,
        gpus_per_node=args.num_gpus if gpus else 0, timeout_min=args.timeout_min,
        **({"slurm_partition": args.partition} if args.partition else {}),
    )
    return executor


if __name__ == "__main__":
    args = get_parser().parse_args()
    if args.submit:
        sys.exit(submit(args))
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
