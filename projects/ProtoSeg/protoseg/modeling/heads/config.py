"""Configuration keys of the segmentation heads: those every head reads (``heads/base.py``), the
prototype head's (``heads/protoseg_head.py``: projection, normalisations, warm-up) and its prototype
memory's (``MODEL.PROTOSEG``, read by ``modeling/prototypes/memory.py``), the auxiliary FCN head's
(``heads/auxiliary.py``) and the parametric baselines' (``heads/parametric_head.py``); applied by
``add_protoseg_config``.

The memory's keys are declared here, by the head that builds the memory, with the prototype
room's own constants: the room (``modeling/prototypes``) imports nothing else of the package.
Defaults are the paper's (Sec. 5.1); where the public reference code differs, the key's meaning says
how to get the reference's behaviour (docs/MODEL_ZOO.md lists the differences).
"""
from ...config_checks import DETECTRON2, Boolean, Integer, Items, Key, Number, OneOf, add_keys, declare
from ..backbones.stages import ALL_STAGES
from ..prototypes.distances import DISTANCES
from ..prototypes.memory import ASSIGNMENTS, SCORES_KERNELS, UPDATE_SYNCS
from ..prototypes.scores import SIMILARITY_PRECISIONS
from .protoseg_head import PROJECTIONS
from .score_norm import CLASS_SCORE_NORMS

__all__ = ["KEYS", "MEMORY_KEYS", "add_head_config"]

#: the prototype memory (modeling/prototypes/memory.py, PrototypeMemory.from_config)
MEMORY_KEYS = declare(__name__, [
    Key("MODEL.PROTOSEG.NUM_PROTOTYPES", 10, Integer(ge=1),
        "K, prototypes per class (Table 5b: 1, 5, 10, 20, 50). K = 1: each prototype is the momentum mean "
        "of its class's pixels, no clustering."),
    Key("MODEL.PROTOSEG.MOMENTUM", 0.999, Number(ge=0, le=1),
        "mu of the momentum update, Eq. 14 (Table 5c: 0, 0.9, 0.99, 0.999, 0.9999)."),
    Key("MODEL.PROTOSEG.SINKHORN_ITERS", 3, Integer(ge=0),
        "Sinkhorn-Knopp iterations of the within-class clustering (Algorithm 1)."),
    Key("MODEL.PROTOSEG.SINKHORN_KAPPA", 0.05, Number(gt=0),
        "epsilon (kappa) of the entropic regularisation, Eq. 9-10."),
    Key("MODEL.PROTOSEG.PPC_TEMPERATURE", 0.1, Number(gt=0),
        "tau of the PPC loss, Eq. 11. The reference code uses none (set 1.0 to reproduce it)."),
    Key("MODEL.PROTOSEG.PPC_WEIGHT", 0.01, Number(ge=0),
        "lambda_1, weight of PPC (Eq. 13). Set 0 to switch the loss off (Table 5a)."),
    Key("MODEL.PROTOSEG.PPD_WEIGHT", 0.01, Number(ge=0),
        "lambda_2, weight of PPD (Eq. 13); the reference's Cityscapes config uses 0.001."),
    Key("MODEL.PROTOSEG.UPDATE_FROM_CORRECT_ONLY", True, Boolean(),
        "Update prototypes only from pixels the model classifies correctly (reference code; the paper is "
        "silent). False: from every labelled pixel."),
    Key("MODEL.PROTOSEG.ASSIGNMENT", "argmax", OneOf(ASSIGNMENTS),
        "Hard assignment used for the update: \"argmax\" of the transport plan (paper), or \"gumbel\": the "
        "reference code's Gumbel-softmax sample (tau 0.5), which makes prototypes collapse (reference issue "
        "#15). PPC/PPD targets always use the argmax."),
    Key("MODEL.PROTOSEG.DISTANCE", "cosine", OneOf(DISTANCES),
        "Pixel-prototype distance (Table 5d): \"cosine\" (paper), \"euclidean\" on unnormalised features, or "
        "\"huber\" (Huberized Euclidean with HUBER_DELTA)."),
    Key("MODEL.PROTOSEG.HUBER_DELTA", 0.1, Number(gt=0),
        "delta of DISTANCE \"huber\"."),
    Key("MODEL.PROTOSEG.CHUNK_SIZE", 0, Integer(ge=0),
        "Pixels per chunk of the similarity matrix: 0 keeps one N x C*K matrix (in training for the backward; "
        "fastest); > 0 bounds the head's memory to CHUNK_SIZE x C*K, in training (recomputing the product in "
        "the backward; cosine) and at inference (for large vocabularies and images, e.g. ADE20K-Full's 847 "
        "classes)."),
    Key("MODEL.PROTOSEG.SIMILARITY_PRECISION", "float32", OneOf(SIMILARITY_PRECISIONS),
        "Precision of the pixel-prototype cosine product x @ P^T (training forward, the backward's products "
        "for the embeddings' gradient, inference): \"float32\" (exact), \"tf32\" (float32 tensors, TF32 "
        "tensor cores for these products only; on CPU = float32) or \"bfloat16\" (x and P rounded to "
        "bfloat16, accumulated and returned in float32: the tensor-core lever on the H200). Class maximum, "
        "log-sum-exp, Sinkhorn, the update and the prototype buffer stay float32. Default float32 until GPU "
        "measurements choose."),
    Key("MODEL.PROTOSEG.SCORES_KERNEL", "torch", OneOf(SCORES_KERNELS),
        "Kernels of the training step's scores (class maxima, own-class similarities, PPC log-sum-exp; "
        "cosine): \"torch\" (PyTorch products on the N x C*K similarities, or chunks of them) or \"triton\" "
        "(fused Triton kernels that never hold the N x C*K matrix, prototypes/triton_scores.py; CUDA, or CPU "
        "under TRITON_INTERPRET=1; needs the triton package; CHUNK_SIZE does not apply). Inference always "
        "uses \"torch\". Default \"torch\" until GPU measurements choose."),
    Key("MODEL.PROTOSEG.UPDATE_SYNC", "global", OneOf(UPDATE_SYNCS),
        "Multi-process training, how the ranks update the prototypes: \"global\" clusters and updates on the "
        "global batch (Sinkhorn marginals and prototype sums all-reduced: N processes compute what one "
        "process computes on the whole batch); \"average\" is the reference code's: each rank clusters and "
        "updates on its own pixels, then the prototypes are averaged over the ranks (and l2-normalised), so "
        "a class seen by 1 of N ranks moves about 1/N as far as with \"global\"."),
    Key("MODEL.PROTOSEG.INIT_STD", 0.02, Number(gt=0),
        "std of the truncated normal that initialises the prototypes before l2-normalisation (reference "
        "code; reference issue #19 asked how prototypes are initialised)."),
])

KEYS = declare(__name__, [
    # ---- every head (heads/base.py) ----
    Key("MODEL.SEM_SEG_HEAD.NUM_CLASSES", DETECTRON2, Integer(ge=1),
        "C, classes of the dataset (Detectron2's key)."),
    Key("MODEL.SEM_SEG_HEAD.IGNORE_VALUE", DETECTRON2, Integer(ge="MODEL.SEM_SEG_HEAD.NUM_CLASSES", le=65535),
        "Label of the pixels without class (Detectron2's key): not a class id, and a value a 16-bit label "
        "map can hold."),
    Key("MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS", [],
        Items(Number(gt=0), length="MODEL.SEM_SEG_HEAD.NUM_CLASSES", or_empty=True),
        "Per-class weights of the CE (and of the auxiliary head's CE): one float > 0 per class, the loss then "
        "being sum_i w_{y_i} l_i / sum_i w_{y_i} over the valid pixels (torch's weighted \"mean\"). Empty: "
        "unweighted (the paper, mmseg). The reference code weights its Cityscapes CE with 19 weights "
        "(tfzhou/ProtoSeg configs/cityscapes/H_48_D_4_proto.json \"ce_weight\")."),
    Key("MODEL.SEM_SEG_HEAD.UPSAMPLE_ALIGN_CORNERS", False, Boolean(),
        "align_corners of the bilinear upsampling of the class scores, for the CE (to the labels' size) and "
        "at inference (to stride x their size). False: mmseg; True: the reference code (lib/loss/"
        "loss_proto.py, segmentor/tester.py ss_test)."),
    # ---- the auxiliary FCN head (heads/auxiliary.py), training only, loss "loss_aux" ----
    Key("MODEL.SEM_SEG_HEAD.AUX_IN_FEATURE", "", OneOf(("",) + tuple(ALL_STAGES)),
        "The backbone feature the auxiliary head reads (\"res4\" in mmseg's FCN and UperNet configs); \"\" = "
        "no auxiliary head (mmseg's HRNet and SegFormer configs)."),
    Key("MODEL.SEM_SEG_HEAD.AUX_LOSS_WEIGHT", 0.4, Number(ge=0),
        "Weight of the auxiliary head's cross-entropy (mmseg: 0.4)."),
    Key("MODEL.SEM_SEG_HEAD.AUX_CHANNELS", 256, Integer(ge=1),
        "Width of the auxiliary head's 3x3 conv-norm-ReLU layers (mmseg: 256)."),
    Key("MODEL.SEM_SEG_HEAD.AUX_NUM_CONVS", 1, Integer(ge=1),
        "Number of those layers (mmseg: 1)."),
    # ---- the prototype head (heads/protoseg_head.py, heads/score_norm.py) ----
    Key("MODEL.PROTOSEG.WARMUP_ITERS", 0, Integer(ge=0),
        "Iterations at the start of training without prototype learning nor PPC/PPD (reference's \"pretrain "
        "prototype\" option). 0 = learn prototypes from the first iteration."),
    Key("MODEL.PROTOSEG.CLASS_SCORE_NORM", "layernorm", OneOf(CLASS_SCORE_NORMS),
        "Scaling of the C class scores before softmax: \"layernorm\" (reference code: LayerNorm over classes "
        "with learnable affine, a learned temperature) or \"temperature\" (fixed 1/T)."),
    Key("MODEL.PROTOSEG.CLASS_SCORE_TEMPERATURE", 0.1, Number(gt=0),
        "T of CLASS_SCORE_NORM \"temperature\"."),
    Key("MODEL.PROTOSEG.FEATURE_LAYERNORM", True, Boolean(),
        "LayerNorm over the D channels of each pixel embedding before the l2-normalisation (reference code's "
        "\"feat_norm\")."),
    Key("MODEL.PROTOSEG.PROJECTION", "none", OneOf(PROJECTIONS),
        "Projection of the decoder features: \"none\" (paper: the decoder output is the embedding), \"mlp\" "
        "(1x1 conv, ReLU, 1x1 conv, D -> D), or \"reference_mlp\": the reference code's ProjectionHead "
        "exactly, the mlp followed by an l2-normalisation over the image WIDTH (its "
        "``F.normalize(proj(x), dim=-1)`` on a (B, D, h, w) tensor; the LayerNorm after it does not undo it). "
        "\"reference_mlp\" is for the reference config and its released checkpoint only."),
    # ---- the parametric baselines (heads/parametric_head.py: same decoder, learned classifier) ----
    Key("MODEL.PARAMETRIC.NUM_PROTOTYPES", 1, Integer(ge=1),
        "1: the standard softmax classifier (1x1 conv with bias). K > 1: K learned prototypes per class (1x1 "
        "conv to C*K), class score = max over K (Table 4's parametric rows)."),
])


def add_head_config(cfg):
    """Add the heads' and the prototype memory's keys to ``cfg`` in place."""
    add_keys(cfg, MEMORY_KEYS)
    add_keys(cfg, KEYS)
