"""dvc.yaml lists every project module a stage imports: editing one re-runs the stages using it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
# plumbing that cannot change a stage's outputs (dvc.yaml's header says so too)
PLUMBING = {
    "tasks/__init__.py",
    "models/__init__.py",
    "tasks/tracking.py",
    "tasks/redact.py",
    "tasks/runtime.py",
    "tasks/testhook.py",
    "models/progress.py",
    "tasks/entry.py",  # the stage mains' entry: settings, the upstream check, one-line errors
    "tasks/upstream.py",
}


def _file(module: str) -> Path | None:
    for path in (ROOT / f"{module.replace('.', '/')}.py", ROOT / module.replace(".", "/")):
        if path.is_file():
            return path
        if (path / "__init__.py").is_file():
            return path / "__init__.py"
    return None


def _imports(path: Path) -> set[str]:
    """Project modules imported anywhere in a file (module level or inside functions)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from tasks import train`
    return {m for m in found if m.split(".")[0] in ("tasks", "models")}


def closure(module: str) -> set[str]:
    """Every project file `module` reaches through its imports, as paths relative to the root.

    Plumbing is listed but not followed (what it imports cannot change a stage's outputs).
    """
    files: set[str] = set()
    todo = [module]
    while todo:
        path = _file(todo.pop())
        if path is None or str(path.relative_to(ROOT)) in files:
            continue
        files.add(str(path.relative_to(ROOT)))
        if str(path.relative_to(ROOT)) not in PLUMBING:
            todo += _imports(path)
    return files


def _covered(file: str, deps: list[str]) -> bool:
    return any(file == d or file.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_a_stage_depends_on_every_module_it_imports(name: str) -> None:
    stage = STAGES[name]
    module = stage["cmd"].split("python -m ", 1)[1].split()[0]
    deps = [d for d in stage["deps"] if "${" not in d]
    missing = sorted(f for f in closure(module) - PLUMBING if not _covered(f, deps))
    assert missing == [], f"dvc.yaml stage {name} imports {missing} but does not list them"


def test_the_closure_follows_imports_inside_functions() -> None:
    # tasks.train imports models.metrics inside run(): a static scan of the module top misses it
    assert "models/metrics.py" in closure("tasks.train")
    assert "tasks/train.py" in closure("tasks.tune")
