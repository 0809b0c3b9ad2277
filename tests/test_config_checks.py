"""protoseg/config_checks.py: every declared key refuses a bad value with a message naming the key,
the value and what is allowed; all problems come in one error; the defaults and every shipped config
pass; every key the project adds is declared once, and nothing unread is declared."""
import pytest

from detectron2.config import get_cfg
from detectron2.modeling import build_model

from protoseg.config import declared_keys, load_config
from protoseg.config_checks import (
    DETECTRON2, KEYS, AllOf, Boolean, Items, Key, Matches, Number, OneOf, Registered, Subset, When, lookup,
    check_config, config_problems, declare,
)

from conftest import REPO, toy_cfg

CONFIG_FILES = sorted((REPO / "configs").rglob("*.yaml"))

# (key, bad value, what the message says is allowed): every rule at least once
BAD_VALUES = [
    ("MODEL.PROTOSEG.NUM_PROTOTYPES", 0, "must be an integer >= 1"),
    ("MODEL.PROTOSEG.NUM_PROTOTYPES", 2.5, "must be an integer >= 1"),
    ("MODEL.PROTOSEG.MOMENTUM", 1.5, "must be a number in [0, 1]"),
    ("MODEL.PROTOSEG.MOMENTUM", True, "must be a number in [0, 1]"),
    ("MODEL.PROTOSEG.MOMENTUM", float("nan"), "must be a number in [0, 1]"),
    ("MODEL.PROTOSEG.SINKHORN_ITERS", -1, "must be an integer >= 0"),
    ("MODEL.PROTOSEG.SINKHORN_KAPPA", 0.0, "must be a number > 0"),
    ("MODEL.PROTOSEG.PPC_TEMPERATURE", -0.1, "must be a number > 0"),
    ("MODEL.PROTOSEG.PPC_WEIGHT", -0.01, "must be a number >= 0"),
    ("MODEL.PROTOSEG.PPD_WEIGHT", "0.01", "must be a number >= 0"),
    ("MODEL.PROTOSEG.WARMUP_ITERS", -100, "must be an integer >= 0"),
    ("MODEL.PROTOSEG.UPDATE_FROM_CORRECT_ONLY", 1, "must be True or False"),
    ("MODEL.PROTOSEG.UPDATE_SYNC", "sum", "must be one of 'global', 'average'"),
    ("MODEL.PROTOSEG.ASSIGNMENT", "softmax", "must be one of 'argmax', 'gumbel'"),
    ("MODEL.PROTOSEG.CLASS_SCORE_NORM", "LayerNorm", "must be one of 'layernorm', 'temperature'"),
    ("MODEL.PROTOSEG.CLASS_SCORE_TEMPERATURE", 0, "must be a number > 0"),
    ("MODEL.PROTOSEG.FEATURE_LAYERNORM", "yes", "must be True or False"),
    ("MODEL.PROTOSEG.PROJECTION", "linear", "must be one of 'none', 'mlp', 'reference_mlp'"),
    ("MODEL.PROTOSEG.DISTANCE", "l2", "must be one of 'cosine', 'euclidean', 'huber'"),
    ("MODEL.PROTOSEG.HUBER_DELTA", 0.0, "must be a number > 0"),
    ("MODEL.PROTOSEG.CHUNK_SIZE", -4096, "must be an integer >= 0"),
    ("MODEL.PROTOSEG.SIMILARITY_PRECISION", "fp16", "must be one of 'float32', 'tf32', 'bfloat16'"),
    ("MODEL.PROTOSEG.SCORES_KERNEL", "cuda", "must be one of 'torch', 'triton'"),
    ("MODEL.PROTOSEG.INIT_STD", -0.02, "must be a number > 0"),
    ("MODEL.PROTOSEG.SYNC_CHECK_PERIOD", -1, "must be an integer >= 0"),
    ("MODEL.PARAMETRIC.NUM_PROTOTYPES", 0, "must be an integer >= 1"),
    ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", 0, "must be an integer >= 1"),
    ("MODEL.SEM_SEG_HEAD.IGNORE_VALUE", 3, "must be an integer in [MODEL.SEM_SEG_HEAD.NUM_CLASSES (54), 65535]"),
    ("MODEL.SEM_SEG_HEAD.IGNORE_VALUE", 65536, "must be an integer in [MODEL.SEM_SEG_HEAD.NUM_CLASSES (54), 65535]"),
    ("MODEL.SEM_SEG_HEAD.CLASS_NAMES", ["a", "b"], "must be MODEL.SEM_SEG_HEAD.NUM_CLASSES (54) strings, or empty"),
    ("INPUT.HELD_OUT_CLASSES", -1, "must be an integer >= 0"),
    ("TEST.UNKNOWN_SCORE", "entropy", "must be one of '', 'nearest_prototype', 'max_softmax', 'max_logit'"),
    ("MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS", [1.0, 2.0], "must be MODEL.SEM_SEG_HEAD.NUM_CLASSES (54) numbers > 0, or empty"),
    ("MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS", [1.0] * 53 + [0.0], "must be MODEL.SEM_SEG_HEAD.NUM_CLASSES (54) numbers > 0, "
                                                             "or empty"),
    ("MODEL.SEM_SEG_HEAD.UPSAMPLE_ALIGN_CORNERS", None, "must be True or False"),
    ("MODEL.SEM_SEG_HEAD.NUM_CONVS", 0, "must be an integer >= 1"),
    ("MODEL.SEM_SEG_HEAD.CONCAT_INPUT", "False", "must be True or False"),
    ("MODEL.SEM_SEG_HEAD.DROPOUT", 1.0, "must be a number in [0, 1)"),
    ("MODEL.SEM_SEG_HEAD.HRNET_VARIANT", "openseg", "must be one of 'mmseg', 'reference'"),
    ("MODEL.SEM_SEG_HEAD.UPERNET_POOL_SCALES", [], "must be one or more integers >= 1"),
    ("MODEL.SEM_SEG_HEAD.UPERNET_POOL_SCALES", [1, 0], "must be one or more integers >= 1"),
    ("MODEL.SEM_SEG_HEAD.SEGFORMER_VARIANT", "nvlabs", "must be one of 'original', 'mmseg'"),
    ("MODEL.SEM_SEG_HEAD.AUX_LOSS_WEIGHT", -0.4, "must be a number >= 0"),
    ("MODEL.SEM_SEG_HEAD.AUX_CHANNELS", 0, "must be an integer >= 1"),
    ("MODEL.SEM_SEG_HEAD.AUX_NUM_CONVS", 0, "must be an integer >= 1"),
    ("INPUT.SCALE_JITTER.ENABLED", "true", "must be True or False"),
    ("INPUT.SCALE_JITTER.BASE_SIZE", [512, 2048], "must be 2 integers >= 1, each >= the next"),
    ("INPUT.SCALE_JITTER.BASE_SIZE", [2048], "must be 2 integers >= 1, each >= the next"),
    ("INPUT.SCALE_JITTER.RATIO_RANGE", [2.0, 0.5], "must be 2 numbers > 0, each <= the next"),
    ("INPUT.SCALE_JITTER.RATIO_RANGE", 0.5, "must be a list of 2 numbers > 0, each <= the next"),
    ("INPUT.SCALE_JITTER.MODE", "image", "must be one of 'base_size', 'image_size'"),
    ("INPUT.SCALE_JITTER.ASPECT_RANGE", [0.0, 1.1], "must be 2 numbers > 0, each <= the next"),
    ("INPUT.PHOTOMETRIC_JITTER", 0, "must be True or False"),
    ("INPUT.BRIGHTNESS_JITTER", -3, "must be an integer in [0, 255]"),
    ("INPUT.BRIGHTNESS_JITTER", 10.5, "must be an integer in [0, 255]"),
    ("INPUT.PAD.POSITION", "center", "must be one of 'bottom_right', 'random'"),
    ("INPUT.PAD.IMAGE_VALUE", "mean", "must be one of 'zero', 'pixel_mean'"),
    ("TEST.SLIDING_WINDOW.ENABLED", "slide", "must be True or False"),
    ("TEST.SLIDING_WINDOW.SIZE", [768, 0], "must be 2 integers >= 1"),
    ("TEST.SLIDING_WINDOW.STRIDE", [512, 800], "must be 2 integers >= 1, each at most the same entry of "
                                               "TEST.SLIDING_WINDOW.SIZE ([768, 768]) (with TEST.SLIDING_WINDOW.ENABLED True)"),
    ("TEST.SLIDING_WINDOW.BATCH_SIZE", 0, "must be an integer >= 1"),
    ("SOLVER.OPTIMIZER", "Adam", "must be one of 'SGD', 'ADAMW' (any case)"),
    ("SOLVER.HEAD_LR_MULTIPLIER", 0.0, "must be a number > 0"),
    ("SOLVER.WEIGHT_DECAY_EMBED", -1e-4, "must be a number >= 0"),
    ("SOLVER.NONFINITE_SKIP_LIMIT", -1, "must be an integer >= 0"),
    ("SOLVER.MAX_WARMUP_FRACTION", 0.0, "must be a number in (0, 1]"),
    ("SOLVER.MAX_WARMUP_FRACTION", 1.5, "must be a number in (0, 1]"),
    ("SOLVER.BEST_CHECKPOINT_METRIC", None, "must be \"\" or \"sem_seg/<metric>\", <metric> one of mIoU, fwIoU, "
                                           "mACC, pACC, IoU-<class>, ACC-<class>"),
    ("SOLVER.BEST_CHECKPOINT_METRIC", "no-such-metric", "must be \"\" or \"sem_seg/<metric>\", <metric> one of mIoU, "
                                                       "fwIoU, mACC, pACC, IoU-<class>, ACC-<class>"),
    ("TEST.SLIDING_WINDOW.STRIDE", [-7, -7], "must be 2 integers >= 1"),
    ("INPUT.CROP.SINGLE_CATEGORY_MAX_AREA", -7.5, "must be a number in (0, 1]"),
    ("SOLVER.POLY_LR_POWER", -7.5, "must be a number >= 0"),
    ("MODEL.SEM_SEG_HEAD.DECODER_NAME", "NoSuchDecoder", "must be a name in DECODER_REGISTRY: 'FCNDecoder', "
                                                         "'HRNetV2Decoder', 'SegFormerMLPDecoder', 'UperNetDecoder'"),
    ("MODEL.SEM_SEG_HEAD.AUX_IN_FEATURE", "res9", "must be one of '', 'res2', 'res3', 'res4', 'res5'"),
    ("MODEL.SWIN.DEPTHS", [2, 2, 18], "must be 4 integers >= 1"),
    ("MODEL.SWIN.OUT_FEATURES", ["res4", "res4"], "must be one or more of 'res2', 'res3', 'res4', 'res5', no repeats"),
    ("MODEL.HRNET.WIDTH", 47, "must be one of 18, 30, 32, 40, 44, 48, 64"),
    ("MODEL.HRNET.NORM", "BatchNorm", "must be one of 'BN', 'SyncBN', 'FrozenBN', 'GN', 'nnSyncBN', 'naiveSyncBN', "
                                      "'LN'"),
    ("MODEL.MIT.VARIANT", "b9", "must be one of 'b0', 'b1', 'b2', 'b3', 'b4', 'b5'"),
    ("MODEL.RESNETS.STEM_TYPE", "deep", "must be one of 'deeplab', 'basic'"),
    ("MODEL.RESNETS.RES4_DILATION", 4, "must be one of 1, 2"),
    ("MODEL.RESNETS.RES5_MULTI_GRID", [1, 1], "must be 3 integers >= 1"),
]
# keys of Detectron2's DeepLab project that nothing here reads: not declared, so a config setting them fails
UNREAD_DEEPLAB_KEYS = [
    "MODEL.SEM_SEG_HEAD.LOSS_TYPE", "MODEL.SEM_SEG_HEAD.PROJECT_FEATURES", "MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS",
    "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS", "MODEL.SEM_SEG_HEAD.ASPP_DILATIONS", "MODEL.SEM_SEG_HEAD.ASPP_DROPOUT",
    "MODEL.SEM_SEG_HEAD.USE_DEPTHWISE_SEPARABLE_CONV", "SOLVER.POLY_LR_CONSTANT_ENDING",
]
# what a bad value needs around it to be checked
CONTEXT = {("TEST.SLIDING_WINDOW.STRIDE", (512, 800)): {"TEST.SLIDING_WINDOW.ENABLED": True}}


def shown(value):
    """``value`` as the messages write it."""
    return repr(list(value) if isinstance(value, tuple) else value)


def default_cfg():
    return load_config()


def set_value(cfg, key, value):
    """``cfg`` with ``key`` set to ``value`` as it is (no yacs type coercion: any value can be tried)."""
    *parents, leaf = key.split(".")
    node = cfg
    for name in parents:
        node = node[name]
    node[leaf] = value
    return cfg


def leaf_keys(node, prefix=""):
    for name, value in node.items():
        if isinstance(value, dict):
            yield from leaf_keys(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


@pytest.mark.parametrize("key,value,allowed", BAD_VALUES, ids=[f"{k}={shown(v)[:20]}" for k, v, _ in BAD_VALUES])
def test_bad_value_is_the_one_problem_named(key, value, allowed):
    cfg = default_cfg()
    for other, ok in CONTEXT.get((key, tuple(value) if isinstance(value, list) else value), {}).items():
        set_value(cfg, other, ok)
    assert config_problems(set_value(cfg, key, value)) == [f"{key} = {shown(value)}: {allowed}"]


def nonsense(rule, cfg):
    """A value ``rule`` refuses whatever the rest of ``cfg``: below the range for numbers, an unknown
    name for choices, the wrong length for lists; and the keys to set for it to be checked."""
    if isinstance(rule, When):
        value, context = nonsense(rule.rule, cfg)
        return value, {**context, rule.enabled_by: True}
    if isinstance(rule, AllOf):
        return nonsense(rule.rules[0], cfg)
    if isinstance(rule, Number):
        return (-7 if rule.integer else -7.5), {}
    if isinstance(rule, Items):
        n = lookup(cfg, rule.length) if isinstance(rule.length, str) else rule.length
        return ([] if n is None else [1] * (n + 1)), {}
    if isinstance(rule, OneOf) and all(isinstance(c, int) for c in rule.choices):
        return -7, {}
    if isinstance(rule, (OneOf, Registered, Matches)):
        return "no-such-name", {}
    if isinstance(rule, Subset):
        return ["no-such-name"], {}
    if isinstance(rule, Boolean):
        return "yes", {}
    raise AssertionError(f"no nonsense value for {rule!r}: add one here")


@pytest.mark.parametrize("key", declared_keys(), ids=lambda key: key.name)
def test_every_declared_key_refuses_nonsense_by_name(key):
    cfg = default_cfg()
    value, context = nonsense(key.rule, cfg)
    for other, ok in context.items():
        set_value(cfg, other, ok)
    set_value(cfg, key.name, value)
    with pytest.raises(ValueError) as info:
        check_config(cfg)
    assert [line.strip() for line in str(info.value).splitlines()[1:]] == [
        f"{key.name} = {shown(value)}: {key.rule.problem(value, cfg)}"
    ]
    assert f"{key.name} = {shown(value)}: must be " in str(info.value)


def test_every_key_the_project_adds_is_declared_once_and_nothing_unread_is(tmp_path):
    detectron2_keys = set(leaf_keys(get_cfg()))
    added = set(leaf_keys(default_cfg())) - detectron2_keys
    declared = {key.name for key in declared_keys()}
    assert added == {name for name in declared if KEYS[name].default is not DETECTRON2}
    assert {name for name in declared if KEYS[name].default is DETECTRON2} <= detectron2_keys
    assert len(declared) == len(declared_keys())
    for key in UNREAD_DEEPLAB_KEYS:
        node, leaf = key.rsplit(".", 1)
        yaml_file = tmp_path / f"{leaf}.yaml"
        yaml_file.write_text("".join(f"{'  ' * i}{part}:\n" for i, part in enumerate(node.split(".")))
                             + f"{'  ' * (node.count('.') + 1)}{leaf}: 1\n")
        with pytest.raises(KeyError, match=f"Non-existent config key: {key}"):
            load_config(yaml_file)


def test_a_key_is_declared_by_one_module_only():
    with pytest.raises(ValueError, match="MODEL.PROTOSEG.NUM_PROTOTYPES is declared by "
                                         "protoseg.modeling.heads.config and again by elsewhere"):
        declare("elsewhere", [Key("MODEL.PROTOSEG.NUM_PROTOTYPES", 5, Number(), "")])
    assert KEYS["MODEL.PROTOSEG.NUM_PROTOTYPES"].default == 10


def test_unknown_decoder_is_refused_by_name_when_the_model_is_built():
    cfg = toy_cfg()
    cfg.merge_from_list(["MODEL.SEM_SEG_HEAD.DECODER_NAME", "FCNDecoderr"])
    with pytest.raises(ValueError, match="MODEL.SEM_SEG_HEAD.DECODER_NAME = 'FCNDecoderr': must be a name in "
                                         "DECODER_REGISTRY: 'FCNDecoder'"):
        build_model(cfg)


def test_all_problems_in_one_error_from_the_command_line_opts():
    cfg = default_cfg()
    cfg.merge_from_list([
        "MODEL.PROTOSEG.NUM_PROTOTYPES", 0, "MODEL.PROTOSEG.SINKHORN_ITERS", -1, "MODEL.PROTOSEG.MOMENTUM", 1.5,
        "SOLVER.OPTIMIZER", "adam", "INPUT.SCALE_JITTER.MODE", "image", "MODEL.PROTOSEG.DISTANCE", "cosine",
    ])
    with pytest.raises(ValueError) as info:
        check_config(cfg)
    lines = str(info.value).splitlines()
    assert lines[0] == "5 invalid config value(s):"
    assert [line.strip() for line in lines[1:]] == [
        "MODEL.PROTOSEG.NUM_PROTOTYPES = 0: must be an integer >= 1",
        "MODEL.PROTOSEG.MOMENTUM = 1.5: must be a number in [0, 1]",
        "MODEL.PROTOSEG.SINKHORN_ITERS = -1: must be an integer >= 0",
        "INPUT.SCALE_JITTER.MODE = 'image': must be one of 'base_size', 'image_size'",
        "SOLVER.OPTIMIZER = 'adam': must be one of 'SGD', 'ADAMW' (any case)",
    ]


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_config_file_passes(path):
    cfg = default_cfg()
    cfg.merge_from_file(str(path))
    check_config(cfg)


def test_defaults_pass_and_keys_the_config_lacks_are_not_checked():
    check_config(default_cfg())
    check_config(get_cfg())  # Detectron2's keys only: the project's are simply not there


def test_bound_read_from_an_invalid_key_is_left_to_that_key():
    cfg = set_value(default_cfg(), "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "many")
    set_value(cfg, "MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS", [1.0, 2.0])
    assert config_problems(cfg) == ["MODEL.SEM_SEG_HEAD.NUM_CLASSES = 'many': must be an integer >= 1"]


def test_stride_is_checked_against_the_window_only_for_sliding_window_inference():
    cfg = set_value(default_cfg(), "TEST.SLIDING_WINDOW.STRIDE", [1000, 1000])
    assert config_problems(cfg) == []
    assert len(config_problems(set_value(cfg, "TEST.SLIDING_WINDOW.ENABLED", True))) == 1


def test_choices_are_the_modules():
    from protoseg.data.transforms import PAD_IMAGE_VALUES, PAD_POSITIONS, SCALE_JITTER_MODES
    from protoseg.modeling.decoders.hrnet import HRNET_VARIANTS
    from protoseg.modeling.decoders.segformer import SEGFORMER_VARIANTS
    from protoseg.modeling.prototypes.distances import DISTANCES
    from protoseg.modeling.heads.protoseg_head import PROJECTIONS
    from protoseg.modeling.heads.score_norm import CLASS_SCORE_NORMS
    from protoseg.modeling.prototypes.memory import ASSIGNMENTS
    from protoseg.modeling.prototypes.memory import SCORES_KERNELS, UPDATE_SYNCS
    from protoseg.modeling.prototypes.scores import SIMILARITY_PRECISIONS
    from protoseg.modeling.backbones.dilated_resnet import STEM_TYPES
    from protoseg.modeling.backbones.hrnet import HRNET_WIDTHS
    from protoseg.modeling.backbones.mit import MIT_VARIANTS
    from protoseg.modeling.unknown_score import UNKNOWN_SCORES
    from protoseg.solver import OPTIMIZERS

    modules = {
        "MODEL.PROTOSEG.ASSIGNMENT": ASSIGNMENTS, "MODEL.PROTOSEG.CLASS_SCORE_NORM": CLASS_SCORE_NORMS,
        "MODEL.PROTOSEG.PROJECTION": PROJECTIONS, "MODEL.PROTOSEG.DISTANCE": DISTANCES,
        "MODEL.PROTOSEG.SIMILARITY_PRECISION": SIMILARITY_PRECISIONS, "MODEL.PROTOSEG.SCORES_KERNEL": SCORES_KERNELS,
        "MODEL.PROTOSEG.UPDATE_SYNC": UPDATE_SYNCS,
        "MODEL.SEM_SEG_HEAD.HRNET_VARIANT": HRNET_VARIANTS, "MODEL.SEM_SEG_HEAD.SEGFORMER_VARIANT": SEGFORMER_VARIANTS,
        "INPUT.SCALE_JITTER.MODE": SCALE_JITTER_MODES, "INPUT.PAD.POSITION": PAD_POSITIONS,
        "INPUT.PAD.IMAGE_VALUE": PAD_IMAGE_VALUES, "SOLVER.OPTIMIZER": OPTIMIZERS,
        "MODEL.RESNETS.STEM_TYPE": STEM_TYPES, "MODEL.HRNET.WIDTH": HRNET_WIDTHS, "MODEL.MIT.VARIANT": MIT_VARIANTS,
        "TEST.UNKNOWN_SCORE": UNKNOWN_SCORES,
    }
    for key, choices in modules.items():
        assert KEYS[key].rule.choices == tuple(choices), key
