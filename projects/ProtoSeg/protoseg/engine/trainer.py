"""The training and evaluation loop: Detectron2's ``DefaultTrainer`` with the project's loader,
optimizer, schedule, evaluator, per-class report, prototype statistics, best checkpoint and
checkpointer (which refuses weights that do not fit the model)."""
import logging
import os
import weakref
from collections import OrderedDict
from typing import Sequence

from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import DefaultTrainer, TrainerBase, hooks
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint import ProtoSegCheckpointer
from ..data.class_names import model_class_names
from ..data.mapper import SemSegDatasetMapper
from ..evaluation import SemSegReportEvaluator, format_per_class_table
from ..evaluation.report import format_summary_metrics
from ..solver import build_lr_scheduler, build_optimizer
from .console import install_log_filters, model_summary
from .hooks import BestCheckpointHook, EarlyProgressHook, PrototypeStatisticsHook, PrototypeSyncCheckHook
from .launch import broadcast_buffers, create_ddp_model
from .train_loop import ProtoSegTrainLoop

__all__ = ["Trainer", "evaluate_checkpoint"]

logger = logging.getLogger("protoseg")

# detectron2 after v0.6 defines DefaultTrainer.state_dict, which includes the optimizer.
_D2_SAVES_OPTIMIZER = "state_dict" in vars(DefaultTrainer)


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` for ProtoSeg and its parametric baselines.

    Built part by part as ``DefaultTrainer.__init__`` builds it (same order, same calls of the
    ``build_*`` classmethods), with three parts of the project's: the training step is
    :class:`ProtoSegTrainLoop` (skips a non-finite step instead of ending the run; AMP with
    ``SOLVER.AMP.ENABLED``), the DDP wrapper is :func:`create_ddp_model`, which also works for CPU
    processes (gloo), and the checkpointer is :class:`ProtoSegCheckpointer`. The rest (hooks,
    ``train``, ``test``, ``state_dict``, ...) is ``DefaultTrainer``'s.

    The model is logged as one line of sizes (:func:`~protoseg.engine.console.model_summary`);
    set ``Trainer.print_model = True`` (``train_net.py --print-model``) to log its modules too.
    """

    #: log the module tree of every model built, besides its one-line summary
    print_model = False

    def __init__(self, cfg):
        # DefaultTrainer.__init__ (v0.6 to main), step by step, with the project's parts; so not
        # super().__init__, which would build Detectron2's train loop, DDP wrapper and checkpointer.
        TrainerBase.__init__(self)  # hooks list, iter = start_iter = 0
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):  # setup_logger not called yet
            setup_logger()
        install_log_filters()  # (setup_run installs them too; a Trainer may be built without it)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())

        # in Detectron2's order
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)

        model = create_ddp_model(model, broadcast_buffers=False)
        self._trainer = ProtoSegTrainLoop(
            model, data_loader, optimizer, amp=cfg.SOLVER.AMP.ENABLED, skip_limit=cfg.SOLVER.NONFINITE_SKIP_LIMIT
        )

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        # with logs and statistics in OUTPUT_DIR; saves the trainer's state_dict (iteration, hooks, ...)
        self.checkpointer = ProtoSegCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg

        self.register_hooks(self.build_hooks())

    @classmethod
    def build_model(cls, cfg):
        """Detectron2's ``build_model``, logged as one line of sizes (and the modules with
        :attr:`print_model`) instead of Detectron2's print of every module."""
        model = build_model(cfg)
        logger.info(model_summary(model))
        if cls.print_model:
            logger.info("Model:\n%s", model)
        return model

    @classmethod
    def build_train_loader(cls, cfg):
        """Detectron2's loader with the project's mapper; the number of training images logged."""
        dataset = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
        logger.info("Training data: %s, %d images", " + ".join(cfg.DATASETS.TRAIN), len(dataset))
        return build_detection_train_loader(cfg, mapper=SemSegDatasetMapper(cfg, is_train=True), dataset=dataset)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        # no labels: the evaluator reads (and checks) each ground truth once, at full resolution
        mapper = SemSegDatasetMapper(cfg, is_train=False, load_labels=False)
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """Detectron2's ``SemSegEvaluator`` metrics; its report (per-class IoU CSV and bar chart,
        confusion matrix, most confused pairs) goes to ``output_folder``, by default
        ``<OUTPUT_DIR>/inference/<dataset_name>``. The classes are the model's
        (:func:`~protoseg.data.class_names.model_class_names`; the held-out ones ignored)."""
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return SemSegReportEvaluator(
            dataset_name, distributed=True, output_dir=None, report_dir=output_folder,
            class_names=model_class_names(cfg, dataset_name), held_out_classes=cfg.INPUT.HELD_OUT_CLASSES,
        )

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)

    def build_hooks(self):
        hook_list = super().build_hooks()
        extra = [PrototypeStatisticsHook(period=20), PrototypeSyncCheckHook(self.cfg.MODEL.PROTOSEG.SYNC_CHECK_PERIOD)]
        if self.cfg.SOLVER.BEST_CHECKPOINT_METRIC and self.cfg.TEST.EVAL_PERIOD > 0 and comm.is_main_process():
            extra.append(
                BestCheckpointHook(
                    self.cfg.TEST.EVAL_PERIOD, self.checkpointer, self.cfg.SOLVER.BEST_CHECKPOINT_METRIC, "max"
                )
            )
        if comm.is_main_process():
            extra.append(EarlyProgressHook(self.max_iter))
        # After the EvalHook (it produces the metric), before the writers (they print it).
        writer_index = next((i for i, h in enumerate(hook_list) if isinstance(h, hooks.PeriodicWriter)), len(hook_list))
        return hook_list[:writer_index] + extra + hook_list[writer_index:]

    def resume_or_load(self, resume: bool = True, *, skip_weights: Sequence[str] = ()):
        """Detectron2's: with ``resume`` and a ``last_checkpoint`` in ``OUTPUT_DIR``, continue from
        it (every key checked); otherwise initialise the model from ``MODEL.WEIGHTS``, where a
        backbone-only file initialises the backbone and the keys under the ``skip_weights`` module
        prefixes are left out (see :meth:`ProtoSegCheckpointer.resume_or_load`).

        A checkpoint that has trained all ``SOLVER.MAX_ITER`` iterations (a finished run, e.g. one
        stopped during its final evaluation) is resumed with a warning: no iteration is trained and
        no checkpoint written, only the final evaluation runs again.

        Raises:
            ValueError: the checkpoint has trained more iterations than ``SOLVER.MAX_ITER``.
        """
        self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume, skip_weights=skip_weights)
        if not (resume and self.checkpointer.has_checkpoint()):
            return
        # the checkpoint holds the iteration that had just finished
        self.start_iter = self.iter + 1
        checkpoint = self.checkpointer.get_checkpoint_file()
        if self.start_iter > self.max_iter:
            raise ValueError(
                f"--resume: {checkpoint} has trained {self.start_iter} iterations, more than SOLVER.MAX_ITER "
                f"{self.max_iter}: nothing to train. To train longer, set SOLVER.MAX_ITER above {self.start_iter} "
                f"(the schedule follows MAX_ITER); to score the checkpoint, run with --eval-only --resume; to "
                f"train a shorter schedule, leave --resume out and give another OUTPUT_DIR"
            )
        if self.start_iter == self.max_iter:
            logger.warning(
                "--resume: %s has trained all %d iterations of SOLVER.MAX_ITER: nothing to train. Only the final "
                "evaluation runs again, and no checkpoint is written. To train longer, raise SOLVER.MAX_ITER",
                checkpoint, self.max_iter,
            )
            self._hooks = [h for h in self._hooks if not isinstance(h, (hooks.PeriodicCheckpointer, BestCheckpointHook))]

    def state_dict(self):
        """Detectron2 v0.6's DefaultTrainer leaves the optimizer out of its checkpoints, so
        ``--resume`` would restart SGD momentum / Adam moments from zero; later detectron2 saves it
        under "_trainer" itself. Here it is added only where the installed version does not."""
        state = super().state_dict()
        if not _D2_SAVES_OPTIMIZER:
            state["_trainer"] = self._trainer.state_dict()
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if _D2_SAVES_OPTIMIZER:
            return
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        else:
            logger.warning("checkpoint has no optimizer state: the optimizer starts afresh")

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluate on ``cfg.DATASETS.TEST`` and log, for each, a per-class IoU table and last
        the dataset's metrics as plain numbers ("Results on NAME: mIoU 41.23  fwIoU ...") (the
        evaluator of :meth:`build_evaluator` writes the report files).

        The model of a multi-process training (DDP-wrapped) first takes rank 0's buffers on every
        rank (:func:`~protoseg.engine.launch.broadcast_buffers`): each rank keeps its own BatchNorm
        statistics while training, and the evaluation, sharded over the ranks, must score one
        model, the one rank 0 saves."""
        broadcast_buffers(model)
        results = super().test(cfg, model, evaluators)
        if comm.is_main_process() and len(cfg.DATASETS.TEST) > 0:  # DATASETS.TEST () skips evaluation
            per_dataset = results if len(cfg.DATASETS.TEST) > 1 else {cfg.DATASETS.TEST[0]: results}
            for name, res in per_dataset.items():
                if "sem_seg" not in res:
                    continue
                classes = model_class_names(cfg, name)
                logger.info("Per-class results on %s:\n%s", name, format_per_class_table(res["sem_seg"], classes))
                logger.info("Results on %s: %s", name, format_summary_metrics(res["sem_seg"]))
        return results if isinstance(results, OrderedDict) else OrderedDict(results)


def evaluate_checkpoint(cfg, allow_random_weights: bool = False, resume: bool = False):
    """``--eval-only``: load the weights (every key of the model checked) and evaluate. The
    weights are ``cfg.MODEL.WEIGHTS``; with ``resume`` (``--eval-only --resume``) the last
    checkpoint of ``cfg.OUTPUT_DIR`` (its ``last_checkpoint``), and ``MODEL.WEIGHTS`` where
    there is none. The file scored is logged.

    Raises:
        ValueError: no weights (``cfg.MODEL.WEIGHTS`` empty and, with ``resume``, no checkpoint in
            ``OUTPUT_DIR``) and not ``allow_random_weights``: the scores of a randomly initialised
            model would be reported as the model's.
    """
    model = Trainer.build_model(cfg)
    checkpointer = ProtoSegCheckpointer(model, cfg.OUTPUT_DIR, save_to_disk=False)
    weights = cfg.MODEL.WEIGHTS
    if resume and cfg.OUTPUT_DIR and checkpointer.has_checkpoint():
        weights = checkpointer.get_checkpoint_file()
        logger.info("--eval-only --resume: scoring the last checkpoint of OUTPUT_DIR, %s", weights)
    elif resume:
        logger.info(
            "--eval-only --resume: no last_checkpoint in %s; scoring MODEL.WEIGHTS %s", cfg.OUTPUT_DIR, weights or "(empty)"
        )
    if not weights:
        if not allow_random_weights:
            raise ValueError(
                "--eval-only without MODEL.WEIGHTS would evaluate a randomly initialised model: pass the "
                "checkpoint (... --eval-only MODEL.WEIGHTS path/to/model_final.pth), or --resume to score the last "
                "checkpoint of OUTPUT_DIR, or --allow-random-weights to score the random model on purpose"
            )
        logger.warning("--allow-random-weights: evaluating a randomly initialised model (MODEL.WEIGHTS is empty)")
    else:
        logger.info("Evaluating %s", weights)
        checkpointer.load(weights, checkpointables=[])
    return Trainer.test(cfg, model)
