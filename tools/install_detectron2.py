#!/usr/bin/env python3
"""Install Detectron2 into the running interpreter's environment, unless it already has one.

Run by ``tools/setup_env.sh`` with the virtual environment's python (stdlib only).

* If ``import detectron2.modeling`` already works in this interpreter and that detectron2 was
  not installed by this script, it is user-provided (e.g. from GitHub, see README.md): it is
  reported and left alone.
* Otherwise the name ``detectron2`` is not on PyPI, so this script installs the sdist
  ``pb1-detectron2==0.6`` (detectron2's v0.6 Python tree without ``layers/csrc``), checked
  against a pinned sha256 and kept in ``<prefix>/share/protoseg/`` so that
  ``tests/test_detectron2_install.py`` can compare the installed package with it:

  1. unpack it into a temporary directory;
  2. apply ``tools/detectron2_patches/v0.6-numpy-pillow-aliases.patch`` (backport of upstream's
     fixes for the NumPy 1.24 / Pillow 10 alias removals), strictly, without fuzz;
  3. make the build pure Python: remove the C++/CUDA extension (``ext_modules``, ``cmdclass``)
     from its setup.py and drop its ``black==21.4b2`` requirement (only used to pretty-print
     LazyConfig files); install the model-zoo configs the sdist ships (its setup.py looks for
     them where the sdist does not have them); do not install the sdist's example scripts
     tools/ as a top-level ``tools`` package. (setup.py is not part of the installed package.)
  4. ``pip install --no-build-isolation <dir>`` (non-editable); pip pulls fvcore, iopath,
     pycocotools, omegaconf, hydra-core, ... from the package registries;
  5. write the stand-in ``detectron2/_C.py`` (compiled ops are not needed for semantic
     segmentation) and the marker ``detectron2/PROTOSEG_INSTALL.json`` into the INSTALLED
     package, and add both to the distribution's RECORD so that
     ``pip uninstall pb1-detectron2`` removes them too.

Options: ``--force`` reinstalls a detectron2 that this script installed (never a user-provided
one).
"""
from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

DIST_NAME = "pb1-detectron2"
DIST_VERSION = "0.6"
SDIST_NAME = "pb1-detectron2-0.6.tar.gz"
SDIST_TOPDIR = "pb1-detectron2-0.6"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
PATCH_PATH = REPO_ROOT / "tools" / "detectron2_patches" / "v0.6-numpy-pillow-aliases.patch"

MARKER_NAME = "PROTOSEG_INSTALL.json"
STANDIN_NAME = "_C.py"
# Where the sdist is kept: <venv>/share/protoseg/ (the test reads it from there).
SDIST_STORE = Path(sys.prefix) / "share" / "protoseg"

# The machine's pip.conf lists local file:// mirrors that hold only a few projects; pip warns
# once per project it does not find there. Pure noise: filtered out of pip's stderr (nothing else).
_PIP_NOISE = re.compile(
    r"^WARNING: Location 'file://[^']*' is ignored: it is neither a file nor a directory\.\s*$"
)

STANDIN_SOURCE = '''\
"""Stand-in for detectron2's compiled extension ``detectron2._C``.

Written by protoseg's tools/install_detectron2.py into a pure-Python build of pb1-detectron2 0.6
(detectron2 v0.6 without its C++/CUDA ops). ``from detectron2 import _C`` succeeds, as
detectron2/layers/deform_conv.py and others need at import time; using any compiled op raises
ImportError. The three informational functions below exist so that
detectron2.utils.collect_env.collect_env_info() (called by detectron2.engine.default_setup)
reports the build instead of failing.
"""

_MESSAGE = (
    "detectron2 was installed without its compiled ops (pb1-detectron2 pure-Python build by "
    "protoseg's tools/install_detectron2.py); detectron2._C.{name} is not available. Semantic "
    "segmentation does not need them; install detectron2 from source for deformable conv, "
    "rotated boxes/NMS/ROIAlignRotated and the fast C++ COCO evaluation: "
    "python -m pip install 'git+https://github.com/facebookresearch/detectron2.git'"
)


def get_compiler_version():
    return "none (pure-Python build without detectron2._C, by protoseg tools/install_detectron2.py)"


def get_cuda_version():
    return "none (pure-Python build without detectron2._C)"


def has_cuda():
    return False


def __getattr__(name):
    # Dunder look-ups (__path__, __wrapped__, ...) come from the import system, copy, inspect,
    # hasattr(): they must see an ordinary AttributeError.
    if name.startswith("__") and name.endswith("__"):
        raise AttributeError(f"module 'detectron2._C' has no attribute {name!r}")
    raise ImportError(_MESSAGE.format(name=name), name="detectron2._C")
'''


class InstallError(RuntimeError):
    """A step failed; the message says which and why."""


def log(msg: str) -> None:
    print(f"[install_detectron2] {msg}", flush=True)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_pip(args: list[str], what: str) -> None:
    """Run ``python -m pip ARGS`` quietly; errors stay visible. Raise InstallError naming WHAT."""
    cmd = [sys.executable, "-m", "pip", *args]
    env = dict(os.environ, PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    for line in proc.stderr:
        if not _PIP_NOISE.match(line):
            sys.stderr.write(line)
            sys.stderr.flush()
    rc = proc.wait()
    if rc != 0:
        raise InstallError(f"{what} failed (exit status {rc}): {' '.join(cmd)}")


# --------------------------------------------------------------------------------------------
# What is installed now
# --------------------------------------------------------------------------------------------
_PROBE = r"""
import json, os, sys
out = {"found": False}
try:
    import importlib.util
    spec = importlib.util.find_spec("detectron2")
except Exception as e:  # broken parent package
    spec = None
    out["find_error"] = repr(e)
if spec is not None and spec.submodule_search_locations:
    pkg = os.path.realpath(list(spec.submodule_search_locations)[0])
    out.update(found=True, path=pkg, marker=os.path.isfile(os.path.join(pkg, "PROTOSEG_INSTALL.json")))
    # the distributions whose installed files include THIS detectron2/__init__.py
    owners = set()
    try:
        import importlib.metadata as md
        init = os.path.join(pkg, "__init__.py")
        for d in md.distributions():
            for f in d.files or ():
                if f.as_posix() == "detectron2/__init__.py" and os.path.realpath(f.locate()) == init:
                    owners.add(d.metadata["Name"])
    except Exception:
        pass
    out["dists"] = sorted(owners)
    try:
        import detectron2.modeling  # noqa: F401
        import detectron2
        out["ok"] = True
        out["version"] = getattr(detectron2, "__version__", "?")
    except Exception as e:
        out["ok"] = False
        out["error"] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"""


def probe() -> dict:
    """Look at detectron2 in a fresh interpreter, from a neutral cwd (so no source tree shadows it)."""
    with tempfile.TemporaryDirectory() as cwd:
        res = subprocess.run(
            [sys.executable, "-c", _PROBE], cwd=cwd, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
    if res.returncode != 0:
        raise InstallError(f"could not inspect the environment with {sys.executable}:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def read_marker(pkg_dir: str) -> dict:
    try:
        with open(os.path.join(pkg_dir, MARKER_NAME)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


# --------------------------------------------------------------------------------------------
# Download (hash-checked)
# --------------------------------------------------------------------------------------------
def ensure_sdist() -> Path:
    """Return the stored sdist, downloading it with pip's hash checking when needed."""
    SDIST_STORE.mkdir(parents=True, exist_ok=True)
    dest = SDIST_STORE / SDIST_NAME
    if dest.is_file():
        if sha256_of(dest) == SDIST_SHA256:
            log(f"using the stored sdist {dest}")
            return dest
        log(f"stored {dest} has the wrong sha256; downloading it again")
        dest.unlink()

    try:
        import torch  # noqa: F401  (the sdist's setup.py imports torch to build its metadata)
    except ImportError as e:
        raise InstallError(
            f"torch is not importable in {sys.executable} ({e}); install torch and torchvision first "
            "(tools/setup_env.sh does)"
        ) from e

    log(f"downloading {DIST_NAME}=={DIST_VERSION} (sdist, sha256 {SDIST_SHA256[:12]}...)")
    with tempfile.TemporaryDirectory(prefix="protoseg-d2-dl-") as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(f"{DIST_NAME}=={DIST_VERSION} --hash=sha256:{SDIST_SHA256}\n")
        dl = Path(tmp) / "dl"
        run_pip(
            ["download", "-q", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
             "--require-hashes", "-r", str(req), "-d", str(dl)],
            what=f"hash-checked download of {DIST_NAME}=={DIST_VERSION} (if the registry served "
            "other bytes, pip says 'DO NOT MATCH THE HASHES' above)",
        )
        got = dl / SDIST_NAME
        if not got.is_file():
            found = sorted(p.name for p in dl.iterdir()) if dl.is_dir() else []
            raise InstallError(f"download: pip did not produce {SDIST_NAME} (got {found})")
        digest = sha256_of(got)
        if digest != SDIST_SHA256:  # pip already checked; check again, cheaply
            raise InstallError(f"hash mismatch for {SDIST_NAME}: expected {SDIST_SHA256}, got {digest}")
        shutil.move(str(got), str(dest))
    log(f"stored the sdist at {dest}")
    return dest


def unpack(sdist: Path, into: Path) -> Path:
    with tarfile.open(sdist, "r:gz") as tf:
        for m in tf.getmembers():
            parts = Path(m.name).parts
            if m.name.startswith("/") or ".." in parts or not (m.isfile() or m.isdir()):
                raise InstallError(f"unpack: unexpected member {m.name!r} in {sdist.name}")
        if hasattr(tarfile, "data_filter"):
            tf.extractall(into, filter="data")
        else:  # Python < 3.11.4/3.10.12/3.9.17; members were checked above
            tf.extractall(into)
    src = into / SDIST_TOPDIR
    if not (src / "setup.py").is_file() or not (src / "detectron2" / "__init__.py").is_file():
        raise InstallError(f"unpack: {sdist.name} does not have the expected layout {SDIST_TOPDIR}/")
    return src


# --------------------------------------------------------------------------------------------
# Strict unified-diff application (stdlib only; no dependency on patch(1) or git)
# --------------------------------------------------------------------------------------------
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def parse_patch(text: str) -> list[tuple[str, list[tuple[int, list[tuple[str, str]]]]]]:
    """Return [(path, [(old_start, [(tag, line), ...]), ...]), ...] for a -p1 unified diff.

    Lines before the first ``--- `` (the explanatory header) are ignored.
    """
    lines = text.splitlines(keepends=True)
    files: list = []
    i = 0
    while i < len(lines):
        if not lines[i].startswith("--- "):
            i += 1
            continue
        if i + 1 >= len(lines) or not lines[i + 1].startswith("+++ "):
            raise InstallError(f"patch: line {i + 1}: '--- ' not followed by '+++ '")
        new = lines[i + 1][4:].split("\t")[0].strip()
        if not new.startswith("b/"):
            raise InstallError(f"patch: line {i + 2}: expected a b/ path (-p1), got {new!r}")
        path = new[2:]
        i += 2
        hunks = []
        while i < len(lines) and lines[i].startswith("@@"):
            m = _HUNK.match(lines[i])
            if not m:
                raise InstallError(f"patch: line {i + 1}: malformed hunk header {lines[i]!r}")
            old_start, old_len = int(m.group(1)), int(m.group(2) or 1)
            new_len = int(m.group(4) or 1)
            i += 1
            body: list[tuple[str, str]] = []
            n_old = n_new = 0
            while i < len(lines) and (n_old < old_len or n_new < new_len or lines[i].startswith("\\")):
                ln = lines[i]
                if ln.startswith("\\"):  # "\ No newline at end of file": previous line lacks "\n"
                    tag, prev = body[-1]
                    body[-1] = (tag, prev.rstrip("\n"))
                elif ln[:1] in (" ", "-", "+") or ln in ("\n",):
                    tag = ln[:1] if ln != "\n" else " "
                    content = ln[1:] if ln != "\n" else "\n"
                    body.append((tag, content))
                    n_old += tag in (" ", "-")
                    n_new += tag in (" ", "+")
                else:
                    raise InstallError(f"patch: line {i + 1}: unexpected line in hunk: {ln!r}")
                i += 1
            if n_old != old_len or n_new != new_len:
                raise InstallError(f"patch: hunk of {path} ends early (counts do not match its header)")
            hunks.append((old_start, body))
        if not hunks:
            raise InstallError(f"patch: no hunks for {path}")
        files.append((path, hunks))
    if not files:
        raise InstallError("patch: no file diffs found")
    return files


def apply_hunks(original: str, hunks, path: str) -> str:
    """Apply hunks exactly at their stated lines (no offset, no fuzz)."""
    old = original.splitlines(keepends=True)
    out: list[str] = []
    pos = 0  # index in old
    for n, (old_start, body) in enumerate(hunks, 1):
        start = old_start - 1 if old_start > 0 else 0
        expect = [c for t, c in body if t in (" ", "-")]
        if start < pos or old[start:start + len(expect)] != expect:
            raise InstallError(
                f"patch does not apply: hunk {n} of {path} (at line {old_start}) does not match the "
                "unpacked sdist"
            )
        out.extend(old[pos:start])
        out.extend(c for t, c in body if t in (" ", "+"))
        pos = start + len(expect)
    out.extend(old[pos:])
    return "".join(out)


def apply_patch(patch_path: Path, root: Path) -> list[str]:
    files = parse_patch(patch_path.read_text(encoding="utf-8"))
    for rel, hunks in files:
        target = root / rel
        if not target.is_file():
            raise InstallError(f"patch does not apply: {rel} is not in the unpacked sdist")
        # newline="" keeps line endings byte-for-byte
        with open(target, encoding="utf-8", newline="") as f:
            text = f.read()
        new = apply_hunks(text, hunks, rel)
        with open(target, "w", encoding="utf-8", newline="") as f:
            f.write(new)
    return [rel for rel, _ in files]


# --------------------------------------------------------------------------------------------
# Pure-Python build
# --------------------------------------------------------------------------------------------
def make_pure_python(src: Path) -> list[str]:
    """Edit the sdist's setup.py (not installed itself); return a description of the edits."""
    setup_py = src / "setup.py"
    text = setup_py.read_text(encoding="utf-8")
    edits = [
        # the extension list: its sources (detectron2/layers/csrc) are not in the sdist
        ('    ext_modules=get_extensions(),\n', '', "removed ext_modules=get_extensions()"),
        ('    cmdclass={"build_ext": torch.utils.cpp_extension.BuildExtension},\n', '',
         "removed cmdclass build_ext"),
        # only used to pretty-print LazyConfig files; an old pin that conflicts with current tools
        ('        "black==21.4b2",\n', '', "dropped the black==21.4b2 requirement"),
        # The sdist's tools/ (detectron2's example scripts) has an __init__.py, so find_packages
        # would install it as a top-level `tools` package into site-packages, where it would
        # shadow any other `tools` (this repository has one). Not part of the library: skip it.
        ('    packages=find_packages(exclude=("configs", "tests*")) + list(PROJECTS.keys()),\n',
         '    packages=find_packages(exclude=("configs", "tests*", "tools", "tools.*"))\n'
         '    + list(PROJECTS.keys()),\n',
         "did not install the sdist's tools/ scripts as a top-level `tools` package"),
        # The sdist ships the model-zoo configs inside detectron2/model_zoo/configs, but its
        # setup.py globs them from a repository-root configs/ that the sdist lacks, so they would
        # not be installed (model_zoo.get_config_file would fail). Glob them where they are.
        ('    config_paths = glob.glob("configs/**/*.yaml", recursive=True) + glob.glob(\n'
         '        "configs/**/*.py", recursive=True\n'
         '    )\n',
         '    _mz = path.join(path.dirname(path.realpath(__file__)), "detectron2", "model_zoo")\n'
         '    config_paths = [\n'
         '        path.relpath(p, _mz)\n'
         '        for ext in ("yaml", "py")\n'
         '        for p in glob.glob(path.join(_mz, "configs", "**", "*." + ext), recursive=True)\n'
         '    ]\n',
         "model-zoo configs globbed from detectron2/model_zoo/configs"),
    ]
    done = []
    for old, new, desc in edits:
        count = text.count(old)
        if count != 1:
            raise InstallError(
                f"setup.py of {SDIST_NAME}: expected exactly one {old.strip()!r}, found {count}"
            )
        text = text.replace(old, new)
        done.append(desc)
    setup_py.write_text(text, encoding="utf-8")
    return done


def installed_location() -> tuple[Path, Path]:
    """(package dir, RECORD file) of the installed pb1-detectron2, asked from a fresh interpreter."""
    code = (
        "import importlib.metadata as md, json\n"
        f"d = md.distribution({DIST_NAME!r})\n"
        "init = [f for f in d.files if f.as_posix() == 'detectron2/__init__.py']\n"
        "rec = [f for f in d.files if f.name == 'RECORD' and f.parent.name.endswith('.dist-info')]\n"
        "print(json.dumps([str(init[0].locate()), str(rec[0].locate())]))\n"
    )
    with tempfile.TemporaryDirectory() as cwd:
        res = subprocess.run([sys.executable, "-c", code], cwd=cwd, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if res.returncode != 0:
        raise InstallError(f"build: {DIST_NAME} is not installed after pip install:\n{res.stderr}")
    init, record = json.loads(res.stdout.strip().splitlines()[-1])
    return Path(init).resolve().parent, Path(record)


def record_line(site: Path, f: Path) -> str:
    data = f.read_bytes()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{f.relative_to(site).as_posix()},sha256={digest},{len(data)}\n"


def write_added_files(pkg_dir: Path, record: Path, sdist: Path, setup_edits: list[str],
                      patched: list[str]) -> None:
    standin = pkg_dir / STANDIN_NAME
    standin.write_text(STANDIN_SOURCE, encoding="utf-8")
    try:
        import torch
        torch_version = torch.__version__
    except Exception:  # pragma: no cover - informational only
        torch_version = None
    marker = {
        "installed_by": "protoseg tools/install_detectron2.py",
        "distribution": DIST_NAME,
        "version": DIST_VERSION,
        "sdist": {"file": SDIST_NAME, "sha256": SDIST_SHA256, "stored_at": str(sdist)},
        "patch": {"file": PATCH_PATH.name, "sha256": sha256_of(PATCH_PATH), "files": patched},
        "setup_py_edits": setup_edits,
        "files_added": [STANDIN_NAME, MARKER_NAME],
        "python": sys.version.split()[0],
        "torch": torch_version,
        "installed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    marker_path = pkg_dir / MARKER_NAME
    marker_path.write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    # Register both in the distribution's RECORD: `pip uninstall pb1-detectron2` then removes them.
    site = record.parent.parent
    lines = record.read_text(encoding="utf-8").splitlines(keepends=True)
    names = {f"detectron2/{STANDIN_NAME}", f"detectron2/{MARKER_NAME}"}
    lines = [ln for ln in lines if ln.split(",", 1)[0] not in names]
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    lines += [record_line(site, standin), record_line(site, marker_path)]
    record.write_text("".join(lines), encoding="utf-8")


def install(reinstall: bool) -> None:
    if not PATCH_PATH.is_file():
        raise InstallError(f"patch file missing: {PATCH_PATH}")
    sdist = ensure_sdist()
    if reinstall:
        log(f"removing the previous {DIST_NAME} installed by this script")
        run_pip(["uninstall", "-y", "-q", DIST_NAME], what=f"uninstall of the previous {DIST_NAME}")
    with tempfile.TemporaryDirectory(prefix="protoseg-d2-build-") as tmp:
        src = unpack(sdist, Path(tmp))
        patched = apply_patch(PATCH_PATH, src)
        log(f"applied {PATCH_PATH.name} ({len(patched)} files)")
        if (src / "detectron2" / "layers" / "csrc").exists():  # not in this sdist; be explicit if it were
            shutil.rmtree(src / "detectron2" / "layers" / "csrc")
        setup_edits = make_pure_python(src)
        log(f"building {DIST_NAME} {DIST_VERSION} as pure Python and installing it (pip, quiet)")
        try:
            run_pip(["install", "-q", "--no-build-isolation", str(src)],
                    what=f"pure-Python build/install of {DIST_NAME} {DIST_VERSION}")
        except InstallError as e:
            raise InstallError(f"build: {e}") from None
    pkg_dir, record = installed_location()
    write_added_files(pkg_dir, record, sdist, setup_edits, patched)
    log(f"wrote {STANDIN_NAME} (compiled-ops stand-in) and {MARKER_NAME} into {pkg_dir}")

    after = probe()
    if not after.get("ok"):
        raise InstallError(f"import detectron2.modeling still fails after the install: {after.get('error')}")
    log(f"detectron2 {after.get('version')} at {after['path']} (pb1-detectron2 0.6 + alias backport)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--force", action="store_true",
                    help="reinstall even if up to date (only a detectron2 this script installed)")
    args = ap.parse_args(argv)

    try:
        state = probe()
        if not state.get("found"):
            log(f"no detectron2 in {sys.executable}; installing {DIST_NAME}=={DIST_VERSION}")
            install(reinstall=False)
            return 0

        where = state["path"]
        # ours: our marker is there, or it is a pb1-detectron2 install (e.g. an interrupted run)
        ours = state.get("marker") or any(
            d.lower().replace("_", "-") == DIST_NAME for d in state.get("dists", []))
        if not ours:
            if state.get("ok"):
                dists = ", ".join(state.get("dists") or []) or "unknown distribution"
                log(f"found detectron2 {state.get('version')} at {where} ({dists}): user-provided, "
                    "left as it is")
                return 0
            owner = ", ".join(state.get("dists") or []) or "an unknown distribution"
            raise InstallError(
                f"detectron2 at {where} (from {owner}) is installed but "
                f"`import detectron2.modeling` fails: {state.get('error')}\n"
                "It was not installed by this script, so it is left alone. Fix that install, or "
                "uninstall it and rerun tools/setup_env.sh to get the pinned pure-Python build."
            )

        marker = read_marker(where)
        up_to_date = (
            state.get("ok")
            and marker.get("sdist", {}).get("sha256") == SDIST_SHA256
            and PATCH_PATH.is_file()
            and marker.get("patch", {}).get("sha256") == sha256_of(PATCH_PATH)
        )
        if up_to_date and not args.force:
            log(f"detectron2 {state.get('version')} at {where}: installed by this script and up to date")
            return 0
        reason = ("--force" if up_to_date else
                  "the patch or the sdist pin changed" if state.get("ok") else
                  f"it does not import ({state.get('error')})")
        log(f"reinstalling the detectron2 at {where} that this script installed: {reason}")
        install(reinstall=True)
        return 0
    except InstallError as e:
        print(f"[install_detectron2] ERROR: {e}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
