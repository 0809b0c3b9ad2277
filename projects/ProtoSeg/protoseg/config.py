"""All configuration keys of the project, with their defaults; nothing reads an undeclared key.

Defaults are the paper's (Sec. 5.1, see docs/METHOD.md in the shared docs); where the public
reference code differs, the key's comment says how to get the reference's behaviour.
"""
from detectron2.config import CfgNode as CN
from detectron2.projects.deeplab import add_deeplab_config

from .data.config import add_data_config
from .modeling.backbones.config import add_backbone_config
from .modeling.decoders.config import add_decoder_config
from .modeling.heads.config import add_head_config

__all__ = ["add_protoseg_config"]


def add_protoseg_config(cfg):
    """Add the ProtoSeg keys (and DeepLab's, for the dilated deep-stem ResNet) to ``cfg`` in place."""
    add_deeplab_config(cfg)

    # ---- the prototype head (Sec. 3) --------------------------------------------------------
    cfg.MODEL.PROTOSEG = CN()
    # K, prototypes per class (Table 5b: 1, 5, 10, 20, 50). K = 1: each prototype is the momentum
    # mean of its class's pixels, no clustering.
    cfg.MODEL.PROTOSEG.NUM_PROTOTYPES = 10
    # mu of the momentum update, Eq. 14 (Table 5c: 0, 0.9, 0.99, 0.999, 0.9999).
    cfg.MODEL.PROTOSEG.MOMENTUM = 0.999
    # Sinkhorn-Knopp iterations of the within-class clustering (Algorithm 1).
    cfg.MODEL.PROTOSEG.SINKHORN_ITERS = 3
    # epsilon (kappa) of the entropic regularisation, Eq. 9-10.
    cfg.MODEL.PROTOSEG.SINKHORN_KAPPA = 0.05
    # tau of the PPC loss, Eq. 11. The reference code uses none (set 1.0 to reproduce it).
    cfg.MODEL.PROTOSEG.PPC_TEMPERATURE = 0.1
    # lambda_1, weight of PPC (Eq. 13). Set 0 to switch the loss off (Table 5a).
    cfg.MODEL.PROTOSEG.PPC_WEIGHT = 0.01
    # lambda_2, weight of PPD (Eq. 13); the reference's Cityscapes config uses 0.001.
    cfg.MODEL.PROTOSEG.PPD_WEIGHT = 0.01
    # Iterations at the start of training without prototype learning nor PPC/PPD (reference's
    # "pretrain prototype" option). 0 = learn prototypes from the first iteration.
    cfg.MODEL.PROTOSEG.WARMUP_ITERS = 0
    # Update prototypes only from pixels the model classifies correctly (reference code; the
    # paper is silent). False: from every labelled pixel.
    cfg.MODEL.PROTOSEG.UPDATE_FROM_CORRECT_ONLY = True
    # Hard assignment used for the update: "argmax" of the transport plan (paper), or "gumbel":
    # the reference code's Gumbel-softmax sample (tau 0.5), which makes prototypes collapse
    # (reference issue #15). PPC/PPD targets always use the argmax.
    cfg.MODEL.PROTOSEG.ASSIGNMENT = "argmax"
    # Scaling of the C class scores before softmax: "layernorm" (reference code: LayerNorm over
    # classes with learnable affine, a learned temperature) or "temperature" (fixed 1/T).
    cfg.MODEL.PROTOSEG.CLASS_SCORE_NORM = "layernorm"
    # T of CLASS_SCORE_NORM "temperature".
    cfg.MODEL.PROTOSEG.CLASS_SCORE_TEMPERATURE = 0.1
    # LayerNorm over the D channels of each pixel embedding before the l2-normalisation
    # (reference code's "feat_norm").
    cfg.MODEL.PROTOSEG.FEATURE_LAYERNORM = True
    # Projection of the decoder features: "none" (paper: the decoder output is the embedding),
    # "mlp" (1x1 conv, ReLU, 1x1 conv, D -> D), or "reference_mlp": the reference code's
    # ProjectionHead exactly, the mlp followed by an l2-normalisation over the image WIDTH (its
    # ``F.normalize(proj(x), dim=-1)`` on a (B, D, h, w) tensor; the LayerNorm after it does not undo
    # it). "reference_mlp" is for the reference config and its released checkpoint only.
    cfg.MODEL.PROTOSEG.PROJECTION = "none"
    # Pixel-prototype distance (Table 5d): "cosine" (paper), "euclidean" on unnormalised
    # features, or "huber" (Huberized Euclidean with HUBER_DELTA).
    cfg.MODEL.PROTOSEG.DISTANCE = "cosine"
    cfg.MODEL.PROTOSEG.HUBER_DELTA = 0.1
    # Pixels per chunk of the similarity matrix: 0 keeps one N x C*K matrix (in training for the
    # backward; fastest); > 0 bounds the head's memory to CHUNK_SIZE x C*K, in training (recomputing
    # the product in the backward; cosine) and at inference (for large vocabularies and images,
    # e.g. ADE20K-Full's 847 classes).
    cfg.MODEL.PROTOSEG.CHUNK_SIZE = 0
    # Precision of the pixel-prototype cosine product x @ P^T (training forward, the backward's
    # products for the embeddings' gradient, inference): "float32" (exact; today's behaviour),
    # "tf32" (float32 tensors, TF32 tensor cores for these products only; on CPU = float32) or
    # "bfloat16" (x and P rounded to bfloat16, accumulated and returned in float32: the
    # tensor-core lever on the H200). Class maximum, log-sum-exp, Sinkhorn, the update and the
    # prototype buffer stay float32. Default float32 until GPU measurements choose.
    cfg.MODEL.PROTOSEG.SIMILARITY_PRECISION = "float32"
    # std of the truncated normal that initialises the prototypes before l2-normalisation
    # (reference code; reference issue #19 asked how prototypes are initialised).
    cfg.MODEL.PROTOSEG.INIT_STD = 0.02
    # Multi-process training: every SYNC_CHECK_PERIOD iterations, check that the prototypes are
    # bit-identical on all ranks (stop with an error if not). 0 disables the check.
    cfg.MODEL.PROTOSEG.SYNC_CHECK_PERIOD = 100

    # ---- the parametric baselines (same decoder, learned classifier) -------------------------
    cfg.MODEL.PARAMETRIC = CN()
    # 1: the standard softmax classifier (1x1 conv with bias). K > 1: K learned prototypes per
    # class (1x1 conv to C*K), class score = max over K (Table 4's parametric rows).
    cfg.MODEL.PARAMETRIC.NUM_PROTOTYPES = 1

    # ---- decoders -----------------------------------------------------------------------------
    # Name in protoseg's DECODER_REGISTRY of the module that turns backbone features into the
    # per-pixel embedding (B, D, H/s, W/s) that the classifier (prototypes or parametric) reads.
    cfg.MODEL.SEM_SEG_HEAD.DECODER_NAME = "FCNDecoder"
    # FCN decoder (the paper's FCN baseline, as mmsegmentation's FCNHead): NUM_CONVS 3x3 conv-BN-
    # ReLU of CONVS_DIM channels (CONVS_DIM is Detectron2's key) on IN_FEATURES[-1], then, if
    # CONCAT_INPUT, a 3x3 conv on [input, output]; dropout before the classifier.
    cfg.MODEL.SEM_SEG_HEAD.NUM_CONVS = 2
    cfg.MODEL.SEM_SEG_HEAD.CONCAT_INPUT = True
    cfg.MODEL.SEM_SEG_HEAD.DROPOUT = 0.1

    # ---- solver -------------------------------------------------------------------------------
    # "SGD" (FCN, HRNet in the paper) or "ADAMW" (Swin, SegFormer). Poly schedule: set
    # SOLVER.LR_SCHEDULER_NAME "WarmupPolyLR" and SOLVER.POLY_LR_POWER (DeepLab's keys).
    cfg.SOLVER.OPTIMIZER = "SGD"
    # Weight decay of position embeddings and relative position bias tables (Swin); mmseg's Swin
    # recipe: 0. (Normalisation layers: Detectron2's SOLVER.WEIGHT_DECAY_NORM.)
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    # Learning-rate multiplier of every parameter outside the backbone (decoder, classifier, aux
    # head); mmseg's SegFormer recipe: 10 ("head": lr_mult 10).
    cfg.SOLVER.HEAD_LR_MULTIPLIER = 1.0
    # Longest warm-up, as a fraction of SOLVER.MAX_ITER: the schedule warms up over
    # min(SOLVER.WARMUP_ITERS, floor(MAX_WARMUP_FRACTION * MAX_ITER)) iterations (every
    # LR_SCHEDULER_NAME), with a warning when that is shorter than WARMUP_ITERS. A warm-up ramps
    # towards the learning rate at its end, so the AdamW recipes' 1500 iterations in a short run
    # would otherwise train at ~0 lr. The paper's schedules (1500 of 40k-160k) are unchanged.
    # In (0, 1]; 1.0: never shortened (beyond MAX_ITER itself).
    cfg.SOLVER.MAX_WARMUP_FRACTION = 0.1
    # Metric that selects the best checkpoint (model_best.pth) at each evaluation; "" disables.
    cfg.SOLVER.BEST_CHECKPOINT_METRIC = "sem_seg/mIoU"
    # A step whose loss is NaN/Inf is skipped (parameters, optimizer state and prototypes left
    # unchanged, a warning logged); training stops with FloatingPointError after this many
    # consecutive such steps. 0: stop at the first (Detectron2's behaviour).
    cfg.SOLVER.NONFINITE_SKIP_LIMIT = 10

    # ---- keys owned by their modules -----------------------------------------------------------
    add_backbone_config(cfg)
    add_decoder_config(cfg)
    add_head_config(cfg)
    add_data_config(cfg)
