"""Toy scenes: a small synthetic semantic-segmentation dataset, generated from a seed.

The dataset is written in the same on-disk layout as Detectron2's ADE20K preparation
(``datasets/prepare_ade20k_sem_seg.py``)::

    root/
      images/training/toy_train_00000.jpg ...         RGB JPEG
      images/validation/toy_val_00000.jpg ...
      annotations_detectron2/training/toy_train_00000.png ...   8-bit "L" PNG,
      annotations_detectron2/validation/toy_val_00000.png ...   0..C-1 = class, 255 = ignore
      meta.json                                       spec, classes, looks, statistics

Every class has ``looks_per_class`` *looks*. A look is a (palette colour, texture pattern) pair:
the looks of one class use different colours and, where possible, different texture families, so
a class is a multi-modal cluster in appearance space (the case in which several prototypes per
class should beat one). Palette colours and patterns are deliberately shared between classes:
colour alone, or texture alone, does not identify a class; only the combination does. The look
table depends only on ``num_classes``, ``looks_per_class`` and ``look_seed`` (``seed`` when left
at ``None``), so the class definitions can be kept fixed while the scenes are resampled.

A scene is a background (one region, or two regions split by a random line) with 3-6 random
shapes on top (ellipses, rotated rectangles, triangles, irregular polygons, blobs). Each region
is filled with one look of its class, with a random texture phase, mild per-region colour jitter,
a global brightness change and pixel noise, then JPEG-compressed. Ignore pixels (255) are a thin
band along region boundaries and, in some images, a small grey "other" blob (like ADE20K's
unlabelled pixels). The (class, look) of every region is drawn from a shuffled deck that holds
every look once, so every look of every class appears about equally often in each split.

Determinism: only the PCG64 bit stream and ``SeedSequence`` of numpy (which numpy keeps stable
across versions) are used, distributions are derived from raw bits here, and the geometry uses
arithmetic and ``sqrt`` only (no platform-dependent transcendental functions on arrays; the few
polygon sin/cos constants are rounded to 12 digits), so the pixel arrays should be identical on
every machine (checked on one machine only so far); ``meta.json`` records SHA-256 digests of the raw
(pre-JPEG) images and of the labels per split. The files themselves are byte-identical for the
same spec with the same Pillow/libjpeg/zlib build (JPEG and PNG encoders of other builds may
compress the same pixels to different bytes).

This module needs only numpy and Pillow (no Detectron2), so the dataset can be prepared before
anything else is installed: ``python datasets/prepare_toy_scenes.py``.
"""
from __future__ import annotations

import colorsys
import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

__all__ = [
    "IGNORE_LABEL",
    "SPLITS",
    "ToySceneSpec",
    "Pattern",
    "Look",
    "class_names",
    "class_colors",
    "palette",
    "patterns",
    "look_table",
    "render_look_swatch",
    "generate_toy_scenes",
    "ensure_toy_scenes",
    "load_meta",
    "split_files",
]

IGNORE_LABEL = 255
# The generator name recorded in (and checked against) meta.json: the module's import path of version 1,
# when it lived in the package; kept so that datasets generated then stay valid.
GENERATOR_NAME = "protoseg.data.toy_scenes"
GENERATOR_VERSION = 1
# (directory name, file-name tag); directory names follow ADE20K.
SPLITS: Tuple[Tuple[str, str], ...] = (("training", "train"), ("validation", "val"))
_FILE_RE = re.compile(r"^toy_(train|val)_\d+\.(jpg|png)$")


# --------------------------------------------------------------------------------------------
# Spec
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ToySceneSpec:
    """Everything that determines a toy-scenes dataset. Same spec -> same pixels.

    Defaults (8 classes x 3 looks, 128 + 32 images of 128x128) generate in 1-2 seconds, take
    about 2.5 MB on disk, and are learnable to high mIoU by a small ResNet+FCN trained for a few
    minutes on 2 CPU cores (a 3-stage conv net with a cosine prototype head reached ~0.88-0.90
    val mIoU after 3 minutes), while colour alone is not enough: every palette colour and every
    texture is used by three classes (a per-pixel colour classifier reaches ~0.24 mIoU).

    Attributes:
        num_classes: number of semantic classes C (2..255); labels are 0..C-1.
        looks_per_class: looks L per class (1..8); each look has its own colour and texture.
        num_train / num_val: images in the training / validation split.
        image_size: (H, W) in pixels (each >= 32). Shapes scale with the size, textures do not
            (their periods are 4-16 pixels, i.e. recognisable from 16-32 pixels of context).
        seed: seed of the scenes (layout, look assignment to regions, noise).
        look_seed: seed of the look table (which colour/texture each look has); None = seed.
        min_shapes / max_shapes: number of shapes drawn on the background per image.
        split_background_prob: probability that the background is two regions (two classes).
        boundary_ignore_width: width in pixels of the ignore band along region boundaries
            (0 = no ignore band).
        other_blob_prob: probability that an image contains an unlabelled grey blob (ignore).
        noise_std: standard deviation of the additive pixel noise (0..255 scale).
        jpeg_quality: JPEG quality of the images.
    """

    num_classes: int = 8
    looks_per_class: int = 3
    num_train: int = 128
    num_val: int = 32
    image_size: Tuple[int, int] = (128, 128)
    seed: int = 0
    look_seed: Optional[int] = None
    min_shapes: int = 3
    max_shapes: int = 6
    split_background_prob: float = 0.5
    boundary_ignore_width: int = 1
    other_blob_prob: float = 0.25
    noise_std: float = 6.0
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        size = tuple(int(s) for s in self.image_size)
        object.__setattr__(self, "image_size", size)
        errors = []
        if len(size) != 2 or min(size) < 32:
            errors.append(f"image_size must be (H, W) with H, W >= 32, got {self.image_size}")
        if not 2 <= self.num_classes <= 255:
            errors.append(f"num_classes must be in [2, 255] (255 is the ignore label), got {self.num_classes}")
        if not 1 <= self.looks_per_class <= 8:
            errors.append(f"looks_per_class must be in [1, 8], got {self.looks_per_class}")
        if self.num_train < 1 or self.num_val < 1:
            errors.append(f"num_train and num_val must be >= 1, got {self.num_train}, {self.num_val}")
        if self.seed < 0 or (self.look_seed is not None and self.look_seed < 0):
            errors.append("seed and look_seed must be >= 0")
        if not 0 <= self.min_shapes <= self.max_shapes:
            errors.append(f"need 0 <= min_shapes <= max_shapes, got {self.min_shapes}, {self.max_shapes}")
        for name in ("split_background_prob", "other_blob_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                errors.append(f"{name} must be in [0, 1]")
        if self.boundary_ignore_width < 0:
            errors.append("boundary_ignore_width must be >= 0")
        if self.noise_std < 0:
            errors.append("noise_std must be >= 0")
        if not 1 <= self.jpeg_quality <= 100:
            errors.append("jpeg_quality must be in [1, 100]")
        if errors:
            raise ValueError("invalid ToySceneSpec: " + "; ".join(errors))

    @property
    def effective_look_seed(self) -> int:
        return self.seed if self.look_seed is None else self.look_seed

    def num_images(self, split: str) -> int:
        """Number of images of a split ("training"/"train" or "validation"/"val")."""
        if split in ("training", "train"):
            return self.num_train
        if split in ("validation", "val"):
            return self.num_val
        raise KeyError(split)

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["image_size"] = list(self.image_size)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ToySceneSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown ToySceneSpec fields: {sorted(unknown)}")
        return cls(**d)


# --------------------------------------------------------------------------------------------
# Deterministic random numbers (raw PCG64 bits only; numpy keeps bit streams stable)
# --------------------------------------------------------------------------------------------
_U64 = np.uint64
_NORMAL_STD = math.sqrt(4 * (65536.0**2 - 1) / 12.0)


class _Rng:
    def __init__(self, *key: int) -> None:
        self._bg = np.random.PCG64(np.random.SeedSequence([int(k) for k in key]))

    def _raw(self, n: int) -> np.ndarray:
        return self._bg.random_raw(n)

    def random(self) -> float:
        return float(int(self._bg.random_raw()) >> 11) * 2.0**-53

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self.random()

    def randint(self, lo: int, hi: int) -> int:
        """Integer in [lo, hi)."""
        return lo + int(self._bg.random_raw()) % (hi - lo)

    def bernoulli(self, p: float) -> bool:
        return self.random() < p

    def shuffle(self, seq: list) -> None:
        for i in range(len(seq) - 1, 0, -1):
            j = self.randint(0, i + 1)
            seq[i], seq[j] = seq[j], seq[i]

    def unit_vector(self) -> Tuple[float, float]:
        while True:
            u, v = 2.0 * self.random() - 1.0, 2.0 * self.random() - 1.0
            s = u * u + v * v
            if 1e-4 < s <= 1.0:
                n = math.sqrt(s)
                return u / n, v / n

    def bits(self, shape: Tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape))
        return (self._raw(n) >> _U64(63)).astype(bool).reshape(shape)

    def levels(self, shape: Tuple[int, ...], n_levels: int) -> np.ndarray:
        n = int(np.prod(shape))
        return (self._raw(n) % _U64(n_levels)).astype(np.int64).reshape(shape)

    def normal(self, shape: Tuple[int, ...]) -> np.ndarray:
        """Approximately standard-normal values (sum of four 16-bit uniforms)."""
        r = self._raw(int(np.prod(shape)))
        m = _U64(0xFFFF)
        s = (r & m) + ((r >> _U64(16)) & m) + ((r >> _U64(32)) & m) + (r >> _U64(48))
        return ((s.astype(np.float64) - 131070.0) / _NORMAL_STD).reshape(shape)


# --------------------------------------------------------------------------------------------
# Palette, patterns, looks
# --------------------------------------------------------------------------------------------
# (saturation, value, adjective) of the palette tiers; more tiers are used for larger palettes.
_TIERS = ((0.80, 0.95, "bright"), (0.70, 0.55, "dark"), (0.40, 0.92, "pale"), (0.95, 0.36, "deep"))
_HUE_NAMES = ("red", "orange", "yellow", "chartreuse", "green", "spring", "cyan", "azure",
              "blue", "violet", "magenta", "rose")


def _hsv(h: float, s: float, v: float) -> Tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def _palette_entries(n: int) -> List[Tuple[Tuple[int, int, int], str]]:
    n_tiers = 1 if n <= 8 else min(len(_TIERS), -(-n // 8))
    per_tier = -(-n // n_tiers)
    out = []
    for i in range(n):
        t, j = divmod(i, per_tier)
        s, v, adjective = _TIERS[t]
        hue = (j + (0.5 if t % 2 else 0.0)) / per_tier
        out.append((_hsv(hue, s, v), f"{adjective} {_HUE_NAMES[int(hue * 12 + 0.5) % 12]}"))
    return out


def palette(n: int) -> List[Tuple[int, int, int]]:
    """``n`` palette colours of looks (evenly spaced hues, up to four saturation/value tiers)."""
    return [rgb for rgb, _ in _palette_entries(n)]


@dataclass(frozen=True)
class Pattern:
    """A texture: ``family`` with an orientation (``""`` if none) and a period in pixels."""

    family: str
    orientation: str = ""
    period: int = 0

    @property
    def name(self) -> str:
        if self.family == "solid":
            return "solid"
        o = f"{self.orientation}, " if self.orientation else ""
        return f"{self.family}({o}p={self.period})"

    def to_dict(self) -> Dict[str, Any]:
        return {"family": self.family, "orientation": self.orientation, "period": self.period,
                "name": self.name}


# Variants of each family, most distinct first. Orientation: h = horizontal stripes,
# v = vertical, d1/d2 = diagonals. "tiles" is a random two-tone block mosaic of cell ``period``.
_FAMILIES: Tuple[Tuple[str, Tuple[Tuple[str, int], ...]], ...] = (
    ("solid", (("", 0),)),
    ("stripes", (("h", 6), ("v", 6), ("d1", 6), ("d2", 6), ("h", 4), ("v", 4), ("d1", 4),
                 ("d2", 4), ("h", 10), ("v", 10), ("d1", 10), ("d2", 10))),
    ("checker", (("", 8), ("", 4), ("", 14))),
    ("dots", (("", 7), ("", 5), ("", 11))),
    ("grid", (("", 8), ("", 5), ("", 12))),
    ("zigzag", (("h", 8), ("v", 8), ("h", 12), ("v", 12))),
    ("diamonds", (("", 8), ("", 12), ("", 6))),
    ("tiles", (("", 4), ("", 8))),
)


def patterns() -> List[Pattern]:
    """All texture patterns, interleaved across families (the first 8 are one per family)."""
    out: List[Pattern] = []
    for v in range(max(len(variants) for _, variants in _FAMILIES)):
        for family, variants in _FAMILIES:
            if v < len(variants):
                out.append(Pattern(family, *variants[v]))
    return out


@dataclass(frozen=True)
class Look:
    class_id: int
    look_id: int
    colour_index: int
    pattern_index: int
    primary: Tuple[int, int, int]
    secondary: Tuple[int, int, int]
    pattern: Pattern
    description: str

    def to_dict(self) -> Dict[str, Any]:
        return {"class_id": self.class_id, "look_id": self.look_id,
                "colour_index": self.colour_index, "pattern_index": self.pattern_index,
                "primary_rgb": list(self.primary), "secondary_rgb": list(self.secondary),
                "pattern": self.pattern.to_dict(), "description": self.description}


def _table_sizes(num_classes: int, looks_per_class: int) -> Tuple[int, int]:
    """(number of palette colours P, number of patterns K) used by the look table."""
    n, share, k_total = num_classes * looks_per_class, 3, len(patterns())
    k = min(k_total, max(looks_per_class + 1, 2, -(-n // share)))
    p = max(looks_per_class + 1, 2, -(-n // share))
    if p > 16:
        p = max(16, -(-5 * n // (4 * k)))
    while 5 * p * k < 6 * n:  # keep >= 20% free (colour, pattern) cells for the assignment
        p += 1
    return p, k


def _secondary(rgb: Tuple[int, int, int]) -> Tuple[int, int, int]:
    """Second tone of a textured look: a dark shade of light colours, a light tint of dark ones."""
    r, g, b = rgb
    if 299 * r + 587 * g + 114 * b >= 1000 * 110:
        return tuple(int(round(0.35 * c)) for c in rgb)  # type: ignore[return-value]
    return tuple(int(round(0.35 * c + 0.65 * 230)) for c in rgb)  # type: ignore[return-value]


_LOOK_CACHE: Dict[Tuple[int, int, int], List[List[Look]]] = {}


def look_table(spec: ToySceneSpec) -> List[List[Look]]:
    """``table[c][l]``: the l-th look of class c. Depends on num_classes, looks_per_class and the
    look seed only.

    Assignment: slots are filled round-robin (look 0 of every class in random class order, then
    look 1, ...). Each slot takes the unused (colour, pattern) cell that minimises the usage
    counts of its colour and pattern (so colours and patterns are shared evenly across classes),
    never reusing a colour or a pattern within the class and, while possible, not a texture
    family either, and preferring colours far from the class's other colours.
    """
    key = (spec.num_classes, spec.looks_per_class, spec.effective_look_seed)
    if key in _LOOK_CACHE:
        return [list(row) for row in _LOOK_CACHE[key]]
    C, L = spec.num_classes, spec.looks_per_class
    P, K = _table_sizes(C, L)
    entries = _palette_entries(P)
    cols = np.array([rgb for rgb, _ in entries], dtype=np.float64)
    dist = np.sqrt(((cols[:, None, :] - cols[None, :, :]) ** 2).sum(-1)) / math.sqrt(3 * 255.0**2)
    pats = patterns()[:K]
    fam_names = sorted({p.family for p in pats})
    fam = np.array([fam_names.index(p.family) for p in pats])
    rng = _Rng(spec.effective_look_seed, 1, C, L)

    def assign() -> Tuple[List[List[int]], List[List[int]], int]:
        used = np.zeros((P, K), dtype=bool)
        use_c = np.zeros(P)
        use_k = np.zeros(K)
        cls_c: List[List[int]] = [[] for _ in range(C)]
        cls_k: List[List[int]] = [[] for _ in range(C)]
        violations = 0  # 1 per repeated texture family, 1000 per repeated colour or pattern
        for _ in range(L):
            order = list(range(C))
            rng.shuffle(order)
            for c in order:
                tie = rng._raw(P * K).reshape(P, K).astype(np.float64) * 2.0**-64 * 1e-3
                far = dist[:, cls_c[c]].min(1) if cls_c[c] else np.zeros(P)
                score = use_c[:, None] + use_k[None, :] - 3.0 * far[:, None] + tie
                bad_c = np.zeros(P, dtype=bool)
                bad_c[cls_c[c]] = True
                bad_k = np.zeros(K, dtype=bool)
                bad_k[cls_k[c]] = True
                bad_f = np.isin(fam, fam[cls_k[c]]) if cls_k[c] else np.zeros(K, dtype=bool)
                for cost, forbid in ((0, bad_c[:, None] | bad_k[None, :] | bad_f[None, :]),
                                     (1, bad_c[:, None] | bad_k[None, :]),
                                     (1000, np.zeros((P, K), dtype=bool))):
                    s = np.where(used | forbid, np.inf, score)
                    if np.isfinite(s).any():
                        break
                violations += cost
                p, k = divmod(int(np.argmin(s)), K)
                used[p, k] = True
                use_c[p] += 1
                use_k[k] += 1
                cls_c[c].append(p)
                cls_k[c].append(k)
        return cls_c, cls_k, violations

    # The greedy pass can corner itself; retry a few times and keep the best assignment.
    best = assign()
    for _ in range(7):
        if best[2] == 0:
            break
        attempt = assign()
        if attempt[2] < best[2]:
            best = attempt
    cls_c, cls_k, _ = best

    table = []
    for c in range(C):
        row = []
        for j in range(L):
            p, k = cls_c[c][j], cls_k[c][j]
            rgb = entries[p][0]
            row.append(Look(c, j, p, k, rgb, _secondary(rgb), pats[k],
                            f"{entries[p][1]} {pats[k].name}"))
        table.append(row)
    _LOOK_CACHE[key] = table
    return [list(row) for row in table]


def class_names(spec: ToySceneSpec) -> List[str]:
    """``toy00`` ... (three digits from 101 classes on)."""
    width = max(2, len(str(spec.num_classes - 1)))
    return [f"toy{i:0{width}d}" for i in range(spec.num_classes)]


def class_colors(spec: ToySceneSpec) -> List[Tuple[int, int, int]]:
    """Distinct display colours for the classes (golden-angle hues, varying saturation/value).

    These are for visualising label maps; they are unrelated to the colours of the looks.
    """
    out: List[Tuple[int, int, int]] = []
    seen = set()
    i = 0
    while len(out) < spec.num_classes:
        h = (i * 0.6180339887498949) % 1.0
        s = (0.85, 0.55, 0.95)[(i // 7) % 3]
        v = (0.95, 0.75, 0.55)[(i // 3) % 3]
        rgb = _hsv(h, s, v)
        if rgb not in seen:
            seen.add(rgb)
            out.append(rgb)
        i += 1
    return out


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------
def _pattern_mask(pat: Pattern, yy: np.ndarray, xx: np.ndarray, rng: _Rng) -> np.ndarray:
    """1 where the primary tone is shown, 0 for the secondary tone. Integer arithmetic only."""
    p = pat.period
    y = yy + rng.randint(0, 64)
    x = xx + rng.randint(0, 64)
    if pat.family == "solid":
        return np.ones(yy.shape, dtype=bool)
    if pat.family in ("stripes", "zigzag"):
        o = pat.orientation
        u = {"h": y, "v": x, "d1": x + y, "d2": x - y + 1024}[o]
        if pat.family == "zigzag":
            v = x if o == "h" else y
            u = u + np.abs(v % (2 * p) - p)
        return (u % p) < (p // 2)
    if pat.family == "checker":
        c = p // 2
        return ((y // c + x // c) % 2).astype(bool)
    if pat.family == "diamonds":  # 45-degree checker; diamonds of diagonal ``p``
        c = p
        return (((x + y) // c + (x - y + 1024) // c) % 2).astype(bool)
    if pat.family == "dots":
        dy, dx = 2 * (y % p) - (p - 1), 2 * (x % p) - (p - 1)
        r2 = (0.6 * p) ** 2  # dot radius 0.3 * period
        return (dy * dy + dx * dx) > r2
    if pat.family == "grid":
        w = max(1, p // 4)
        return ~(((y % p) < w) | ((x % p) < w))
    if pat.family == "tiles":
        cells = rng.bits((int(y.max()) // p + 1, int(x.max()) // p + 1))
        return cells[y // p, x // p]
    raise ValueError(pat.family)


def render_look_swatch(spec: ToySceneSpec, class_id: int, look_id: int,
                       size: Tuple[int, int] = (32, 32)) -> np.ndarray:
    """An (H, W, 3) uint8 swatch of a look, without jitter or noise (for docs, tests, audits)."""
    look = look_table(spec)[class_id][look_id]
    yy, xx = np.mgrid[0:size[0], 0:size[1]]
    m = _pattern_mask(look.pattern, yy, xx, _Rng(0, 9))
    prim, sec = np.array(look.primary, np.float64), np.array(look.secondary, np.float64)
    return np.where(m[..., None], prim, sec).astype(np.uint8)


def _polygon_mask(verts: Sequence[Tuple[float, float]], py: np.ndarray, px: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test at pixel centres; verts are (y, x)."""
    inside = np.zeros(py.shape, dtype=bool)
    n = len(verts)
    for i in range(n):
        y1, x1 = verts[i]
        y2, x2 = verts[(i + 1) % n]
        if y1 == y2:
            continue
        crosses = (y1 > py) != (y2 > py)
        x_at = (x2 - x1) * (py - y1) / (y2 - y1) + x1
        inside ^= crosses & (px < x_at)
    return inside


# Unit polygons (rounded so that libm differences in the last bit cannot matter).
_REGULAR = {k: [(round(math.sin(2 * math.pi * i / k), 12), round(math.cos(2 * math.pi * i / k), 12))
                for i in range(k)] for k in (3, 5, 6, 7)}
_SHAPES = ("ellipse", "rectangle", "triangle", "polygon", "blob")


def _shape_mask(kind: str, rng: _Rng, py: np.ndarray, px: np.ndarray, H: int, W: int,
                radius: float) -> np.ndarray:
    cy, cx = rng.uniform(0.1, 0.9) * H, rng.uniform(0.1, 0.9) * W
    cs, sn = rng.unit_vector()
    dy, dx = py - cy, px - cx
    u, v = dx * cs + dy * sn, dy * cs - dx * sn  # rotated coordinates
    if kind == "ellipse":
        a, b = radius * rng.uniform(0.6, 1.0), radius * rng.uniform(0.4, 1.0)
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    if kind == "rectangle":
        a, b = radius * rng.uniform(0.5, 1.0), radius * rng.uniform(0.35, 0.9)
        return (np.abs(u) <= a) & (np.abs(v) <= b)
    if kind in ("triangle", "polygon"):
        k = 3 if kind == "triangle" else (5, 6, 7)[rng.randint(0, 3)]
        verts = []
        for sy, sx in _REGULAR[k]:
            r = radius * rng.uniform(0.6 if kind == "polygon" else 0.8, 1.15)
            vy, vx = r * sy, r * sx
            verts.append((cy + vx * sn + vy * cs, cx + vx * cs - vy * sn))
        return _polygon_mask(verts, py, px)
    if kind == "blob":
        m = np.zeros(py.shape, dtype=bool)
        for _ in range(3):
            oy, ox = rng.uniform(-0.5, 0.5) * radius, rng.uniform(-0.5, 0.5) * radius
            a, b = radius * rng.uniform(0.35, 0.7), radius * rng.uniform(0.35, 0.7)
            m |= ((u - ox) / a) ** 2 + ((v - oy) / b) ** 2 <= 1.0
        return m
    raise ValueError(kind)


class _Deck:
    """Deals (class, look) pairs; every pair once per shuffled round."""

    def __init__(self, spec: ToySceneSpec, rng: _Rng) -> None:
        self._pairs = [(c, j) for c in range(spec.num_classes) for j in range(spec.looks_per_class)]
        self._rng = rng
        self._cards: List[Tuple[int, int]] = []

    def draw(self) -> Tuple[int, int]:
        if not self._cards:
            self._cards = list(self._pairs)
            self._rng.shuffle(self._cards)
        return self._cards.pop()


def _generate_scene(spec: ToySceneSpec, rng: _Rng, deck: _Deck
                   ) -> Tuple[np.ndarray, np.ndarray, List[Tuple[int, int]], np.ndarray]:
    """One scene: (rgb uint8 HxWx3, label uint8 HxW, regions [(class, look) or (255, -1)],
    region map int HxW (index into regions, -1 = ignore band))."""
    H, W = spec.image_size
    table = look_table(spec)
    yy, xx = np.mgrid[0:H, 0:W]
    py, px = yy + 0.5, xx + 0.5
    region_map = np.zeros((H, W), dtype=np.int64)
    regions: List[Tuple[int, int]] = []
    masks: List[Optional[np.ndarray]] = []

    # Background: one region, or two regions on either side of a random line.
    regions.append(deck.draw())
    masks.append(None)
    if rng.bernoulli(spec.split_background_prob):
        ny, nx = rng.unit_vector()
        oy, ox = rng.uniform(0.25, 0.75) * H, rng.uniform(0.25, 0.75) * W
        regions.append(deck.draw())
        masks.append((py - oy) * ny + (px - ox) * nx > 0)
    for _ in range(rng.randint(spec.min_shapes, spec.max_shapes + 1)):
        kind = _SHAPES[rng.randint(0, len(_SHAPES))]
        radius = rng.uniform(0.14, 0.32) * min(H, W)
        regions.append(deck.draw())
        masks.append(_shape_mask(kind, rng, py, px, H, W, radius))
    if rng.bernoulli(spec.other_blob_prob):
        radius = rng.uniform(0.07, 0.14) * min(H, W)
        regions.append((IGNORE_LABEL, -1))
        masks.append(_shape_mask("blob", rng, py, px, H, W, radius))

    img = np.zeros((H, W, 3), dtype=np.float64)
    for i, ((c, j), mask) in enumerate(zip(regions, masks)):
        if c == IGNORE_LABEL:  # unlabelled "other" stuff: grey random mosaic
            levels = rng.levels((H // 3 + 1, W // 3 + 1), 6).astype(np.float64)
            fill = np.repeat((70.0 + 25.0 * levels[yy // 3, xx // 3])[..., None], 3, axis=2)
        else:
            look = table[c][j]
            m = _pattern_mask(look.pattern, yy, xx, rng)[..., None]
            gain = rng.uniform(0.92, 1.08)
            shift = np.array([rng.uniform(-8.0, 8.0) for _ in range(3)])
            prim = np.array(look.primary, np.float64) * gain + shift
            sec = np.array(look.secondary, np.float64) * gain + shift
            fill = np.where(m, prim, sec)
        if mask is None:
            img[...] = fill
            region_map[...] = i
        else:
            img[mask] = fill[mask]
            region_map[mask] = i

    label_of_region = np.array([c for c, _ in regions], dtype=np.uint8)
    label = label_of_region[region_map]
    if spec.boundary_ignore_width > 0:
        edge = np.zeros((H, W), dtype=bool)
        edge[1:, :] |= region_map[1:, :] != region_map[:-1, :]
        edge[:, 1:] |= region_map[:, 1:] != region_map[:, :-1]
        for _ in range(spec.boundary_ignore_width - 1):
            grown = edge.copy()
            grown[1:, :] |= edge[:-1, :]
            grown[:-1, :] |= edge[1:, :]
            grown[:, 1:] |= edge[:, :-1]
            grown[:, :-1] |= edge[:, 1:]
            edge = grown
        label[edge] = IGNORE_LABEL
        region_map = np.where(edge, -1, region_map)

    img = img * rng.uniform(0.9, 1.1)
    if spec.noise_std > 0:
        img = img + spec.noise_std * rng.normal((H, W, 3))
    rgb = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return rgb, label, regions, region_map


# --------------------------------------------------------------------------------------------
# Dataset generation
# --------------------------------------------------------------------------------------------
def _file_stem(tag: str, index: int, count: int) -> str:
    return f"toy_{tag}_{index:0{max(5, len(str(count - 1)))}d}"


def split_files(root: Union[str, Path], split: str) -> Iterator[Tuple[Path, Path]]:
    """(image, label) paths of a split directory ("training"/"validation"), sorted."""
    root = Path(root)
    for img in sorted((root / "images" / split).glob("toy_*.jpg")):
        yield img, root / "annotations_detectron2" / split / (img.stem + ".png")


def _clean_root(root: Path) -> None:
    """Remove a previous generation (meta.json first, so a half-written dataset never has one);
    refuse loudly if the split directories hold files this generator did not write."""
    meta_path = root / "meta.json"
    if meta_path.exists():
        try:
            old = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            raise FileExistsError(f"{meta_path} exists but is not a toy-scenes meta.json ({e}); "
                                  "remove it or choose another root") from e
        if not isinstance(old, dict) or old.get("generator", {}).get("name") != GENERATOR_NAME:
            raise FileExistsError(f"{meta_path} was not written by {GENERATOR_NAME}; "
                                  "remove it or choose another root")
    split_dirs = [root / top / split for top in ("images", "annotations_detectron2")
                  for split, _ in SPLITS]
    foreign = [p for d in split_dirs if d.is_dir() for p in sorted(d.iterdir())
               if not (p.is_file() and _FILE_RE.match(p.name))]
    if foreign:
        shown = ", ".join(str(p) for p in foreign[:5])
        raise FileExistsError(f"{root} holds {len(foreign)} entries not written by {GENERATOR_NAME} "
                              f"in its split directories (e.g. {shown}); remove them or choose "
                              "another root")
    if meta_path.exists():
        meta_path.unlink()
    for d in split_dirs:
        if d.is_dir():
            for p in d.iterdir():
                p.unlink()


def generate_toy_scenes(root: Union[str, Path], spec: Optional[ToySceneSpec] = None) -> Dict[str, Any]:
    """Write the dataset of ``spec`` (default: ``ToySceneSpec()``) under ``root``; return meta.

    A previous toy-scenes generation in ``root`` (any spec) is removed first; files of anything
    else in the split directories raise ``FileExistsError``. ``meta.json`` is written last, so its
    presence marks a complete dataset. The returned dict equals the content of ``meta.json``.
    """
    spec = ToySceneSpec() if spec is None else spec
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _clean_root(root)

    C, L = spec.num_classes, spec.looks_per_class
    table = look_table(spec)
    P, K = _table_sizes(C, L)
    splits_meta: Dict[str, Any] = {}
    digests: Dict[str, Any] = {}
    for split_index, (split, tag) in enumerate(SPLITS):
        count = spec.num_images(split)
        img_dir = root / "images" / split
        ann_dir = root / "annotations_detectron2" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        ann_dir.mkdir(parents=True, exist_ok=True)
        rng = _Rng(spec.seed, 2, split_index)
        deck = _Deck(spec, _Rng(spec.seed, 3, split_index))
        class_pixels = np.zeros(C, dtype=np.int64)
        look_pixels = np.zeros((C, L), dtype=np.int64)
        look_regions = np.zeros((C, L), dtype=np.int64)
        images_with_class = np.zeros(C, dtype=np.int64)
        ignore_pixels = 0
        h_img, h_lab = hashlib.sha256(), hashlib.sha256()
        for i in range(count):
            rgb, label, regions, region_map = _generate_scene(spec, rng, deck)
            stem = _file_stem(tag, i, count)
            Image.fromarray(rgb).save(img_dir / f"{stem}.jpg", format="JPEG",
                                      quality=spec.jpeg_quality, subsampling=2, optimize=False)
            Image.fromarray(label).save(ann_dir / f"{stem}.png", format="PNG", optimize=False)
            h_img.update(rgb.tobytes())
            h_lab.update(label.tobytes())
            class_pixels += np.bincount(label.ravel(), minlength=256)[:C]
            images_with_class += np.bincount(label.ravel(), minlength=256)[:C] > 0
            ignore_pixels += int((label == IGNORE_LABEL).sum())
            region_pixels = np.bincount(region_map[region_map >= 0], minlength=len(regions))
            for r, (c, j) in enumerate(regions):
                if c != IGNORE_LABEL and region_pixels[r] > 0:
                    look_pixels[c, j] += region_pixels[r]
                    look_regions[c, j] += 1
        H, W = spec.image_size
        splits_meta[split] = {
            "num_images": count,
            "image_dir": f"images/{split}",
            "label_dir": f"annotations_detectron2/{split}",
            "total_pixels": count * H * W,
            "ignore_pixels": ignore_pixels,
            "class_pixels": class_pixels.tolist(),
            "images_with_class": images_with_class.tolist(),
            "look_pixels": look_pixels.tolist(),
            "look_regions": look_regions.tolist(),
        }
        digests[split] = {"raw_rgb_sha256": h_img.hexdigest(), "label_sha256": h_lab.hexdigest()}

    meta = {
        "generator": {"name": GENERATOR_NAME, "version": GENERATOR_VERSION},
        "layout": "ADE20K (detectron2): images/<split>/*.jpg, annotations_detectron2/<split>/*.png "
                  "(8-bit L; 0..C-1 classes, 255 ignore)",
        "spec": spec.to_dict(),
        "ignore_label": IGNORE_LABEL,
        "class_names": class_names(spec),
        "class_colors": [list(c) for c in class_colors(spec)],
        "palette": [{"rgb": list(rgb), "name": name} for rgb, name in _palette_entries(P)],
        "patterns": [p.to_dict() for p in patterns()[:K]],
        "looks": [[look.to_dict() for look in row] for row in table],
        "splits": splits_meta,
        "content_sha256": digests,
    }
    (root / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def load_meta(root: Union[str, Path]) -> Dict[str, Any]:
    """The meta.json of a generated dataset (FileNotFoundError if there is none)."""
    return json.loads((Path(root) / "meta.json").read_text())


def ensure_toy_scenes(root: Union[str, Path], spec: Optional[ToySceneSpec] = None) -> Dict[str, Any]:
    """Generate the dataset unless ``root`` already holds a complete generation of ``spec``."""
    spec = ToySceneSpec() if spec is None else spec
    root = Path(root)
    try:
        meta = load_meta(root)
        same = (meta.get("generator") == {"name": GENERATOR_NAME, "version": GENERATOR_VERSION}
                and ToySceneSpec.from_dict(meta["spec"]) == spec)
    except (OSError, ValueError, KeyError, TypeError):
        same = False
    if same and all(
        sum(1 for _, lab in split_files(root, split) if lab.is_file()) == spec.num_images(split)
        for split, _ in SPLITS
    ):
        return meta
    return generate_toy_scenes(root, spec)
