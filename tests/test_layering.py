"""The layering docs/architecture.md draws, checked on every import statement of the code.

Low to high: storage -> errors -> report -> image -> models -> eval | data -> distill -> train -> tune ->
entrypoints -> jobs. A module may import its own component and lower layers only; eval and data
(one layer) never import each other, distill (pure torch) imports neither, and no entrypoint
imports another. Every import counts: module level, inside functions and under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "dukd_ray"

# Layers low to high; a tuple holds components of one layer, which must not import each other.
LAYERS: list[tuple[str, ...]] = [
    ("storage",),
    ("errors",),  # the CLIs' one error path (dukd_ray/errors.py): needs StorageError
    ("report",),
    ("image",),
    ("models",),
    ("eval", "data"),
    ("distill",),
    ("train",),
    ("tune",),
    ("entrypoints",),
    ("jobs",),
]
# Lower than the importer, and still not allowed: distill is pure torch on images and models.
FORBIDDEN = {("distill", "eval"), ("distill", "data")}
ENTRYPOINTS = {"dukd_ray.upscale", "dukd_ray.export", "dukd_ray.quickstart"}
RANK = {component: i for i, layer in enumerate(LAYERS) for component in layer}


def component(module: str) -> str | None:
    """The layer component of a dukd_ray module (or a jobs/ script); None for the bare package."""
    if module.startswith("jobs."):
        return "jobs"
    if module in ENTRYPOINTS or module.endswith(".__main__"):
        return "entrypoints"
    parts = module.split(".")
    return parts[1] if parts[0] == PACKAGE and len(parts) > 1 else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, module) of every dukd_ray import in `source`, wherever the statement stands.

    `from X import name` counts as importing `X.name` when that is a module of ours, else `X`.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                package = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join(package + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((node.lineno, sub if _is_our_module(sub) else base))
    return sorted({(line, m) for line, m in found if m == PACKAGE or m.startswith(f"{PACKAGE}.")})


def _is_our_module(module: str) -> bool:
    path = ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def violation(importer: str, imported: str) -> str | None:
    """Why `importer` may not import `imported`, or None when the layering allows it."""
    src, dst = component(importer), component(imported)
    if dst is None or src == dst and (src != "entrypoints" or importer == imported):
        return None
    if src is None or dst not in RANK or src not in RANK:
        return f"{importer} or {imported} belongs to no layer (add it to LAYERS)"
    if dst == "entrypoints" and src != "jobs":
        return f"{importer} imports the entrypoint {imported} (share code through a library layer)"
    if RANK[dst] > RANK[src]:
        return f"{src} imports the higher layer {dst}"
    if RANK[dst] == RANK[src] and src != dst:
        return f"{src} and {dst} share a layer and must not import each other"
    if (src, dst) in FORBIDDEN:
        return f"{src} must not import {dst}"
    return None


def violations(path: Path, source: str | None = None) -> list[str]:
    module = module_name(path)
    source = path.read_text() if source is None else source
    out = []
    for line, imported in imported_modules(source, module, path.name == "__init__.py"):
        why = violation(module, imported)
        if why:
            out.append(f"{path.relative_to(ROOT)}:{line}: {module} -> {imported}: {why}")
    return out


def code_files() -> list[Path]:
    return sorted([*(ROOT / PACKAGE).rglob("*.py"), *(ROOT / "jobs").glob("*.py")])


def test_every_module_belongs_to_a_layer():
    unplaced = [
        module_name(p)
        for p in code_files()
        if module_name(p) != PACKAGE and component(module_name(p)) not in RANK
    ]
    assert not unplaced, f"modules outside every layer (add them to LAYERS): {unplaced}"


def test_no_import_crosses_the_layering():
    problems = [v for path in code_files() for v in violations(path)]
    assert not problems, "imports against the layering:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("where", "source"),
    [
        ("dukd_ray/data/x.py", "from dukd_ray.eval.metrics import psnr\n"),
        ("dukd_ray/eval/x.py", "def f():\n    from dukd_ray.data import samples\n"),
        (
            "dukd_ray/distill/x.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import dukd_ray.eval\n",
        ),
        ("dukd_ray/distill/x.py", "from ..data.sources import PngSource\n"),
        ("dukd_ray/models/x.py", "from dukd_ray import train\n"),
        ("dukd_ray/image/x.py", "from dukd_ray.models.cli import SETUP_ERRORS\n"),
        ("dukd_ray/storage.py", "from dukd_ray.report import Report\n"),
        ("dukd_ray/export.py", "from dukd_ray.upscale import find_images\n"),
        ("dukd_ray/eval/__main__.py", "from dukd_ray.upscale import SETUP_ERRORS\n"),
    ],
)
def test_the_check_flags_a_violating_import(where, source):
    """Synthetic modules: each import here breaks the layering and must be reported."""
    assert violations(ROOT / where, source), f"{where}: {source!r} was not flagged"


@pytest.mark.parametrize(
    ("where", "source"),
    [
        (
            "dukd_ray/distill/x.py",
            "from dukd_ray.image.resize import imresize\nfrom dukd_ray import models\n",
        ),
        ("dukd_ray/train/x.py", "from dukd_ray.eval import benchmark\nfrom ..data import stream\n"),
        ("jobs/x.py", "from dukd_ray.quickstart import main\n"),
        ("dukd_ray/export.py", "from . import storage\nfrom dukd_ray.models.cli import model_from_args\n"),
    ],
)
def test_the_check_allows_downward_imports(where, source):
    assert not violations(ROOT / where, source)
