"""The layers import one way (docs/architecture.md §1), read from the source with `ast`.

    face (recstack/cli/) -> loop (loop/) -> stages (datasets/, training/ with export,
    serving/) -> contract (recstack/)

Every import counts, also one inside a function. The contract imports no stage; data imports
no training or serving; training imports no serving; serving imports no data, no training
(export included), torch or Lightning (its replicas load ONNX and numpy only; dataset dirs
are read through the contract); the retrain loop drives the stages and only the face imports
it; nothing imports the face. Export checks what it wrote with
the loader and index code serving uses, which is the contract's (recstack/artifact.py,
recstack/item_index.py, recstack/query.py). The last test imports every serving module to check the serving rule for what they import in turn.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FACE = ROOT / "recstack" / "cli"
PACKAGES = {  # source dir -> the package it installs as (pyproject's package-dir)
    ROOT / "recstack": "recstack",
    ROOT / "datasets": "recstack.datasets",
    ROOT / "training": "recstack.training",
    ROOT / "serving": "recstack.serving",
    ROOT / "loop": "recstack.loop",
}
STAGES = ("recstack.datasets", "recstack.training", "recstack.serving")
ABOVE = ("recstack.loop", "recstack.cli")  # what no stage imports
LAYERS = {  # layer: (its source dir, what it must not import)
    "contract": (ROOT / "recstack", (*STAGES, *ABOVE)),
    "data": (ROOT / "datasets", ("recstack.training", "recstack.serving", *ABOVE)),
    "training": (ROOT / "training", ("recstack.serving", *ABOVE)),
    "serving": (
        ROOT / "serving",
        (
            "recstack.datasets",
            "recstack.training",
            *ABOVE,
            "torch",
            "lightning",
            "pytorch_lightning",
        ),
    ),
    "loop": (ROOT / "loop", ("recstack.cli",)),
}


def module_name(path: Path) -> str:
    """The dotted name a source file installs as (recstack/cli/demo.py -> recstack.cli.demo)."""
    for root, package in PACKAGES.items():
        if path.is_relative_to(root):
            parts = path.relative_to(root).with_suffix("").parts
            return ".".join([package, *parts]).removesuffix(".__init__")
    raise ValueError(f"{path} is in no package")


def imports(source: str, module: str) -> set[str]:
    """Every module `source` (the module named `module`) imports, anywhere in it; for
    `from a import b` both a and a.b (b may be a submodule)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, up level - 1
                package = module.split(".")[: -node.level]
                base = ".".join([*package, *([base] if base else [])])
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def files_of(layer: str) -> list[Path]:
    """A layer's files, without the face inside the contract's dir."""
    root = LAYERS[layer][0]
    return sorted(p for p in root.rglob("*.py") if root == FACE or not p.is_relative_to(FACE))


def forbidden(name: str, banned: tuple[str, ...]) -> bool:
    return any(name == b or name.startswith(f"{b}.") for b in banned)


@pytest.mark.parametrize("layer", list(LAYERS))
def test_layer_imports_nothing_above_it(layer):
    banned = LAYERS[layer][1]
    files = files_of(layer)
    assert len(files) >= 6, files  # the layer was found
    wrong = {}
    for path in files:
        names = [n for n in imports(path.read_text(), module_name(path)) if forbidden(n, banned)]
        if names:
            wrong[str(path.relative_to(ROOT))] = sorted(names)
    assert not wrong


def test_the_check_sees_imports_in_functions_and_relative_ones():
    source = (
        "import numpy\n"
        "def f():\n"
        "    from recstack import training\n"
        "    import torch.nn\n"
        "from .store import seed\n"
    )
    found = imports(source, "recstack.serving.service")
    assert {"recstack.training", "torch.nn", "recstack.serving.store.seed"} <= found
    banned = LAYERS["serving"][1]
    assert sorted(n for n in found if forbidden(n, banned)) == ["recstack.training", "torch.nn"]
    assert module_name(ROOT / "datasets" / "sources" / "__init__.py") == "recstack.datasets.sources"


SERVING_WITHOUT_TORCH = """
import pkgutil, importlib, sys
import recstack.serving as serving
names = [m.name for m in pkgutil.walk_packages(serving.__path__, 'recstack.serving.')]
for name in names:
    importlib.import_module(name)
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning', 'pytorch_lightning'))
assert not heavy, heavy
print(len(names))
"""


def test_every_serving_module_imports_without_torch():
    """Also what serving's imports import (the contract, third-party packages)."""
    proc = subprocess.run(
        [sys.executable, "-c", SERVING_WITHOUT_TORCH], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) >= 15  # every module was imported, app.py included
