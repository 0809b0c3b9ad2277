"""What a run prints: the summary at the start of log.txt, no escape codes, no known-harmless
warnings, results as plain numbers, and a DataLoader worker's error named first."""
import json
import logging
import os
import shutil
import subprocess
import sys
import warnings
from collections import OrderedDict

import numpy as np
import pytest
from PIL import Image
from torch._utils import ExceptionWrapper

from detectron2.modeling import build_model

import protoseg
from protoseg.data.labels import LabelMapError
from protoseg.engine import Trainer, config_summary, model_summary
from protoseg.engine.console import install_log_filters, run_reporting_worker_errors, worker_error_message
from protoseg.evaluation.report import format_summary_metrics

from conftest import REPO, toy_cfg
from log_records import Records

TOY_CONFIG = str(REPO / "configs" / "toy" / "protoseg_r18-d8_fcn_toy.yaml")
NOISE = ("FutureWarning", "UserWarning", "No CUDA runtime", "Build settings", "np.float64", "OrderedDict")


def train_net(datasets_root, *opts, timeout=300):
    """``train_net.py`` on the toy config in a fresh process, as a user runs it."""
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_root), OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(REPO / "train_net.py"), "--config-file", TOY_CONFIG, *map(str, opts)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def test_a_quickstart_log_starts_with_the_summary_and_ends_with_plain_metrics(toy_dataset, tmp_path):
    proc = train_net(toy_dataset.parent, "SOLVER.MAX_ITER", 4, "SOLVER.IMS_PER_BATCH", 4, "TEST.EVAL_PERIOD", 0,
                     "SOLVER.CHECKPOINT_PERIOD", 1000, "OUTPUT_DIR", tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    text = (tmp_path / "log.txt").read_text()
    head = text.splitlines()[:60]
    assert any("iter: 3" in line and "total_loss" in line for line in head), "\n".join(head)
    for expected in ("Environment: Python", "Device: cpu", "Run configuration (every key: ", "  config     ",
                     "ResNet-18-D8, decoder FCNDecoder, head ProtoSegHead (C=8 classes, K=10 per class)",
                     "batch 4 (4 per process), crop 128x128", "4 iterations, SGD lr 0.1",
                     "warm-up 0 iterations (linear), SOLVER.WARMUP_ITERS 20 capped", "fp32 on cpu",
                     "prototypes C x K x D = 8 x 10 x 64", "Training data: toy_scenes_sem_seg_train, 64 images"):
        assert any(expected in line for line in head), expected
    assert "\x1b[" not in text
    assert "Full config:" not in text and "(backbone): " not in text  # only on request
    assert (tmp_path / "config.yaml").is_file()
    for noise in NOISE:
        assert noise not in proc.stdout + proc.stderr and noise not in text, noise
    last = [line for line in text.splitlines() if "Results on toy_scenes_sem_seg_val: " in line][-1]
    values = last.split("Results on toy_scenes_sem_seg_val: ")[1].split()
    assert values[0::2] == ["mIoU", "fwIoU", "mACC", "pACC"]
    assert all(0 <= float(v) <= 100 for v in values[1::2])


def test_progress_lines_come_after_the_first_iterations_too(toy_dataset, tmp_path):
    cfg = toy_cfg(opts=["DATASETS.TRAIN", ("toy_test_train",), "DATASETS.TEST", (), "SOLVER.MAX_ITER", 7,
                        "SOLVER.IMS_PER_BATCH", 2, "DATALOADER.NUM_WORKERS", 0, "OUTPUT_DIR", str(tmp_path)])
    cfg.freeze()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    with Records("detectron2.utils.events") as records:
        trainer.train()
    printed = [int(m.split("iter: ")[1].split()[0]) for m in records.messages if "iter: " in m and "total_loss" in m]
    assert printed == [0, 4, 6]  # after 1 and 5 iterations, then Detectron2's writer at the end
    assert [m["iteration"] for m in map(json.loads, (tmp_path / "metrics.json").read_text().splitlines())] == [6]


def test_a_bad_label_in_a_data_worker_is_the_first_line_of_the_error(toy_dataset, tmp_path):
    root = tmp_path / "datasets" / "toy_scenes"
    shutil.copytree(toy_dataset, root)
    for label in (root / "annotations_detectron2" / "training").glob("*.png"):
        ids = np.array(Image.open(label))
        ids[:2, :2] = 9  # 8 classes: 9 is neither a class nor the ignore value
        Image.fromarray(ids).save(label)
    out = tmp_path / "run"
    proc = train_net(root.parent, "DATALOADER.NUM_WORKERS", 2, "SOLVER.MAX_ITER", 2, "SOLVER.IMS_PER_BATCH", 2,
                     "OUTPUT_DIR", out)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    first = lines[0]
    assert first.startswith("LabelMapError: label map "), proc.stderr[:2000]
    assert "annotations_detectron2/training/toy_train_" in first and ".png has id(s) [9]" in first
    assert "LabelMapError: label map " in lines[-1] and "has id(s) [9]" in lines[-1]  # the traceback's end
    assert "Caught LabelMapError in DataLoader worker process" in proc.stderr  # the traceback is kept
    assert "Exception during training: LabelMapError: label map " in (out / "log.txt").read_text()


def reraised_from_worker(exc: Exception) -> Exception:
    """``exc`` as torch's DataLoader re-raises it in the main process."""
    try:
        raise exc
    except Exception:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 3")
    with pytest.raises(type(exc)) as info:
        wrapper.reraise()
    return info.value


def test_worker_error_message_is_the_workers_own_error():
    e = reraised_from_worker(LabelMapError("label map a.png has id(s) [9]\nsecond line"))
    assert str(e).startswith("Caught LabelMapError in DataLoader worker process 3.")
    assert worker_error_message(e) == "LabelMapError: label map a.png has id(s) [9]\nsecond line"
    assert worker_error_message(reraised_from_worker(KeyError("file_name"))) == "KeyError: 'file_name'"
    try:  # a chained error: the last one of the traceback, not its cause
        try:
            raise OSError("truncated")
        except OSError as cause:
            raise ValueError("image b.jpg cannot be read") from cause
    except ValueError as chained:
        assert worker_error_message(reraised_from_worker(chained)) == "ValueError: image b.jpg cannot be read"
    assert worker_error_message(ValueError("Caught nothing")) is None


def test_run_reporting_worker_errors_writes_the_message_first_and_reraises(capsys):
    error = reraised_from_worker(LabelMapError("label map a.png has id(s) [9]"))

    def fail():
        raise error

    with pytest.raises(LabelMapError) as info:
        run_reporting_worker_errors(fail)
    assert info.value is error
    assert capsys.readouterr().err.splitlines()[:2] == [
        "LabelMapError: label map a.png has id(s) [9]",
        "(raised in DataLoader worker process 3; the full traceback follows)",
    ]
    assert run_reporting_worker_errors(lambda x: x + 1, 1) == 2


def test_known_warnings_are_filtered_precisely():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        protoseg.filter_known_warnings()
        warnings.warn("`torch.jit.script` is deprecated. Please switch to `torch.compile`", FutureWarning)
        warnings.warn("`torch.jit.script` is deprecated (as a UserWarning it is not the known one)", UserWarning)
        warnings.warn("another deprecation", FutureWarning)
    assert [str(w.message)[:20] for w in caught] == ["`torch.jit.script` i", "another deprecation"]
    with Records("torch.utils.cpp_extension", logging.WARNING) as records:
        logging.getLogger("torch.utils.cpp_extension").warning("No CUDA runtime is found, using CUDA_HOME='/x'")
        logging.getLogger("torch.utils.cpp_extension").warning("something else")
    assert records.messages == ["something else"]


def test_a_fresh_process_importing_protoseg_and_detectron2_is_quiet():
    code = "import protoseg, detectron2.engine, detectron2.modeling, torch.utils.cpp_extension"
    proc = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_config_summary_names_model_data_schedule_and_test_protocol():
    cfg = toy_cfg(opts=["SOLVER.MAX_ITER", 500, "TEST.SLIDING_WINDOW.ENABLED", True, "SOLVER.AMP.ENABLED", True])
    text = config_summary(cfg, "configs/toy/x.yaml", ["SOLVER.MAX_ITER", "500"])
    assert text.splitlines()[1].strip() == "config     configs/toy/x.yaml with SOLVER.MAX_ITER 500"
    assert "warm-up 20 iterations (linear)" in text and "capped" not in text
    assert "AMP (mixed) on cpu" in text
    assert "every 250 iterations and at the end: resize short side 128 (max 1024), sliding window 768x768" in text
    parametric = config_summary(toy_cfg("parametric_r18-d8_fcn_toy.yaml"))
    assert "head ParametricSegHead (C=8 classes, K=1 per class)" in parametric


def test_model_summary_is_one_line_of_sizes():
    proto = model_summary(build_model(toy_cfg()))
    para = model_summary(build_model(toy_cfg("parametric_r18-d8_fcn_toy.yaml")))
    assert "\n" not in proto and "learnable parameters (backbone " in proto
    assert "prototypes C x K x D = 8 x 10 x 64" in proto
    assert "classifier C x K x D = 8 x 1 x 64" in para


def test_print_model_logs_the_modules(monkeypatch):
    cfg = toy_cfg()
    with Records("protoseg") as records:
        Trainer.build_model(cfg)
    assert records.matching("prototypes C x K x D") and not records.matching("Model:\n")
    monkeypatch.setattr(Trainer, "print_model", True)
    with Records("protoseg") as records:
        Trainer.build_model(cfg)
    assert records.matching("Model:\nProtoSegSemanticSegmentor(")


def test_results_are_plain_numbers():
    flat = {"mIoU": np.float64(7.4912), "fwIoU": np.float64(8.0), "IoU-a": np.float64(1.0), "mACC": 20.5, "pACC": 30.25}
    assert format_summary_metrics(flat) == "mIoU 7.49  fwIoU 8.00  mACC 20.50  pACC 30.25"
    install_log_filters()  # what train_net.setup does: Detectron2's evaluator logs its dict as is
    with Records("detectron2.evaluation.sem_seg_evaluation") as records:
        logging.getLogger("detectron2.evaluation.sem_seg_evaluation").info(OrderedDict(sem_seg=flat))
    assert records.messages == ["sem_seg: mIoU 7.49  fwIoU 8.00  mACC 20.50  pACC 30.25"]
