"""The declaration of every configuration key the project reads, and one check of them all.

A module that reads keys declares them once, next to its code, as a table of :class:`Key` entries
(name, default, rule, meaning) passed to :func:`declare`; its ``add_*_config(cfg)`` applies the
table with :func:`add_keys`. (The prototype memory's keys are declared by the head that builds it,
as ``modeling/prototypes`` imports nothing else of the package.) :data:`KEYS` is the registry of every declared key (filled as the
declaring modules are imported; ``protoseg.config.add_protoseg_config`` imports them all).
A rule states the allowed range, choices, type or length; a module that guards an object built
without a config takes its choices from the same constant as its declaration.

:func:`check_config` applies the rule of every declared key the config has and raises one
``ValueError`` listing every problem, each naming the key, its value and what is allowed::

    MODEL.PROTOSEG.NUM_PROTOTYPES = 0: must be an integer >= 1
    MODEL.PROTOSEG.SINKHORN_ITERS = -1: must be an integer >= 0

A bound may name another key (``ge="MODEL.SEM_SEG_HEAD.NUM_CLASSES"``); it is then read from the
same config, and the rule is skipped while that key is itself invalid (its own problem is
reported). This module imports nothing of the project, so that every module can declare keys.
"""
import copy
import math
import numbers
import operator
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

__all__ = [
    "DETECTRON2", "KEYS", "Key", "add_keys", "check_config", "config_problems", "declare", "format_value", "leaves",
    "lookup",
    "Rule", "Number", "Integer", "Boolean", "OneOf", "Items", "Subset", "Matches", "Registered", "When", "AllOf",
]

Bound = Union[None, int, float, str]  # a number, or the name of the key that holds it
_COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


def lookup(cfg, key: str, default=None):
    """``cfg``'s value at the dotted ``key`` (``default`` when a node on the way is missing, or
    when ``cfg`` is None)."""
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


def format_value(value) -> str:
    return repr(list(value) if isinstance(value, tuple) else value)


class Rule:
    """A check of one value: :meth:`problem` is None when ``value`` is allowed, else what is;
    :meth:`describe` says what is allowed (with ``cfg`` None: without the values of the keys it names)."""

    def problem(self, value, cfg) -> Optional[str]:
        raise NotImplementedError

    def describe(self, cfg=None) -> str:
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
        """[(operator, value, text)] of the set ends (value None when ``cfg`` is None); None if a
        key they name is not a number."""
        out = []
        for op, bound in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt)):
            if bound is None:
                continue
            if not isinstance(bound, str):
                out.append((op, bound, f"{bound}"))
                continue
            value = lookup(cfg, bound)
            if cfg is not None and not _is_number(value):
                return None
            out.append((op, value, bound if cfg is None else f"{bound} ({value})"))
        return out

    def describe(self, cfg=None, plural: bool = False) -> str:
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

    def describe(self, cfg=None) -> str:
        return "True or False"

    def problem(self, value, cfg) -> Optional[str]:
        return None if isinstance(value, bool) else "must be True or False"


def _same(value, choice, ignore_case: bool) -> bool:
    """``value`` is ``choice`` (strings in any case when ``ignore_case``; a bool is no number)."""
    if isinstance(choice, str):
        return isinstance(value, str) and (value.upper() == choice.upper() if ignore_case else value == choice)
    return type(value) is type(choice) and value == choice


@dataclass(frozen=True)
class OneOf(Rule):
    """One of ``choices`` (strings, in any case when ``ignore_case``, or numbers)."""

    choices: Tuple[Any, ...]
    ignore_case: bool = False

    def __post_init__(self):
        object.__setattr__(self, "choices", tuple(self.choices))

    def describe(self, cfg=None) -> str:
        case = " (any case)" if self.ignore_case else ""
        return f"one of {', '.join(repr(c) for c in self.choices)}{case}"

    def problem(self, value, cfg) -> Optional[str]:
        if any(_same(value, c, self.ignore_case) for c in self.choices):
            return None
        return f"must be {self.describe(cfg)}"


@dataclass(frozen=True)
class Registered(Rule):
    """The name of an object in a Detectron2 ``Registry`` (looked up when checked, so that every
    object registered by then counts)."""

    registry: Any = field(compare=False)
    registry_name: str = ""

    def describe(self, cfg=None) -> str:
        names = "" if cfg is None else ": " + ", ".join(repr(n) for n in sorted(name for name, _ in self.registry))
        return f"a name in {self.registry_name}{names}"

    def problem(self, value, cfg) -> Optional[str]:
        return None if isinstance(value, str) and value in self.registry else f"must be {self.describe(cfg)}"


@dataclass(frozen=True)
class Matches(Rule):
    """A string that matches the regular expression ``pattern`` entirely; ``meaning`` says what in words."""

    pattern: str
    meaning: str
    plural_meaning: str = ""  # what a list of them is, in words (for Items)

    def describe(self, cfg=None, plural: bool = False) -> str:
        return self.plural_meaning if plural and self.plural_meaning else self.meaning

    def problem(self, value, cfg) -> Optional[str]:
        ok = isinstance(value, str) and re.fullmatch(self.pattern, value) is not None
        return None if ok else f"must be {self.meaning}"


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
        return lookup(cfg, self.length) if isinstance(self.length, str) else self.length

    def describe(self, cfg=None) -> str:
        if self.length is None:
            count = "one or more"
        elif isinstance(self.length, str):
            count = self.length if cfg is None else f"{self.length} ({self._length(cfg)})"
        else:
            count = f"{self.length}"
        text = f"{count} {self.item.describe(cfg, plural=True)}"
        if self.order:
            text += f", each {self.order} the next"
        if self.each_at_most:
            limit = "" if cfg is None else f" ({format_value(lookup(cfg, self.each_at_most))})"
            text += f", each at most the same entry of {self.each_at_most}{limit}"
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
        limit = lookup(cfg, self.each_at_most) if self.each_at_most else None
        if isinstance(limit, (list, tuple)) and len(limit) == len(values) and all(_is_number(x) for x in limit):
            return all(v <= x for v, x in zip(values, limit))
        return True


@dataclass(frozen=True)
class Subset(Rule):
    """A non-empty list or tuple of distinct names from ``choices``."""

    choices: Tuple[str, ...]

    def __post_init__(self):
        object.__setattr__(self, "choices", tuple(self.choices))

    def describe(self, cfg=None) -> str:
        return f"one or more of {', '.join(repr(c) for c in self.choices)}, no repeats"

    def problem(self, value, cfg) -> Optional[str]:
        ok = (
            isinstance(value, (list, tuple)) and len(value) > 0 and len(set(value)) == len(value)
            and all(isinstance(v, str) and v in self.choices for v in value)
        )
        return None if ok else f"must be {self.describe(cfg)}"


@dataclass(frozen=True)
class When(Rule):
    """``rule``, applied only while the boolean key ``enabled_by`` is True."""

    enabled_by: str
    rule: Rule

    def describe(self, cfg=None) -> str:
        return f"with {self.enabled_by} True: {self.rule.describe(cfg)}"

    def problem(self, value, cfg) -> Optional[str]:
        if lookup(cfg, self.enabled_by) is not True:
            return None
        found = self.rule.problem(value, cfg)
        return f"{found} (with {self.enabled_by} True)" if found else None


@dataclass(frozen=True)
class AllOf(Rule):
    """Every one of ``rules``; the first one's problem is reported."""

    rules: Tuple[Rule, ...]

    def describe(self, cfg=None) -> str:
        return "; ".join(rule.describe(cfg) for rule in self.rules)

    def problem(self, value, cfg) -> Optional[str]:
        return next((found for found in (rule.problem(value, cfg) for rule in self.rules) if found), None)


# ---- declarations -----------------------------------------------------------------------------

#: the default of a key that Detectron2 declares (the project gives it a rule and a meaning)
DETECTRON2 = type("Detectron2Default", (), {"__repr__": lambda self: "DETECTRON2"})()


@dataclass(frozen=True)
class Key:
    """One configuration key: its dotted ``name``, its ``default`` (:data:`DETECTRON2` for a key of
    Detectron2's defaults), the ``rule`` of its allowed values and its meaning (``help``).
    ``module`` is the declaring module (set by :func:`declare`)."""

    name: str
    default: Any
    rule: Rule
    help: str
    module: str = ""


#: name -> Key of every declared key, in the order the declaring modules were imported
KEYS: Dict[str, Key] = {}


def declare(module: str, keys: Iterable[Key]) -> Tuple[Key, ...]:
    """Register ``keys``, declared by ``module`` (its ``__name__``), in :data:`KEYS` and return them.
    A key belongs to one module: declaring it from a second one raises ``ValueError``."""
    declared = []
    for key in keys:
        owner = KEYS.get(key.name)
        if owner is not None and owner.module != module:
            raise ValueError(f"config key {key.name} is declared by {owner.module} and again by {module}")
        key = Key(key.name, key.default, key.rule, key.help, module)
        KEYS[key.name] = key
        declared.append(key)
    return tuple(declared)


def add_keys(cfg, keys: Sequence[Key]) -> None:
    """Set every key of ``keys`` to its default in ``cfg`` (creating the nodes on its way), in place.
    A :data:`DETECTRON2` key must already be there (``cfg`` starts from Detectron2's defaults)."""
    node_type = type(cfg)
    for key in keys:
        *parents, leaf = key.name.split(".")
        node = cfg
        for part in parents:
            if part not in node:
                setattr(node, part, node_type())
            node = node[part]
        if key.default is DETECTRON2:
            if leaf not in node:
                raise KeyError(f"{key.name} is declared as a Detectron2 key, but the config has no such key")
            continue
        setattr(node, leaf, copy.deepcopy(key.default))


# ---- checks -----------------------------------------------------------------------------------

def leaves(node, prefix: str = ""):
    """(dotted name, value) of every leaf of a config node, in the node's order."""
    for name, value in node.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


def config_problems(cfg, keys: Optional[Dict[str, Key]] = None) -> List[str]:
    """Every problem of ``cfg`` under the declared ``keys`` (default :data:`KEYS`), in the config's
    order, each as ``"KEY = VALUE: must be ..."``; empty when all is well. Keys the config does
    not have, and the config's keys that nothing declares, are not checked."""
    keys = KEYS if keys is None else keys
    problems = []
    for name, value in leaves(cfg):
        key = keys.get(name)
        found = key.rule.problem(value, cfg) if key is not None else None
        if found:
            problems.append(f"{name} = {format_value(value)}: {found}")
    return problems


def check_config(cfg) -> None:
    """Raise one ``ValueError`` listing every invalid value of ``cfg`` (see :func:`config_problems`)."""
    problems = config_problems(cfg)
    if problems:
        raise ValueError(f"{len(problems)} invalid config value(s):\n  " + "\n  ".join(problems))
