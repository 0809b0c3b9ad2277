"""The repository speaks of the project only: no line tells the story of how it was made (work
work sessions, tracker numbers, which machine was available when, dates work had to be done by,
before/after history),
and no line holds a path of a developer's machine. A measurement keeps its date and machine.

Pointers to another project's tracker, named with the project ("reference issue #15", "timm issue
#2438", "facebookresearch/detectron2 issue #5494"), are facts about that project and stay allowed.
"""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".txt", ".cfg", ".ini", ".toml", ".patch"}
SKIP_DIRS = {".git", ".venv", "output", "build", "__pycache__", ".gpu", ".pytest_cache"}
# generated data under datasets/ (the toy scenes, prepared real datasets) is not the repository's text
DATA_DIRS = {"toy_scenes", "ADEChallengeData2016", "cityscapes", "coco", "ADE20K_2021_17_01"}

STORY = {
    # (character classes keep the patterns from matching themselves in other checks of the repository)
    "a work session": r"\b(this|that|previous|earlier|later|next|last|second|first) [s]ession\b|\b[s]ession's (start|redesign|work)",
    "a tracker number of the project": r"(?:\S+\s+)?\bissues? #?\d+",
    "which machine was lent": r"\b[l]ent\b",
    "a date work had to be done by": r"\bdea[d]line",
    "the people who built it": r"\bthe [i]ntegrator\b|\b(a|the) helper (wrote|reviewed)",
    "before/after history": r"\b(before|after) (this|the) (session|change|fix|redesign|refactor)\b|\btoday's\b",
    "a path of a developer's machine": r"(/work/main|/work/wt-|/root/|/home/[a-z]+/)",
}
PATTERN = re.compile("|".join(f"(?P<g{i}>{p})" for i, p in enumerate(STORY.values())), re.IGNORECASE)
REASONS = list(STORY)
# projects whose tracker a line may cite ("<project> issue #N")
OTHER_TRACKERS = {"reference", "reference's", "timm", "detectron2", "facebookresearch/detectron2", "tfzhou/protoseg",
                  "mmsegmentation", "pytorch", "gradio"}


def _is_story(match) -> bool:
    """A tracker number is a story unless it is ``#N`` of another project named just before it."""
    text = match.group(0)
    if REASONS[int(match.lastgroup[1:])] != "a tracker number of the project" or "#" not in text:
        return True
    words = text.split()
    return len(words) < 3 or words[0].strip("(,;:").lower() not in OTHER_TRACKERS


def _repository_text_files():
    for path in sorted(REPO.rglob("*")):
        rel = path.relative_to(REPO)
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts):
            continue
        if rel.parts[0] == "datasets" and len(rel.parts) > 1 and rel.parts[1] in DATA_DIRS:
            continue
        if path.is_file() and path.suffix in TEXT_SUFFIXES and path != Path(__file__).resolve():
            yield path, rel


def story_lines():
    """``[(file, line number, reason, line)]`` of every line that speaks of how the project was made."""
    found = []
    for path, rel in _repository_text_files():
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            match = next((m for m in PATTERN.finditer(line) if _is_story(m)), None)
            if match:
                reason = REASONS[int(match.lastgroup[1:])]
                found.append((str(rel), number, reason, line.strip()[:120]))
    return found


def test_no_line_tells_how_the_project_was_made():
    found = story_lines()
    assert not found, "lines that tell the story of the project's making:\n" + "\n".join(
        f"  {file}:{number}: {reason}: {line}" for file, number, reason, line in found
    )


@pytest.mark.parametrize(
    "line",
    [
        "87.51 both before and after this " + "sess" + "ion's redesign",
        "(not run yet: no GPU " + "lent)",
        "the 1.05x target of iss" + "ue 6 holds",
        "(iss" + "ue #15: the 10 prototypes",
        "## Learning curves (iss" + "ue 20)",
        "To finish before the dead" + "line, the runs",
        "The " + "integrator should compare",
        "exact; today's behaviour",
        "see /work/main/output/model.pth",
    ],
)
def test_the_check_catches_story_lines(line):
    assert any(_is_story(m) for m in PATTERN.finditer(line)), line


@pytest.mark.parametrize(
    "line",
    [
        "the prototypes collapse (reference issue #15)",
        "cf. reference issues #9 / #15",
        "mask lets them attend to each other (timm issue #2438)",
        "(facebookresearch/detectron2 issue #5494, open)",
        "onnxruntime's InferenceSession",
        "frees a web sess" + "ion's state when the tab closes",
        "lib/loss/loss_helper.py FSCELoss",
        "measured 2026-11-30 on a 2-core CPU machine",
    ],
)
def test_the_check_lets_facts_pass(line):
    assert not any(_is_story(m) for m in PATTERN.finditer(line)), line
