"""The installed Detectron2 is what tools/install_detectron2.py says it is.

When our tool installed it (marker ``detectron2/PROTOSEG_INSTALL.json``), the installed package
must be the pinned sdist ``pb1-detectron2==0.6`` + ``tools/detectron2_patches/*.patch`` +
the ``_C.py`` stand-in + the marker, and nothing else. A user-provided detectron2 (e.g. from
GitHub) is not compared, but must still be free of the aliases NumPy 1.24 / Pillow 10 removed.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sys
import tarfile
import tokenize
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PATCH = REPO_ROOT / "tools" / "detectron2_patches" / "v0.6-numpy-pillow-aliases.patch"
SDIST_NAME = "pb1-detectron2-0.6.tar.gz"
SDIST_TOPDIR = "pb1-detectron2-0.6/"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
SDIST_STORE = Path(sys.prefix) / "share" / "protoseg"
MARKER = "PROTOSEG_INSTALL.json"
ALLOWED_EXTRA = {"detectron2/_C.py", f"detectron2/{MARKER}"}
# setup.py of the sdist installs these source dirs as detectron2.projects.<name>
PROJECTS = {
    "projects/PointRend/point_rend/": "detectron2/projects/point_rend/",
    "projects/DeepLab/deeplab/": "detectron2/projects/deeplab/",
    "projects/Panoptic-DeepLab/panoptic_deeplab/": "detectron2/projects/panoptic_deeplab/",
}
REMOVED_NP = {"int", "float", "bool", "str"}
ALIAS_RE = re.compile(r"\bnp\.(int|float|bool|str)\b|\bImage\.LINEAR\b")  # \b keeps np.int64, np.str_


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def d2_dir() -> Path:
    spec = importlib.util.find_spec("detectron2")
    assert spec is not None and spec.submodule_search_locations, (
        "detectron2 is not installed in this interpreter: run tools/setup_env.sh"
    )
    return Path(list(spec.submodule_search_locations)[0]).resolve()


@pytest.fixture(scope="module")
def marker(d2_dir: Path) -> dict | None:
    path = d2_dir / MARKER
    return json.loads(path.read_text()) if path.is_file() else None


def _installed_files(d2_dir: Path) -> dict[str, Path]:
    out = {}
    for p in d2_dir.rglob("*"):
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc":
            out["detectron2/" + p.relative_to(d2_dir).as_posix()] = p
    return out


def _sdist_files(sdist: Path) -> dict[str, bytes]:
    """The files of the sdist that end up in the installed package, keyed by installed path."""
    out = {}
    with tarfile.open(sdist, "r:gz") as tf:
        for m in tf.getmembers():
            if not m.isfile() or not m.name.startswith(SDIST_TOPDIR):
                continue
            rel = m.name[len(SDIST_TOPDIR):]
            if rel.startswith("detectron2/"):
                key = rel
            else:
                src = next((s for s in PROJECTS if rel.startswith(s)), None)
                if src is None:
                    continue
                key = PROJECTS[src] + rel[len(src):]
            out[key] = tf.extractfile(m).read()
    return out


_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def _apply_patch(files: dict[str, bytes], patch_text: str) -> list[str]:
    """Apply a -p1 unified diff to FILES in memory, strictly; return the touched paths.

    Written independently of the installer's applier, so that the two check each other.
    """
    touched: list[str] = []
    lines = iter(patch_text.splitlines(keepends=True))
    cur: list[str] | None = None
    path = ""
    delta = 0

    def flush() -> None:
        if cur is not None:
            files[path] = "".join(cur).encode("utf-8")

    for ln in lines:
        if ln.startswith("+++ "):
            flush()
            name = ln[4:].split("\t")[0].strip()
            assert name.startswith("b/"), name
            path = name[2:]
            assert path in files, f"patched file {path} is not in the sdist"
            cur = files[path].decode("utf-8").splitlines(keepends=True)
            delta = 0
            touched.append(path)
        elif ln.startswith("@@"):
            assert cur is not None
            m = _HUNK.match(ln)
            assert m, ln
            old_start, old_len, new_len = int(m[1]), int(m[2] or 1), int(m[4] or 1)
            old: list[str] = []
            new: list[str] = []
            while len(old) < old_len or len(new) < new_len:
                h = next(lines)
                assert h[:1] in (" ", "-", "+"), f"unsupported patch line {h!r}"
                if h[:1] in " -":
                    old.append(h[1:])
                if h[:1] in " +":
                    new.append(h[1:])
            start = old_start - 1 + delta
            assert cur[start:start + len(old)] == old, f"hunk at {path}:{old_start} does not apply"
            cur[start:start + len(old)] = new
            delta += len(new) - len(old)
    flush()
    return touched


def test_installed_detectron2_is_pinned_sdist_plus_patch(d2_dir: Path, marker: dict | None) -> None:
    if marker is None:
        pytest.skip("detectron2 is user-provided (no PROTOSEG_INSTALL.json marker): nothing to compare")

    assert (marker["sdist"]["file"], marker["sdist"]["sha256"]) == (SDIST_NAME, SDIST_SHA256)
    assert marker["patch"]["file"] == PATCH.name
    assert marker["patch"]["sha256"] == _sha256(PATCH), (
        f"{PATCH.name} changed since detectron2 was installed: rerun tools/setup_env.sh"
    )
    assert {f"detectron2/{f}" for f in marker["files_added"]} == ALLOWED_EXTRA

    sdist = SDIST_STORE / SDIST_NAME
    assert sdist.is_file(), f"{sdist} is missing: rerun tools/setup_env.sh --force"
    assert _sha256(sdist) == SDIST_SHA256, f"{sdist} does not have the pinned sha256"

    expected = _sdist_files(sdist)
    assert "detectron2/__init__.py" in expected and "detectron2/projects/deeplab/__init__.py" in expected
    touched = _apply_patch(expected, PATCH.read_text(encoding="utf-8"))
    assert len(touched) == 8

    installed = _installed_files(d2_dir)
    missing = sorted(set(expected) - set(installed))
    extra = sorted(set(installed) - set(expected) - ALLOWED_EXTRA)
    assert not missing, f"files of the sdist not installed: {missing[:20]}"
    assert not extra, f"installed files that are not in the sdist: {extra[:20]}"
    assert ALLOWED_EXTRA <= set(installed)

    differing = sorted(k for k, data in expected.items() if installed[k].read_bytes() != data)
    assert not differing, f"installed files that differ from sdist + patch: {differing}"
    n_py = sum(k.endswith(".py") for k in expected)
    assert n_py > 150  # every .py file was compared (198 in v0.6), and the yaml configs too


def _code_aliases(path: Path) -> list[str]:
    """Uses of removed aliases in code (comments and strings ignored)."""
    hits = []
    with open(path, "rb") as f:
        toks = [t for t in tokenize.tokenize(f.readline) if t.type in (tokenize.NAME, tokenize.OP)]
    for a, b, c in zip(toks, toks[1:], toks[2:]):
        if b.string != ".":
            continue
        if (a.string == "np" and c.string in REMOVED_NP) or (a.string == "Image" and c.string == "LINEAR"):
            hits.append(f"{path}:{a.start[0]}: {a.string}.{c.string}")
    return hits


def test_no_removed_numpy_pillow_alias(d2_dir: Path, marker: dict | None) -> None:
    py_files = [p for p in d2_dir.rglob("*.py") if "__pycache__" not in p.parts]
    assert len(py_files) > 100
    hits = [h for p in py_files for h in _code_aliases(p)]
    assert not hits, "aliases removed in NumPy 1.24 / Pillow 10:\n" + "\n".join(hits)
    if marker is not None:  # our install: not even in comments
        text_hits = [
            f"{p}:{i}" for p in py_files
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
            if ALIAS_RE.search(line)
        ]
        assert not text_hits, text_hits


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # v0.6 uses it
def test_compiled_ops_standin_raises_clear_import_error(d2_dir: Path, marker: dict | None) -> None:
    if marker is None:
        pytest.skip("detectron2 is user-provided (no PROTOSEG_INSTALL.json marker): its _C is its own")
    from detectron2 import _C  # the import itself must work (layers/deform_conv.py does it)

    assert Path(_C.__file__).resolve() == d2_dir / "_C.py"
    with pytest.raises(ImportError, match=r"installed without its compiled ops.*deform_conv_forward"):
        _C.deform_conv_forward  # noqa: B018
    with pytest.raises(ImportError, match="Semantic segmentation does not need them"):
        from detectron2._C import box_iou_rotated  # noqa: F401
    assert not hasattr(_C, "__path__")  # dunders stay AttributeError (import system, copy, ...)

    from detectron2.layers import deform_conv  # noqa: F401  (imports _C at import time)
    from detectron2.utils.collect_env import collect_env_info  # used by engine.default_setup

    assert "pure-Python build" in collect_env_info()
