"""One check of every configuration value the project reads, before anything is built.

:data:`RULES` is a table ``key -> rule`` (allowed range, choices, type, length) of the project's
keys (``protoseg/config.py`` and the ``config.py`` of its modules) and of the Detectron2 keys it
gives a meaning to (``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` / ``IGNORE_VALUE``). :func:`check_config`
applies all of it and raises one ``ValueError`` listing every problem, each naming the key, its
value and what is allowed::

    MODEL.PROTOSEG.NUM_PROTOTYPES = 0: must be an integer >= 1
    MODEL.PROTOSEG.SINKHORN_ITERS = -1: must be an integer >= 0

A key that the table does not know, or that the config does not have, is not checked. A bound may
name another key (``min="MODEL.SEM_SEG_HEAD.NUM_CLASSES"``); it is then read from the same config,
and the rule is skipped while that key is itself invalid (its own problem is reported).

The modules keep their own checks (e.g. the heads' choices): those also guard objects built
without a config. The choices here are literal copies (this module imports nothing of the
project, so that any module can call it); tests/test_config_checks.py keeps them equal to the
modules' constants.
"""
import math
import numbers
import operator
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

__all__ = ["RULES", "check_config", "config_problems"]

Bound = Union[None, int, float, str]  # a number, or the name of the key that holds it
_COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


def _lookup(cfg, key: str, default=None):
    """``cfg``'s value at the dotted ``key`` (``default`` when a node on the way is missing)."""
    node = cfg
    for part in key.split("."):
        if not hasattr(node, "get") or part not in node:
            return default
        node = node[part]
    return node


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


class Rule:
    """A check of one value: :meth:`problem` is None when ``value`` is allowed, else what is."""

    def problem(self, value, cfg) -> Optional[str]:
        raise NotImplementedError


@dataclass(frozen=True)
class Number(Rule):
    """A finite real number (an integer when ``integer``) in an interval whose ends may be open
    (``gt``/``lt``) or closed (``ge``/``le``); each end a number or a key's name."""

    integer: bool = False
    ge: Bound = None
    gt: Bound = None
    le: Bound = None
    lt: Bound = None

    def _bounds(self, cfg) -> Optional[List[Tuple[str, Any, str]]]:
        """[(operator, value, text)] of the set ends; None if a key they name is not a number."""
        out = []
        for op, bound in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt)):
            if bound is None:
                continue
            value = _lookup(cfg, bound) if isinstance(bound, str) else bound
            if not _is_number(value):
                return None
            out.append((op, value, f"{bound} ({value})" if isinstance(bound, str) else f"{bound}"))
        return out

    def describe(self, cfg, plural: bool = False) -> str:
        """e.g. "an integer >= 1", "numbers in (0, 1]"."""
        noun = ("integers" if plural else "an integer") if self.integer else ("numbers" if plural else "a number")
        bounds = self._bounds(cfg) or []
        if len(bounds) == 2:
            (lo_op, _, lo), (hi_op, _, hi) = bounds
            return f"{noun} in {'[' if lo_op == '>=' else '('}{lo}, {hi}{']' if hi_op == '<=' else ')'}"
        return " ".join([noun] + [f"{op} {text}" for op, _, text in bounds])

    def problem(self, value, cfg) -> Optional[str]:
        bounds = self._bounds(cfg)
        if bounds is None:
            return None  # the key a bound names is invalid: reported on its own
        ok = (_is_int if self.integer else _is_number)(value) and all(
            _COMPARE[op](value, v) for op, v, _ in bounds
        )
        return None if ok else f"must be {self.describe(cfg)}"


def Integer(**bounds) -> Number:
    """An integer (not a bool) within ``bounds`` (``ge``, ``gt``, ``le``, ``lt``, see :class:`Number`)."""
    return Number(integer=True, **bounds)


@dataclass(frozen=True)
class Boolean(Rule):
    """True or False (not 0 / 1, not "true")."""

    def problem(self, value, cfg) -> Optional[str]:
        return None if isinstance(value, bool) else "must be True or False"


@dataclass(frozen=True)
class Text(Rule):
    """Any string (e.g. a metric name; "" often means off)."""

    def describe(self, cfg, plural: bool = False) -> str:
        return "strings" if plural else "a string"

    def problem(self, value, cfg) -> Optional[str]:
        return None if isinstance(value, str) else "must be a string"


@dataclass(frozen=True)
class OneOf(Rule):
    """One of the strings ``choices`` (in any case when ``ignore_case``)."""

    choices: Tuple[str, ...]
    ignore_case: bool = False

    def problem(self, value, cfg) -> Optional[str]:
        fold = (lambda s: s.upper()) if self.ignore_case else (lambda s: s)
        if isinstance(value, str) and fold(value) in {fold(c) for c in self.choices}:
            return None
        case = " (any case)" if self.ignore_case else ""
        return f"must be one of {', '.join(repr(c) for c in self.choices)}{case}"


@dataclass(frozen=True)
class Items(Rule):
    """A list or tuple of ``item`` values: ``length`` of them (a number, a key's name, or None
    for any non-empty length), or none at all when ``or_empty``; with ``order`` "<=" / ">=",
    ordered so (first <= second, ...); with ``each_at_most``, each <= the same place of that key."""

    item: Number
    length: Bound = None
    or_empty: bool = False
    order: Optional[str] = None
    each_at_most: Optional[str] = None

    def _length(self, cfg):
        return _lookup(cfg, self.length) if isinstance(self.length, str) else self.length

    def describe(self, cfg) -> str:
        n = self._length(cfg)
        count = "one or more" if n is None else f"{self.length} ({n})" if isinstance(self.length, str) else f"{n}"
        text = f"{count} {self.item.describe(cfg, plural=True)}"
        if self.order:
            text += f", each {self.order} the next"
        if self.each_at_most:
            limit = _lookup(cfg, self.each_at_most)
            text += f", each at most the same entry of {self.each_at_most} ({_format(limit)})"
        return text + (", or empty" if self.or_empty else "")

    def problem(self, value, cfg) -> Optional[str]:
        if not isinstance(value, (list, tuple)):
            return f"must be a list of {self.describe(cfg)}"
        n = self._length(cfg)
        if isinstance(self.length, str) and not _is_int(n):
            return None  # the key the length names is invalid: reported on its own
        if not self._fits(list(value), n, cfg):
            return f"must be {self.describe(cfg)}"
        return None

    def _fits(self, values: list, n, cfg) -> bool:
        if not values:
            return self.or_empty
        if (n is not None and len(values) != n) or any(self.item.problem(v, cfg) for v in values):
            return False
        if self.order and not all(_COMPARE[self.order](a, b) for a, b in zip(values, values[1:])):
            return False
        limit = _lookup(cfg, self.each_at_most) if self.each_at_most else None
        if isinstance(limit, (list, tuple)) and len(limit) == len(values) and all(_is_number(x) for x in limit):
            return all(v <= x for v, x in zip(values, limit))
        return True


@dataclass(frozen=True)
class When(Rule):
    """``rule``, applied only while the boolean key ``enabled_by`` is True."""

    enabled_by: str
    rule: Rule

    def problem(self, value, cfg) -> Optional[str]:
        if _lookup(cfg, self.enabled_by) is not True:
            return None
        found = self.rule.problem(value, cfg)
        return f"{found} (with {self.enabled_by} True)" if found else None


_POSITIVE = Number(gt=0)
_POSITIVE_RANGE = Items(_POSITIVE, length=2, order="<=")  # (low, high), 0 < low <= high
_POSITIVE_INT = Integer(ge=1)
_COUNT = Integer(ge=0)  # 0 usually means "off"
_WEIGHT = Number(ge=0)

#: key -> rule, for every value the project reads (see ``protoseg/config.py`` for their meaning)
RULES: Dict[str, Rule] = {
    # ---- the prototype head ------------------------------------------------------------------
    "MODEL.PROTOSEG.NUM_PROTOTYPES": _POSITIVE_INT,
    "MODEL.PROTOSEG.MOMENTUM": Number(ge=0, le=1),
    "MODEL.PROTOSEG.SINKHORN_ITERS": _COUNT,
    "MODEL.PROTOSEG.SINKHORN_KAPPA": _POSITIVE,
    "MODEL.PROTOSEG.PPC_TEMPERATURE": _POSITIVE,
    "MODEL.PROTOSEG.PPC_WEIGHT": _WEIGHT,
    "MODEL.PROTOSEG.PPD_WEIGHT": _WEIGHT,
    "MODEL.PROTOSEG.WARMUP_ITERS": _COUNT,
    "MODEL.PROTOSEG.UPDATE_FROM_CORRECT_ONLY": Boolean(),
    "MODEL.PROTOSEG.ASSIGNMENT": OneOf(("argmax", "gumbel")),
    "MODEL.PROTOSEG.CLASS_SCORE_NORM": OneOf(("layernorm", "temperature")),
    "MODEL.PROTOSEG.CLASS_SCORE_TEMPERATURE": _POSITIVE,
    "MODEL.PROTOSEG.FEATURE_LAYERNORM": Boolean(),
    "MODEL.PROTOSEG.PROJECTION": OneOf(("none", "mlp", "reference_mlp")),
    "MODEL.PROTOSEG.DISTANCE": OneOf(("cosine", "euclidean", "huber")),
    "MODEL.PROTOSEG.HUBER_DELTA": _POSITIVE,
    "MODEL.PROTOSEG.CHUNK_SIZE": _COUNT,
    "MODEL.PROTOSEG.SIMILARITY_PRECISION": OneOf(("float32", "tf32", "bfloat16")),
    "MODEL.PROTOSEG.SCORES_KERNEL": OneOf(("torch", "triton")),
    "MODEL.PROTOSEG.INIT_STD": _POSITIVE,
    "MODEL.PROTOSEG.SYNC_CHECK_PERIOD": _COUNT,
    # ---- the parametric baselines --------------------------------------------------------------
    "MODEL.PARAMETRIC.NUM_PROTOTYPES": _POSITIVE_INT,
    # ---- classes, heads and decoders -----------------------------------------------------------
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES": _POSITIVE_INT,
    # not a class id, and a value a 16-bit label map can hold
    "MODEL.SEM_SEG_HEAD.IGNORE_VALUE": Integer(ge="MODEL.SEM_SEG_HEAD.NUM_CLASSES", le=65535),
    "MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS": Items(_POSITIVE, length="MODEL.SEM_SEG_HEAD.NUM_CLASSES", or_empty=True),
    "MODEL.SEM_SEG_HEAD.UPSAMPLE_ALIGN_CORNERS": Boolean(),
    "MODEL.SEM_SEG_HEAD.CLASS_NAMES": Items(Text(), length="MODEL.SEM_SEG_HEAD.NUM_CLASSES", or_empty=True),
    "INPUT.HELD_OUT_CLASSES": _COUNT,
    "MODEL.SEM_SEG_HEAD.NUM_CONVS": _POSITIVE_INT,
    "MODEL.SEM_SEG_HEAD.CONCAT_INPUT": Boolean(),
    "MODEL.SEM_SEG_HEAD.DROPOUT": Number(ge=0, lt=1),
    "MODEL.SEM_SEG_HEAD.HRNET_VARIANT": OneOf(("mmseg", "reference")),
    "MODEL.SEM_SEG_HEAD.UPERNET_POOL_SCALES": Items(_POSITIVE_INT),
    "MODEL.SEM_SEG_HEAD.SEGFORMER_VARIANT": OneOf(("original", "mmseg")),
    "MODEL.SEM_SEG_HEAD.AUX_LOSS_WEIGHT": _WEIGHT,
    "MODEL.SEM_SEG_HEAD.AUX_CHANNELS": _POSITIVE_INT,
    "MODEL.SEM_SEG_HEAD.AUX_NUM_CONVS": _POSITIVE_INT,
    # ---- training data -------------------------------------------------------------------------
    "INPUT.SCALE_JITTER.ENABLED": Boolean(),
    "INPUT.SCALE_JITTER.BASE_SIZE": Items(_POSITIVE_INT, length=2, order=">="),  # (long side, short side)
    "INPUT.SCALE_JITTER.RATIO_RANGE": _POSITIVE_RANGE,
    "INPUT.SCALE_JITTER.MODE": OneOf(("base_size", "image_size")),
    "INPUT.SCALE_JITTER.ASPECT_RANGE": _POSITIVE_RANGE,
    "INPUT.PHOTOMETRIC_JITTER": Boolean(),
    "INPUT.BRIGHTNESS_JITTER": Integer(ge=0, le=255),
    "INPUT.PAD.POSITION": OneOf(("bottom_right", "random")),
    "INPUT.PAD.IMAGE_VALUE": OneOf(("zero", "pixel_mean")),
    # ---- test protocol -------------------------------------------------------------------------
    "TEST.SLIDING_WINDOW.ENABLED": Boolean(),
    "TEST.SLIDING_WINDOW.SIZE": Items(_POSITIVE_INT, length=2),
    # a larger step leaves pixels in no window
    "TEST.SLIDING_WINDOW.STRIDE": When(
        "TEST.SLIDING_WINDOW.ENABLED", Items(_POSITIVE_INT, length=2, each_at_most="TEST.SLIDING_WINDOW.SIZE")
    ),
    "TEST.SLIDING_WINDOW.BATCH_SIZE": _POSITIVE_INT,
    "TEST.UNKNOWN_SCORE": OneOf(("", "nearest_prototype", "max_softmax", "max_logit")),
    # ---- solver --------------------------------------------------------------------------------
    "SOLVER.OPTIMIZER": OneOf(("SGD", "ADAMW"), ignore_case=True),
    "SOLVER.HEAD_LR_MULTIPLIER": _POSITIVE,
    "SOLVER.WEIGHT_DECAY_EMBED": _WEIGHT,
    "SOLVER.NONFINITE_SKIP_LIMIT": _COUNT,
    "SOLVER.MAX_WARMUP_FRACTION": Number(gt=0, le=1),
    "SOLVER.BEST_CHECKPOINT_METRIC": Text(),
}

_MISSING = object()


def _format(value) -> str:
    return repr(list(value) if isinstance(value, tuple) else value)


def config_problems(cfg, rules: Optional[Dict[str, Rule]] = None) -> List[str]:
    """Every problem of ``cfg`` under ``rules`` (default :data:`RULES`), in table order, each as
    ``"KEY = VALUE: must be ..."``; empty when all is well."""
    problems = []
    for key, rule in (RULES if rules is None else rules).items():
        value = _lookup(cfg, key, _MISSING)
        if value is _MISSING:
            continue
        found = rule.problem(value, cfg)
        if found:
            problems.append(f"{key} = {_format(value)}: {found}")
    return problems


def check_config(cfg) -> None:
    """Raise one ``ValueError`` listing every invalid value of ``cfg`` (see :func:`config_problems`)."""
    problems = config_problems(cfg)
    if problems:
        raise ValueError(f"{len(problems)} invalid config value(s):\n  " + "\n  ".join(problems))
