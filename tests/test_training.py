"""End to end on the toy scenes: training learns, evaluation reports, resume restores everything."""
import json
import os
import subprocess
import sys

import pytest
import torch

from detectron2.engine import HookBase
from detectron2.utils.env import seed_all_rng

from protoseg.engine import Trainer

from conftest import REPO, load_script, toy_cfg
from log_records import Records

CHANCE_MIOU = 100.0 / 8


train_net = load_script("train_net", REPO / "train_net.py")


def trainer_cfg(tmp_path, max_iter, name="protoseg_r18-d8_fcn_toy.yaml", opts=()):
    cfg = toy_cfg(name, [
        "DATASETS.TRAIN", ("toy_test_train",), "DATASETS.TEST", ("toy_test_val",),
        "SOLVER.MAX_ITER", max_iter, "TEST.EVAL_PERIOD", 0, "OUTPUT_DIR", str(tmp_path),
        "DATALOADER.NUM_WORKERS", 0, *opts,
    ])
    cfg.freeze()
    return cfg


def read_metrics(output_dir):
    with open(output_dir / "metrics.json") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def trained(toy_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    cfg = trainer_cfg(out, max_iter=TRAIN_ITERS, opts=["SOLVER.CHECKPOINT_PERIOD", 10000])
    seed_all_rng(0)  # model initialisation and data order (train_net.py does this via SEED)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = Trainer.test(cfg, trainer.model)
    return out, trainer, results


TRAIN_ITERS = 200


def test_loss_falls_and_miou_rises_well_above_chance(trained):
    out, _, results = trained
    metrics = [m for m in read_metrics(out) if "loss_ce" in m]
    first, last = metrics[0], metrics[-1]
    assert last["loss_ce"] < 0.7 * first["loss_ce"]
    assert all(k in last for k in ("loss_ppc", "loss_ppd", "proto/intra_class_cosine", "proto/used_share"))
    miou = results["sem_seg"]["mIoU"]
    print(f"toy mIoU after {TRAIN_ITERS} iterations: {miou:.1f}")
    assert miou > 3 * CHANCE_MIOU, f"mIoU {miou:.1f} after {TRAIN_ITERS} iterations"
    table = (out / "inference" / "toy_test_val" / "per_class_iou.csv").read_text().splitlines()
    assert table[0] == "class,IoU,ACC" and len(table) == 1 + 8


def test_prototypes_stay_diverse_and_used(trained):
    _, trainer, _ = trained
    memory = trainer.model.sem_seg_head.memory
    # not collapsed (reference issue #15 reports ~1.0); the classes are compact, so prototypes are close
    assert memory.intra_class_cosine().item() < 0.95
    assert torch.allclose(memory.prototypes.norm(dim=-1), torch.ones(8, 10), atol=1e-5)


class StopAt(HookBase):
    """Simulates a crash after iteration ``it``."""

    def __init__(self, it):
        self.it = it

    def after_step(self):
        if self.trainer.iter == self.it:
            raise KeyboardInterrupt("simulated crash")


def test_resume_restores_prototypes_optimizer_schedule_and_iteration(toy_dataset, tmp_path):
    cfg = trainer_cfg(tmp_path, max_iter=8, opts=["SOLVER.CHECKPOINT_PERIOD", 4])
    crashed = Trainer(cfg)
    crashed.resume_or_load(resume=False)
    crashed.register_hooks([StopAt(5)])
    with pytest.raises(KeyboardInterrupt):
        crashed.train()
    saved = torch.load(tmp_path / "model_0000003.pth", weights_only=False)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"

    resumed = Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 4
    head = resumed.model.sem_seg_head
    assert torch.equal(head.memory.prototypes, saved["model"]["sem_seg_head.memory.prototypes"])
    assert int(head.iteration) == 4
    opt_state = resumed.optimizer.state_dict()["state"]
    saved_state = saved["trainer"]["_trainer"]["optimizer"]["state"]
    assert opt_state.keys() == saved_state.keys()
    assert all(torch.equal(opt_state[k]["momentum_buffer"], saved_state[k]["momentum_buffer"]) for k in opt_state)
    assert resumed.scheduler.state_dict() == saved["trainer"]["hooks"]["LRScheduler"]
    assert resumed.scheduler.state_dict()["last_epoch"] == 4
    resumed.train()
    assert resumed.iter == 8 and int(head.iteration) == 8


def test_resume_continues_from_the_latest_checkpoint_not_the_best(toy_dataset, tmp_path):
    """model_best.pth (written at each improving evaluation) must not become last_checkpoint:
    here it is written at iteration 3, after the periodic checkpoint of iteration 2."""
    cfg = trainer_cfg(tmp_path, max_iter=8, opts=[
        "SOLVER.CHECKPOINT_PERIOD", 3, "TEST.EVAL_PERIOD", 4, "SOLVER.IMS_PER_BATCH", 2, "INPUT.CROP.SIZE", (64, 64),
    ])
    crashed = Trainer(cfg)
    crashed.resume_or_load(resume=False)
    crashed.register_hooks([StopAt(3)])
    with pytest.raises(KeyboardInterrupt):
        crashed.train()
    assert torch.load(tmp_path / "model_best.pth", weights_only=False)["iteration"] == 3
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"

    resumed = Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 3
    assert (tmp_path / "model_best.pth").exists()


def test_eval_only_refuses_to_score_a_model_without_weights(toy_dataset, tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(toy_dataset.parent))
    cmd = [sys.executable, str(REPO / "train_net.py"), "--eval-only",
           "--config-file", str(REPO / "configs" / "toy" / "protoseg_r18-d8_fcn_toy.yaml"), "OUTPUT_DIR", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "--eval-only without MODEL.WEIGHTS" in proc.stderr and "--allow-random-weights" in proc.stderr
    assert "Per-class results" not in (tmp_path / "log.txt").read_text()


def test_eval_only_scores_random_weights_when_asked(toy_dataset, tmp_path):
    args = train_net.get_parser().parse_args([
        "--eval-only", "--allow-random-weights", "--config-file", str(REPO / "configs" / "toy" / "protoseg_r18-d8_fcn_toy.yaml"),
        "OUTPUT_DIR", str(tmp_path), "DATASETS.TEST", "('toy_test_val',)",
    ])
    with Records("protoseg") as records:
        results = train_net.main(args)
    assert records.matching("--allow-random-weights: evaluating a randomly initialised model")
    assert results["sem_seg"]["mIoU"] < 50


def test_train_net_options_come_before_the_config_overrides():
    args = train_net.get_parser().parse_args([
        "--config-file", "c.yaml", "--skip-weights", "sem_seg_head.classifier", "--skip-weights", "sem_seg_head.aux",
        "MODEL.WEIGHTS", "w.pth",
    ])
    assert args.skip_weights == ["sem_seg_head.classifier", "sem_seg_head.aux"]
    assert args.opts == ["MODEL.WEIGHTS", "w.pth"] and not args.allow_random_weights


def test_train_net_eval_only_reproduces_the_final_evaluation(trained, toy_dataset):
    # the command line users run: train_net.py --eval-only MODEL.WEIGHTS ... (fresh process)
    out, _, results = trained
    env = dict(os.environ, DETECTRON2_DATASETS=str(toy_dataset.parent))
    cmd = [
        sys.executable, str(REPO / "train_net.py"), "--eval-only",
        "--config-file", str(REPO / "configs" / "toy" / "protoseg_r18-d8_fcn_toy.yaml"),
        "MODEL.WEIGHTS", str(out / "model_final.pth"), "OUTPUT_DIR", str(out / "eval_only"),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / "eval_only" / "log.txt").read_text()
    assert "Per-class results on toy_scenes_sem_seg_val" in log
    line = next(l for l in log.splitlines() if "copypaste: " in l and l.split("copypaste: ")[1][:1].isdigit())
    miou = float(line.split("copypaste: ")[1].split(",")[0])
    assert miou == pytest.approx(results["sem_seg"]["mIoU"], abs=1e-3)


def test_no_test_dataset_means_no_evaluation():
    """DATASETS.TEST () (e.g. a speed run on a training set only) skips evaluation instead of failing."""
    from detectron2.modeling import build_model

    cfg = toy_cfg(opts=["DATASETS.TEST", "()"])
    assert Trainer.test(cfg, build_model(cfg)) == {}


# ---- the command line: --help, --eval-only --resume, --resume of a finished schedule ------------
def test_train_net_help_lists_the_options_without_importing_torch():
    wrapper = (
        "import runpy, sys\n"
        f"sys.argv = ['train_net.py', '--help']\n"
        "try:\n"
        f"    runpy.run_path({str(REPO / 'train_net.py')!r}, run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    print('exit', e.code, 'torch' in sys.modules, 'detectron2' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for option in ("--config-file FILE", "--resume", "--eval-only", "--num-gpus", "--skip-weights PREFIX", "opts"):
        assert option in proc.stdout
    assert proc.stdout.splitlines()[-1] == "exit 0 False False"


def test_train_net_parses_detectron2s_options_as_detectron2_does():
    from detectron2.engine import default_argument_parser

    argv = ["--config-file", "c.yaml", "--resume", "--num-gpus", "2", "--num-machines", "2", "--machine-rank", "1",
            "SOLVER.MAX_ITER", "5"]
    for given in ([], argv, ["--eval-only", "--dist-url", "auto"]):
        ours, theirs = vars(train_net.get_parser().parse_args(given)), vars(default_argument_parser().parse_args(given))
        assert {k: ours[k] for k in theirs} == theirs


def finished_run(out, max_iter=2, *extra, opts=()):
    """train_net.main of a tiny run (checkpoint and evaluation every 2 iterations) into ``out``."""
    args = train_net.get_parser().parse_args([
        *extra, "--config-file", str(REPO / "configs" / "toy" / "protoseg_r18-d8_fcn_toy.yaml"),
        "DATASETS.TRAIN", "('toy_test_train',)", "DATASETS.TEST", "('toy_test_val',)", "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.MAX_ITER", str(max_iter), "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.EVAL_PERIOD", "2", "OUTPUT_DIR", str(out), *opts,
    ])
    return train_net.main(args)


def saved_files(out):
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir() if p.suffix == ".pth" or p.name == "last_checkpoint"}


def test_resume_with_max_iter_below_the_checkpoint_is_refused(toy_dataset, tmp_path):
    finished_run(tmp_path, 4)
    before = saved_files(tmp_path)
    assert {"model_0000001.pth", "model_0000003.pth", "model_final.pth", "model_best.pth"} <= set(before)
    with pytest.raises(ValueError) as error:
        finished_run(tmp_path, 2, "--resume")
    message = str(error.value)
    assert f"--resume: {tmp_path / 'model_final.pth'} has trained 4 iterations, more than SOLVER.MAX_ITER 2" in message
    assert "set SOLVER.MAX_ITER above 4" in message and "--eval-only --resume" in message
    assert saved_files(tmp_path) == before


def test_resume_of_a_finished_run_warns_evaluates_again_and_writes_no_checkpoint(toy_dataset, tmp_path):
    finished_run(tmp_path, 2)
    before = saved_files(tmp_path)
    with Records("protoseg") as records:
        finished_run(tmp_path, 2, "--resume")
    [warning] = records.matching("has trained all 2 iterations of SOLVER.MAX_ITER: nothing to train")
    assert str(tmp_path / "model_final.pth") in warning
    assert saved_files(tmp_path) == before  # model_best.pth included
    final, again = [{k: v for k, v in m.items() if k.startswith("sem_seg/")} for m in read_metrics(tmp_path) if "sem_seg/mIoU" in m]
    assert len(final) == 20 and again == pytest.approx(final)  # the same final evaluation, of the same model


def test_eval_only_resume_scores_the_last_checkpoint_of_the_output_dir(toy_dataset, tmp_path):
    finished_run(tmp_path / "run", 2)
    [final] = [m["sem_seg/mIoU"] for m in read_metrics(tmp_path / "run") if "sem_seg/mIoU" in m]
    with Records("protoseg") as records:
        scored = finished_run(tmp_path / "run", 2, "--eval-only", "--resume")
    assert records.matching(f"--eval-only --resume: scoring the last checkpoint of OUTPUT_DIR, {tmp_path / 'run' / 'model_final.pth'}")
    assert scored["sem_seg"]["mIoU"] == pytest.approx(final, abs=1e-6)

    # no checkpoint in OUTPUT_DIR: MODEL.WEIGHTS, logged so
    with Records("protoseg") as records:
        fallback = finished_run(tmp_path / "other", 2, "--eval-only", "--resume",
                                opts=["MODEL.WEIGHTS", str(tmp_path / "run" / "model_final.pth")])
    assert records.matching(f"no last_checkpoint in {tmp_path / 'other'}; scoring MODEL.WEIGHTS {tmp_path / 'run' / 'model_final.pth'}")
    assert fallback["sem_seg"]["mIoU"] == pytest.approx(final, abs=1e-6)

    # neither: refused as without --resume
    with pytest.raises(ValueError, match="--eval-only without MODEL.WEIGHTS would evaluate a randomly initialised model"):
        finished_run(tmp_path / "empty", 2, "--eval-only", "--resume")
