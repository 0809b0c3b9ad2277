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
from ..config import load_config
from ..data.class_names import model_class_names
from ..data.mapper import SemSegDatasetMapper
from ..evaluation import SemSegReportEvaluator, format_per_class_table
from ..evaluation.report import format_summary_metrics
from ..solver import build_lr_scheduler, build_optimizer
from .console import model_summary, setup_run
from .hooks import BestCheckpointHook, PrototypeStatisticsHook, PrototypeSyncCheckHook
from .launch import create_ddp_model
from .train_loop import ProtoSegTrainLoop

__all__ = ["Trainer", "setup_cfg", "evaluate_checkpoint"]

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
        # After the EvalHook (it produces the metric), before the writers (they print it).
        writer_index = next((i for i, h in enumerate(hook_list) if isinstance(h, hooks.PeriodicWriter)), len(hook_list))
        return hook_list[:writer_index] + extra + hook_list[writer_index:]

    def resume_or_load(self, resume: bool = True, *, skip_weights: Sequence[str] = ()):
        """Detectron2's: with ``resume`` and a ``last_checkpoint`` in ``OUTPUT_DIR``, continue from
        it (every key checked); otherwise initialise the model from ``MODEL.WEIGHTS``, where a
        backbone-only file initialises the backbone and the keys under the ``skip_weights`` module
        prefixes are left out (see :meth:`ProtoSegCheckpointer.resume_or_load`)."""
        self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume, skip_weights=skip_weights)
        if resume and self.checkpointer.has_checkpoint():
            # the checkpoint holds the iteration that had just finished
            self.start_iter = self.iter + 1

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
        evaluator of :meth:`build_evaluator` writes the report files)."""
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


def setup_cfg(args):
    """Config from ``args.config_file`` and ``args.opts`` with the project's keys, then the setup
    of Detectron2's ``default_setup`` (output dir, loggers, ``config.yaml``, seed) with a summary
    of the environment and the config (:func:`~protoseg.engine.console.setup_run`; the full config
    is logged too when ``args.print_config``)."""
    cfg = load_config(args.config_file, args.opts, freeze=True)
    setup_run(cfg, args, print_config=getattr(args, "print_config", False))
    return cfg


def evaluate_checkpoint(cfg, allow_random_weights: bool = False):
    """``--eval-only``: load ``cfg.MODEL.WEIGHTS`` (every key of the model checked) and evaluate.

    Raises:
        ValueError: ``cfg.MODEL.WEIGHTS`` is empty and not ``allow_random_weights``: the scores of
            a randomly initialised model would be reported as the model's.
    """
    if not cfg.MODEL.WEIGHTS:
        if not allow_random_weights:
            raise ValueError(
                "--eval-only without MODEL.WEIGHTS would evaluate a randomly initialised model: pass the "
                "checkpoint (... --eval-only MODEL.WEIGHTS path/to/model_final.pth), or --allow-random-weights "
                "to score the random model on purpose"
            )
        logger.warning("--allow-random-weights: evaluating a randomly initialised model (MODEL.WEIGHTS is empty)")
    model = Trainer.build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        ProtoSegCheckpointer(model).load(cfg.MODEL.WEIGHTS, checkpointables=[])
    return Trainer.test(cfg, model)
