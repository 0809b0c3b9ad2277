"""docs/CONFIG.md is what tools/config_reference.py writes from the declarations: every declared key
with its default, allowed values and meaning, and the reference recipe's choices."""
import subprocess
import sys

from protoseg.config import declared_keys

from conftest import REPO


def test_committed_config_reference_is_the_generated_one():
    run = subprocess.run([sys.executable, str(REPO / "tools/config_reference.py")], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    committed = (REPO / "docs" / "CONFIG.md").read_text()
    assert out == committed, "docs/CONFIG.md is stale: python tools/config_reference.py > docs/CONFIG.md"
    rows = [line for line in out.splitlines() if line.startswith("| `") and line.count("|") == 5]
    assert [row.split("`")[1] for row in rows] == [key.name for key in declared_keys()]
    assert "| `MODEL.PROTOSEG.NUM_PROTOTYPES` | `10` | an integer >= 1 | K, prototypes per class" in out
    assert "| `MODEL.SEM_SEG_HEAD.IGNORE_VALUE` | `255` (Detectron2's) | an integer in " \
           "[MODEL.SEM_SEG_HEAD.NUM_CLASSES, 65535] |" in out
    # the reference recipe: its switches away from the paper's HRNet recipe, read from its config
    assert "| `MODEL.PROTOSEG.PROJECTION` | `'reference_mlp'` | `'none'` |" in out
    assert "| `INPUT.PAD.POSITION` | `'random'` | `'bottom_right'` |" in out
