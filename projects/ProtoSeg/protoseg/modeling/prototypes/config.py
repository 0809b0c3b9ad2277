"""Configuration keys of the prototype head and its memory (``MODEL.PROTOSEG``); called by
``add_protoseg_config``.

Defaults are the paper's (Sec. 5.1); where the public reference code differs, the key's comment says
how to get the reference's behaviour (docs/MODEL_ZOO.md lists the differences).
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_prototype_config"]


def add_prototype_config(cfg):
    """Add the ``MODEL.PROTOSEG`` keys to ``cfg`` in place."""
    cfg.MODEL.PROTOSEG = CN()
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
    # Multi-process training, how the ranks update the prototypes: "global" clusters and updates on
    # the global batch (Sinkhorn marginals and prototype sums all-reduced: N processes compute what
    # one process computes on the whole batch); "average" is the reference code's: each rank
    # clusters and updates on its own pixels, then the prototypes are averaged over the ranks (and
    # l2-normalised), so a class seen by 1 of N ranks moves about 1/N as far as with "global".
    cfg.MODEL.PROTOSEG.UPDATE_SYNC = "global"
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
    # Kernels of the training step's scores (class maxima, own-class similarities, PPC log-sum-exp;
    # cosine): "torch" (PyTorch products on the N x C*K similarities, or chunks of them) or "triton"
    # (fused Triton kernels that never hold the N x C*K matrix, prototypes/triton_scores.py; CUDA,
    # or CPU under TRITON_INTERPRET=1; needs the triton package; CHUNK_SIZE does not apply).
    # Inference always uses "torch". Default "torch" until GPU measurements choose.
    cfg.MODEL.PROTOSEG.SCORES_KERNEL = "torch"
    # std of the truncated normal that initialises the prototypes before l2-normalisation
    # (reference code; reference issue #19 asked how prototypes are initialised).
    cfg.MODEL.PROTOSEG.INIT_STD = 0.02
    # Multi-process training: every SYNC_CHECK_PERIOD iterations, check that the prototypes are
    # bit-identical on all ranks (stop with an error if not). 0 disables the check.
    cfg.MODEL.PROTOSEG.SYNC_CHECK_PERIOD = 100
