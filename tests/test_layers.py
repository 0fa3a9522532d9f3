"""The package's layers, lowest first: a module imports only from its own layer or lower ones.

Read from the source (every ``import``, at module level or inside a function), so a lazy import that
reaches up is caught too. Imports under ``if TYPE_CHECKING:`` are left out: they name a type for the
checker and import nothing when the code runs (``protocols``, the typed joins, names the classes that
satisfy them). A lower layer that needs something of a higher one is a sign the thing belongs lower
(move it), not that the rule should bend.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "llm_dit"

#: Lowest first. A name is a top-level module or subpackage of ``llm_dit``.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "protocols", "modes", "limits", "interrupt"),  # what goes wrong; the typed joins; the names of
    # the modes; the bounds of numbers; Ctrl-C
    ("io", "config", "embeddings", "images", "provenance", "progress"),  # foundations: files, settings, tensors
    ("models",),  # model files: resolving, loading, placement, tiny fixtures
    ("text",),  # Z-Image's own text encoder (Qwen3-4B)
    ("vl",),  # Qwen3-VL: extraction, tokens, normalization, captions, reference statistics
    ("generate",),  # the Z-Image pipeline
    ("pool",),  # models kept loaded between jobs (a service over the two above)
    ("conditioning",),  # recipes: extractions + text -> what the DiT receives
    ("analysis",),  # metrics and statistics of results
    ("experiments",),  # runs of many cells into run folders, reports
    ("web",),  # a door
    ("cli",),  # a door (``llm-dit serve`` starts the web one)
    ("__init__", "__main__"),
)
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}

#: The research notes' module paths (``from llm_dit.vl.blending import blend_adain``): thin aliases
#: that re-export the library's names. They sit in ``vl/`` by name only; each is ranked with the
#: layer it re-exports from, and no module of the package may import one (so nothing reaches up
#: through them).
ALIASES = {"vl/blending.py": "conditioning"}


def top_name(module: str) -> str:
    """``llm_dit.vl.extract`` -> ``vl``; ``llm_dit`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported(path: Path, root: Path) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every ``llm_dit`` import in ``path`` (a file under ``root``)."""
    package = ["llm_dit", *path.relative_to(root).parts[:-1]]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
                 for stmt in block.body for n in ast.walk(stmt)}
    out = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                names = ([f"{base}.{node.module}"] if node.module else [f"{base}.{a.name}" for a in node.names])
            else:
                names = [node.module or ""]
            out += [(node.lineno, n) for n in names if n.split(".")[0] == "llm_dit"]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "llm_dit"]
    return out


def _is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING``."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def violations(root: Path = PACKAGE) -> list[str]:
    """One line per import of a higher layer's module, in the package at ``root``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        here = ALIASES.get(rel.as_posix(), rel.with_suffix("").parts[0])
        for line, target in imported(path, root):
            alias = target.replace("llm_dit.", "", 1).replace(".", "/") + ".py"
            if alias in ALIASES:
                found.append(f"{path.relative_to(root.parent)}:{line}: imports the notes' alias {target}; "
                             "import the library's own module")
                continue
            there = top_name(target)
            if RANK[there] > RANK[here]:
                found.append(f"{path.relative_to(root.parent)}:{line}: {here} (layer {RANK[here]}) imports "
                             f"{target} (layer {RANK[there]})")
    return found


def test_every_module_has_a_layer():
    names = {p.stem for p in PACKAGE.glob("*.py")} | {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert names - set(RANK) == set(), "give each new module or subpackage a place in LAYERS"


def test_no_module_imports_from_a_higher_layer():
    assert violations() == []


@pytest.mark.parametrize(("where", "line", "bad"), [
    ("vl/chat.py", "from ..experiments.runner import run\n", "vl (layer 4) imports llm_dit.experiments.runner"),
    ("conditioning/blend.py", "    from ..analysis import metrics\n",
     "conditioning (layer 7) imports llm_dit.analysis"),
    ("models/loading.py", "from llm_dit.pool import ModelPool\n", "models (layer 2) imports llm_dit.pool"),
    ("experiments/cells.py", "from ..vl.blending import blend_adain\n", "imports the notes' alias llm_dit.vl.blending"),
])
def test_the_check_catches_an_upward_import(tmp_path, where, line, bad):
    """A copy of the package with one deliberate upward import (also inside a function) fails."""
    import shutil

    copy = tmp_path / "llm_dit"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / where
    text = target.read_text(encoding="utf-8")
    if line.startswith("    "):
        line = "\n\ndef _reaches_up():\n" + line
        target.write_text(text + line, encoding="utf-8")
    else:
        target.write_text(text.replace("from __future__ import annotations\n",
                                       "from __future__ import annotations\n" + line, 1), encoding="utf-8")
    found = violations(copy)
    assert len(found) == 1 and bad in found[0] and found[0].startswith(f"llm_dit/{where}:")
