"""Configuration keys of the segmentation heads: those every head reads (``heads/base.py``), the
auxiliary FCN head's (``heads/auxiliary.py``) and the parametric baselines'
(``heads/parametric_head.py``); called by ``add_protoseg_config``. The prototype head's keys are
``MODEL.PROTOSEG`` (``modeling/prototypes/config.py``)."""
from detectron2.config import CfgNode as CN

__all__ = ["add_head_config"]


def add_head_config(cfg):
    """Add the keys shared by all heads to ``cfg`` in place."""
    head = cfg.MODEL.SEM_SEG_HEAD
    # Per-class weights of the CE (and of the auxiliary head's CE): one float > 0 per class, the
    # loss then being sum_i w_{y_i} l_i / sum_i w_{y_i} over the valid pixels (torch's weighted
    # "mean"). Empty: unweighted (the paper, mmseg). The reference code weights its Cityscapes CE
    # with 19 weights (tfzhou/ProtoSeg configs/cityscapes/H_48_D_4_proto.json "ce_weight").
    # Checked when the head is built: NUM_CLASSES values, all finite and > 0.
    head.CLASS_WEIGHTS = []
    # align_corners of the bilinear upsampling of the class scores, for the CE (to the labels'
    # size) and at inference (to stride x their size). False: mmseg; True: the reference code
    # (lib/loss/loss_proto.py, segmentor/tester.py ss_test).
    head.UPSAMPLE_ALIGN_CORNERS = False

    # Auxiliary FCN head (heads/auxiliary.py), training only, loss "loss_aux": the backbone
    # feature it reads ("res4" in mmseg's FCN and UperNet configs), "" = no auxiliary head (mmseg's
    # HRNet and SegFormer configs).
    head.AUX_IN_FEATURE = ""
    # Weight of its cross-entropy (mmseg: 0.4).
    head.AUX_LOSS_WEIGHT = 0.4
    # Width of its 3x3 conv-norm-ReLU layers (mmseg: 256).
    head.AUX_CHANNELS = 256
    # Number of those layers (mmseg: 1).
    head.AUX_NUM_CONVS = 1

    # ---- the parametric baselines (same decoder, learned classifier) ----
    cfg.MODEL.PARAMETRIC = CN()
    # 1: the standard softmax classifier (1x1 conv with bias). K > 1: K learned prototypes per
    # class (1x1 conv to C*K), class score = max over K (Table 4's parametric rows).
    cfg.MODEL.PARAMETRIC.NUM_PROTOTYPES = 1
