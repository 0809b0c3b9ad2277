"""train_net.py under torchrun and as a submitit job (local executor), on CPU processes (gloo):
each process is one rank of one 2-process run (the log says so, one output folder, prototypes
bit-identical on both ranks at every iteration) that trains exactly as ``--num-gpus 2`` does; process
counts that contradict torchrun's environment are refused; a requeued job resumes."""
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from protoseg.engine.launch import TORCHRUN_VARIABLES, launch, submitit_variables, torchrun_environment

from conftest import REPO, load_script

CONFIG = str(REPO / "configs/toy/protoseg_r18-d8_fcn_toy.yaml")
# 2 processes x 2 images, 4 iterations; the sync check compares the prototype bytes of both ranks
# after every iteration and stops training at the first difference
TINY = ["DATALOADER.NUM_WORKERS", "0", "SOLVER.CHECKPOINT_PERIOD", "1000", "TEST.EVAL_PERIOD", "0",
        "SOLVER.MAX_ITER", "4", "SOLVER.IMS_PER_BATCH", "4", "MODEL.PROTOSEG.SYNC_CHECK_PERIOD", "1"]


def run(cmd, env, expect_ok=True):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if expect_ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def env(toy_dataset):
    clean = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
    return dict(clean, DETECTRON2_DATASETS=str(toy_dataset.parent), OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def reference_model(env, tmp_path_factory):
    """The model state of the same 2-process training started by the project's own launcher."""
    out = tmp_path_factory.mktemp("num_gpus_2")
    run([sys.executable, str(REPO / "train_net.py"), "--num-gpus", "2", "--dist-url", "auto",
         "--config-file", CONFIG, *TINY, "OUTPUT_DIR", str(out)], env)
    return torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]


def assert_one_two_process_run(out_dir, reference_model):
    """``out_dir`` holds one run of 2 ranks that trained as ``--num-gpus 2`` does."""
    log = (out_dir / "log.txt").read_text()
    assert "Device: cpu, 1 thread (no CUDA device); process 0 of 2" in log
    assert "batch 4 (2 per process)" in log
    for it in range(4):
        assert f"iter: {it}  prototypes bit-identical on all 2 processes" in log
    assert "Results on toy_scenes_sem_seg_val: mIoU" in log
    assert "process 1 of 2" in (out_dir / "log.txt.rank1").read_text()
    assert not (out_dir / ".protoseg_run.lock").exists()
    state = torch.load(out_dir / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    assert state.keys() == reference_model.keys()
    different = [k for k in state if not torch.equal(state[k], reference_model[k])]
    assert different == []  # the prototypes and every weight, bit for bit


def test_torchrun_two_processes_are_one_run_as_num_gpus_2(env, reference_model, tmp_path):
    out = tmp_path / "torchrun"
    proc = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(REPO / "train_net.py"),
                "--config-file", CONFIG, *TINY, "OUTPUT_DIR", str(out)], env)
    assert_one_two_process_run(out, reference_model)
    assert "Traceback" not in proc.stderr


def test_submit_local_job_of_two_tasks_is_one_run_as_num_gpus_2(env, reference_model, tmp_path):
    out = tmp_path / "job"
    proc = run([sys.executable, str(REPO / "train_net.py"), "--submit", "local", "--num-gpus", "2",
                "--config-file", CONFIG, *TINY, "OUTPUT_DIR", str(out)], env)
    assert proc.stdout.startswith("submitted job ") and f"job folder {out / 'submitit'}" in proc.stdout
    assert_one_two_process_run(out, reference_model)
    job_files = sorted(p.name for p in (out / "submitit").iterdir())
    results = [p for p in job_files if p.endswith("_result.pkl")]
    assert len(results) == 2  # both tasks returned and submitit wrote their results
    for name in results:
        with open(out / "submitit" / name, "rb") as f:
            assert pickle.load(f)[0] == "success"


def test_submit_local_job_reports_a_failed_run(env, tmp_path):
    proc = run([sys.executable, str(REPO / "train_net.py"), "--submit", "local", "--num-gpus", "1",
                "--config-file", CONFIG, *TINY, "DATASETS.TRAIN", "('no_such_dataset',)",
                "OUTPUT_DIR", str(tmp_path)], env, expect_ok=False)
    assert proc.returncode == 1
    assert "failed" in proc.stderr and "no_such_dataset" in proc.stderr and "_log.err" in proc.stderr


@pytest.mark.parametrize("options, message", [
    (["--dist-url", "auto"], "--machine-rank and --dist-url are not for --submit"),
    (["--num-machines", "2"], "--submit local runs on this machine: --num-machines must be 1, not 2"),
])
def test_submit_refuses_options_the_job_decides(env, tmp_path, options, message):
    proc = run([sys.executable, str(REPO / "train_net.py"), "--submit", "local", *options, "--config-file", CONFIG,
                "OUTPUT_DIR", str(tmp_path)], env, expect_ok=False)
    assert proc.returncode == 1 and message in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing queued


def torchrun_vars(rank=0, world=2, local_rank=0, local_world=2):
    return {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(local_rank),
            "LOCAL_WORLD_SIZE": str(local_world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def test_torchrun_environment_is_read_and_checked():
    assert torchrun_environment({}) is None
    assert torchrun_environment({"MASTER_ADDR": "node1", "MASTER_PORT": "1234"}) is None
    env = torchrun_environment(torchrun_vars(rank=5, world=8, local_rank=1, local_world=4))
    assert (env.rank, env.world_size, env.local_rank, env.num_machines, env.machine_rank) == (5, 8, 1, 2, 1)
    partial = {k: v for k, v in torchrun_vars().items() if k != "MASTER_PORT"}
    with pytest.raises(ValueError, match="but not MASTER_PORT"):
        torchrun_environment(partial)
    with pytest.raises(ValueError, match="WORLD_SIZE='two' is not an integer"):
        torchrun_environment(dict(torchrun_vars(), WORLD_SIZE="two"))


@pytest.mark.parametrize("kwargs, option", [
    ({"num_processes_per_machine": 4}, "--num-gpus"),
    ({"num_processes_per_machine": 2, "num_machines": 3}, "--num-machines"),
    ({"num_processes_per_machine": 1, "machine_rank": 1}, "--machine-rank"),
])
def test_launch_under_torchrun_refuses_contradicting_process_counts(monkeypatch, kwargs, option):
    for name, value in torchrun_vars().items():
        monkeypatch.setenv(name, value)
    ran = []
    with pytest.raises(ValueError, match=f"{option} .* contradicts torchrun's environment"):
        launch(ran.append, args=(1,), **kwargs)
    assert ran == []


def test_launch_under_torchrun_accepts_agreeing_counts_and_warns_of_dist_url(monkeypatch, caplog):
    """A world of one: ``main`` runs here, with no process group, and its result is returned."""
    for name, value in torchrun_vars(world=1, local_world=1).items():
        monkeypatch.setenv(name, value)
    train_net = load_script("train_net_defaults", REPO / "train_net.py")
    default_url = train_net.get_parser().get_default("dist_url")
    assert launch(lambda x: x * 2, 1, dist_url=default_url, args=(21,)) == 42
    assert "--dist-url" not in caplog.text  # the default, which the user did not give
    assert launch(lambda x: x * 2, 1, dist_url="tcp://127.0.0.1:1", args=(21,)) == 42
    assert "--dist-url tcp://127.0.0.1:1 is not used under torchrun" in caplog.text
    assert not torch.distributed.is_initialized()


def test_submitit_tasks_agree_on_the_rendezvous():
    tasks = [submitit_variables(rank, 8, rank % 4, 2, "node-a", "4242_3") for rank in range(8)]
    assert {(t["MASTER_ADDR"], t["MASTER_PORT"]) for t in tasks} == {("node-a", str(20000 + 42423 % 40000))}
    assert [t["RANK"] for t in tasks] == [str(r) for r in range(8)]
    assert tasks[5]["LOCAL_RANK"] == "1" and tasks[5]["LOCAL_WORLD_SIZE"] == "4"
    env = torchrun_environment(tasks[5])
    assert (env.machine_rank, env.num_machines, env.master_port) == (1, 2, 22423)


def test_preempted_local_job_is_requeued_and_resumes_from_its_last_checkpoint(env, tmp_path):
    """SIGUSR2 (SLURM's and submitit's warning before a time limit or a preemption) to rank 0: the
    job checkpoints (the same run with --resume), is requeued and finishes the schedule."""
    out = tmp_path / "job"
    cmd = [sys.executable, str(REPO / "train_net.py"), "--submit", "local", "--num-gpus", "2", "--config-file", CONFIG,
           *TINY, "SOLVER.MAX_ITER", "40", "SOLVER.CHECKPOINT_PERIOD", "5", "OUTPUT_DIR", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # signal once a checkpoint is complete (last_checkpoint names it), not while it is written
        last = out / "last_checkpoint"
        give_up_at = time.monotonic() + 120
        while time.monotonic() < give_up_at and not (last.is_file() and last.read_text().startswith("model_")):
            time.sleep(0.05)
        rank0 = json.loads((out / ".protoseg_run.lock").read_text())["pid"]  # the lock names rank 0
        os.kill(rank0, signal.SIGUSR2)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 0, stdout[-2000:] + stderr[-3000:]
    job_log = next((out / "submitit").glob("*_0_log.out")).read_text()
    assert "this job is preempted" in job_log and "Requeued job" in job_log
    log = (out / "log.txt").read_text()
    assert log.count("Device: cpu, 1 thread (no CUDA device); process 0 of 2") == 2  # two starts of rank 0
    resumed = re.search(r"Loading trainer from \S+model_(\d+)\.pth", log)
    assert resumed and int(resumed.group(1)) >= 4
    assert "iter: 39  prototypes bit-identical on all 2 processes" in log
    assert "taken over" not in log  # the preempted rank 0 released the folder's lock
    assert (out / "model_final.pth").is_file() and not (out / ".protoseg_run.lock").exists()


def test_requeued_job_resumes_the_same_run():
    train_net = load_script("train_net_for_requeue", REPO / "train_net.py")
    args = train_net.get_parser().parse_args(["--config-file", CONFIG, "--submit", "slurm", "OUTPUT_DIR", "o"])
    assert args.resume is False
    delayed = train_net.JobTask(args).checkpoint()
    task = delayed.function
    assert isinstance(task, train_net.JobTask) and delayed.args == () and delayed.kwargs == {}
    assert task.args.resume is True
    assert {k: v for k, v in vars(task.args).items() if k != "resume"} == \
        {k: v for k, v in vars(args).items() if k != "resume"}
