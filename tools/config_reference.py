#!/usr/bin/env python
"""Write the reference of every configuration key the project declares (docs/CONFIG.md) to stdout.

    python tools/config_reference.py > docs/CONFIG.md

The text comes from the declarations themselves (``Key(name, default, rule, meaning)`` next to the
code that reads each key), so it lists exactly what ``load_config`` accepts and ``check_config``
enforces; tests/test_config_reference.py keeps the committed file equal to it.
"""
import sys
from pathlib import Path

import yaml

from protoseg.config import declared_keys, load_config
from protoseg.config_checks import DETECTRON2, format_value, leaves

REPO = Path(__file__).resolve().parents[1]

REFERENCE_CONFIG = "configs/cityscapes/reference_protoseg_hrnetv2_W48_bs8_80k.yaml"

HEADER = """# Configuration keys

Every key the project adds to Detectron2's defaults, and the Detectron2 keys it gives a rule to,
as declared next to the code that reads them: default, allowed values (`check_config` refuses
anything else, naming the key, when the model is built) and meaning. Written by
`python tools/config_reference.py > docs/CONFIG.md`; do not edit by hand.
"""


def cell(text: str) -> str:
    """``text`` fit for a Markdown table cell (no column break, no HTML tag)."""
    return text.replace("|", "\\|").replace("<", "\\<").replace("\n", " ")


def key_table(keys, cfg) -> list:
    """Markdown rows: key, default, allowed values, meaning."""
    rows = ["| key | default | allowed | meaning |", "|---|---|---|---|"]
    for key in keys:
        value = cfg
        for part in key.name.split("."):
            value = value[part]
        default = f"`{format_value(value)}`" + (" (Detectron2's)" if key.default is DETECTRON2 else "")
        rows.append(f"| `{key.name}` | {cell(default)} | {cell(key.rule.describe())} | {cell(key.help)} |")
    return rows


def reference_recipe(keys) -> list:
    """Rows of the declared keys that the reference-replay config sets away from its ``_BASE_``
    (the paper's recipe of the same model and dataset)."""
    path = REPO / REFERENCE_CONFIG
    base_name = yaml.safe_load(path.read_text())["_BASE_"]
    reference = dict(leaves(load_config(path)))
    paper = dict(leaves(load_config(path.parent / base_name)))
    names = [key.name for key in keys if reference[key.name] != paper[key.name]]
    lines = [
        "## The reference recipe",
        "",
        f"`{REFERENCE_CONFIG}` replays the public reference code (tfzhou/ProtoSeg):",
        f"these are the keys it sets away from the paper's recipe of the same model (`{base_name}`).",
        "",
        "| key | reference | paper |",
        "|---|---|---|",
    ]
    lines += [f"| `{n}` | `{cell(format_value(reference[n]))}` | `{cell(format_value(paper[n]))}` |" for n in names]
    return lines


def markdown() -> str:
    """The text of docs/CONFIG.md."""
    keys = declared_keys()
    defaults = load_config()
    lines = [HEADER] + reference_recipe(keys)
    modules = list(dict.fromkeys(key.module for key in keys))
    for module in modules:
        path = "projects/ProtoSeg/" + module.replace(".", "/") + ".py"
        lines += ["", f"## `{path}`", ""]
        lines += key_table([key for key in keys if key.module == module], defaults)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
