"""docs/ARCHITECTURE.md stays true: its import rules hold for every import of the package (and the
table allows nothing that no import uses, and no circle), the scripts import the installed package
(no path edits, no execution of another file by its path), and one step of the real Trainer calls
from module to module exactly as its training-path list says."""
import ast
import collections
import re
import sys
from pathlib import Path

import pytest

from detectron2.utils.events import EventStorage

from protoseg.engine import Trainer

from conftest import REPO, toy_cfg

PACKAGE = REPO / "projects" / "ProtoSeg" / "protoseg"
ARCHITECTURE = REPO / "docs" / "ARCHITECTURE.md"
SCRIPT_DIRS = ("tools", "demo", "datasets")  # the product's scripts
SCRIPTS = sorted([REPO / "train_net.py"] + [p for d in SCRIPT_DIRS for p in (REPO / d).rglob("*.py")])
# what the package must never import: the scripts' modules and the lab's
SCRIPT_MODULES = {p.stem for p in SCRIPTS} | {p.stem for p in (REPO / "lab").rglob("*.py")}
# Scripts that run another file by path, each for a reason of its own (docs/ARCHITECTURE.md):
RUNS_FILES_BY_PATH = {
    # loads protoseg/data/labels.py and ade20k_full.py without the package's __init__, so that the
    # prepare scripts need numpy and Pillow only (no torch, no Detectron2)
    "datasets/_prepare_common.py",
    # --register FILE: runs the user's own registration file, which is the option's purpose
    "tools/check_dataset.py",
}


def documented_block(name: str) -> str:
    text = ARCHITECTURE.read_text()
    match = re.search(rf"<!-- {name}: .*?-->\n(.*?)<!-- end -->", text, re.S)
    assert match, f"{ARCHITECTURE} has no '<!-- {name}: ... -->' block"
    return match.group(1)


def import_rules():
    """{unit: set of units it may import} from the table of ARCHITECTURE.md."""
    rules = {}
    for line in documented_block("import-rules").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[0].startswith("`"):
            continue
        rules[cells[0].strip("`")] = set(re.findall(r"`([^`]+)`", cells[1]))
    return rules


def unit_of(path: Path) -> str:
    """The unit of a package file: `modeling/<sub>` inside modeling's sub-packages, the folder for
    other packages, the file name for top-level modules."""
    parts = path.relative_to(PACKAGE).parts
    if parts[0] == "modeling" and len(parts) > 2:
        return f"modeling/{parts[1]}"
    return parts[0] if len(parts) > 1 else parts[0]


def resolve(path: Path, node):
    """Package files an import statement of ``path`` reads (relative or ``protoseg.``; ``from``
    or plain ``import``)."""
    if isinstance(node, ast.Import):
        found = []
        for alias in node.names:
            parts = alias.name.split(".")
            if parts[0] != "protoseg":
                continue
            target = PACKAGE.parent.joinpath(*parts)
            if target.with_suffix(".py").is_file():
                found.append(target.with_suffix(".py"))
            elif (target / "__init__.py").is_file():
                found.append(target / "__init__.py")
        return found
    if node.level:
        base = path.parent
        for _ in range(node.level - 1):
            base = base.parent
    elif node.module and node.module.split(".")[0] == "protoseg":
        base = PACKAGE.parent
    else:
        return []
    target = base.joinpath(*(node.module or "").split(".")) if node.module else base
    found = []
    for alias in node.names:
        for candidate in (target / alias.name, target):
            if candidate.with_suffix(".py").is_file():
                found.append(candidate.with_suffix(".py"))
                break
            if (candidate / "__init__.py").is_file():
                found.append(candidate / "__init__.py")
                break
    return found


def package_imports():
    """[(file, unit, imported unit)] for every import of the package, lazy ones included; and the
    names of modules imported with plain ``import``."""
    edges, plain = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                plain.append((path, node.module.split(".")[0]))
            elif isinstance(node, ast.Import):
                plain += [(path, a.name.split(".")[0]) for a in node.names]
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in resolve(path, node):
                    if unit_of(target) != unit_of(path):
                        edges.append((path, unit_of(path), unit_of(target)))
    return edges, plain


def test_every_import_of_the_package_follows_the_documented_rules():
    rules = import_rules()
    edges, plain = package_imports()
    units = {unit_of(p) for p in PACKAGE.rglob("*.py")}
    assert units <= set(rules), f"units missing from the table of {ARCHITECTURE.name}: {sorted(units - set(rules))}"
    broken = sorted({f"{p.relative_to(PACKAGE)}: {a} imports {b}" for p, a, b in edges if b not in rules[a]})
    assert not broken, f"imports that {ARCHITECTURE.name} does not allow:\n" + "\n".join(broken)
    scripts = sorted(f"{p.relative_to(PACKAGE)}: import {m}" for p, m in plain if m in SCRIPT_MODULES)
    assert not scripts, "the package imports a script's module:\n" + "\n".join(scripts)


def test_the_table_allows_only_imports_that_are_made():
    rules = import_rules()
    edges, _ = package_imports()
    made = {(a, b) for _, a, b in edges}
    unused = sorted(f"{a} may import {b}" for a, allowed in rules.items() for b in allowed if (a, b) not in made)
    assert not unused, f"allowances of {ARCHITECTURE.name} that no import uses:\n" + "\n".join(unused)


def circles(graph):
    """Every unit of ``graph`` ({unit: units it imports}) that can reach itself."""
    def reaches(start, goal, seen):
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph.get(start, ()))

    return sorted(u for u in graph if reaches(u, u, frozenset()))


def test_the_table_has_no_circle():
    assert circles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == ["a", "b"]  # the check itself
    found = circles(import_rules())
    assert not found, f"units of {ARCHITECTURE.name}'s import table that import themselves in a circle: {found}"


def script_problems(path: Path):
    """What a script does against the rule "import the installed package": ``sys.path`` edits,
    running another file by its path, imports of package modules that do not exist."""
    problems = []
    tree = ast.parse(path.read_text())
    rel = str(path.relative_to(REPO))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
            if node.value.attr == "path" and getattr(node.value.value, "id", None) == "sys" and node.attr in {
                "insert", "append", "extend"
            }:
                problems.append(f"{rel}:{node.lineno}: edits sys.path")
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute):
            if node.value.attr == "path" and getattr(node.value.value, "id", None) == "sys" and isinstance(
                getattr(node, "ctx", None), ast.Store
            ):
                problems.append(f"{rel}:{node.lineno}: edits sys.path")
        if rel not in RUNS_FILES_BY_PATH and isinstance(node, ast.Attribute) and node.attr in {
            "spec_from_file_location", "run_path"
        }:
            problems.append(f"{rel}:{node.lineno}: runs a file by its path ({node.attr})")
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "protoseg":
            if not resolve(path, node):
                problems.append(f"{rel}:{node.lineno}: imports {node.module}, which the package does not have")
    return problems


def test_scripts_import_the_installed_package():
    assert len(SCRIPTS) > 20 and REPO / "demo" / "demo.py" in SCRIPTS
    found = [p for path in SCRIPTS for p in script_problems(path)]
    assert not found, "scripts that reach into the package another way:\n" + "\n".join(found)


def test_the_prototype_room_imports_nothing_else_of_the_package():
    # the table says so; this pins it independently of the table
    edges, _ = package_imports()
    assert not [(p, b) for p, a, b in edges if a == "modeling/prototypes"]


def documented_training_calls():
    return set(re.findall(r"^- `([^`]+)` -> `([^`]+)`$", documented_block("training-step-calls"), re.M))


def traced_calls(trainer):
    """Module-to-module calls of one ``trainer.run_step()``: (caller file, callee file) relative to
    the package, the caller being the nearest package frame above the callee's."""
    prefix = str(PACKAGE) + "/"
    calls = collections.Counter()

    def profile(frame, event, arg):
        if event != "call" or not frame.f_code.co_filename.startswith(prefix):
            return
        caller = frame.f_back
        while caller is not None and not caller.f_code.co_filename.startswith(prefix):
            caller = caller.f_back
        if caller is not None and caller.f_code.co_filename != frame.f_code.co_filename:
            calls[(caller.f_code.co_filename[len(prefix):], frame.f_code.co_filename[len(prefix):])] += 1

    sys.setprofile(profile)
    try:
        trainer.run_step()
    finally:
        sys.setprofile(None)
    return calls


@pytest.fixture(scope="module")
def traced_step(toy_dataset, tmp_path_factory):
    cfg = toy_cfg(opts=[
        "DATASETS.TRAIN", ("toy_test_train",), "DATASETS.TEST", (), "SOLVER.IMS_PER_BATCH", 2,
        "DATALOADER.NUM_WORKERS", 0, "SOLVER.MAX_ITER", 10, "SOLVER.WARMUP_ITERS", 0,
        "OUTPUT_DIR", str(tmp_path_factory.mktemp("trace")),
    ])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    with EventStorage(0) as storage:
        trainer.storage = trainer._trainer.storage = storage
        trainer.run_step()  # the first step broadcasts the prototypes; trace a later one
        storage.iter = trainer._trainer.iter = 1
        return traced_calls(trainer)


def test_one_training_step_calls_modules_as_documented(traced_step):
    traced = set(traced_step)
    documented = documented_training_calls()
    assert documented, "no documented calls"
    assert traced == documented, (
        f"calls of one training step that {ARCHITECTURE.name} does not list: {sorted(traced - documented)}; "
        f"listed but not made: {sorted(documented - traced)}"
    )


def test_one_training_step_never_calls_back_into_a_module_on_its_path(traced_step):
    graph = collections.defaultdict(set)
    for caller, callee in traced_step:
        graph[caller].add(callee)

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, seen + (n,))) for n in graph[start])

    cycles = sorted((a, b) for a, b in traced_step if reaches(b, a))
    assert not cycles, f"module calls that come back: {cycles}"
