"""MODEL.SEM_SEG_HEAD.NUM_CLASSES against the class lists of a run's datasets
(protoseg/data/class_count.py): refused when train_net.py starts, not at the first evaluation."""
import os
import subprocess
import sys
import time

import pytest

from protoseg.data.class_count import dataset_class_count_problems

from conftest import REPO, toy_cfg

TOY_CONFIG = REPO / "configs" / "toy" / "protoseg_r18-d8_fcn_toy.yaml"


@pytest.mark.parametrize("mode", [[], ["--eval-only", "--allow-random-weights"]], ids=["train", "eval-only"])
def test_train_net_refuses_more_classes_than_the_datasets_at_start(toy_dataset, tmp_path, mode):
    env = dict(os.environ, DETECTRON2_DATASETS=str(toy_dataset.parent))
    cmd = [sys.executable, str(REPO / "train_net.py"), *mode, "--config-file", str(TOY_CONFIG),
           "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "9", "OUTPUT_DIR", str(tmp_path / "run"), "SOLVER.MAX_ITER", "2"]
    start = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    for split, name in (("TRAIN", "toy_scenes_sem_seg_train"), ("TEST", "toy_scenes_sem_seg_val")):
        assert (f"MODEL.SEM_SEG_HEAD.NUM_CLASSES is 9 but dataset '{name}' (DATASETS.{split}) has 8 classes"
                in proc.stderr), proc.stderr[-3000:]
    assert not (tmp_path / "run").exists()  # refused before the run's folder, model or loader
    assert elapsed < 60


def test_datasets_without_a_known_class_list_are_left_to_the_loader():
    """Not registered, or registered without stuff_classes (Detectron2's COCO detection splits)."""
    cfg = toy_cfg(opts=["DATASETS.TRAIN", ("not_registered_anywhere",), "DATASETS.TEST", ("coco_2017_val",),
                        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 9])
    assert dataset_class_count_problems(cfg) == []
    cfg.merge_from_list(["DATASETS.TEST", ("toy_scenes_sem_seg_val", "cityscapes_fine_sem_seg_val")])
    assert dataset_class_count_problems(cfg) == [
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES is 9 but dataset 'toy_scenes_sem_seg_val' (DATASETS.TEST) has 8 classes "
        "(stuff_classes)",
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES is 9 but dataset 'cityscapes_fine_sem_seg_val' (DATASETS.TEST) has 19 "
        "classes (stuff_classes)",
    ]
