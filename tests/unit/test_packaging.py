"""pyproject.toml declares what the code imports; requirements.lock pins what CI installed."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGES = PYPROJECT["tool"]["setuptools"]["packages"]  # what the wheel ships
LOCAL = {*PACKAGES, "tests", "benchmarks", "serving"}


def declared(*extras: str) -> set[str]:
    """Distribution names in `dependencies` and in the given extras (self-references followed)."""
    deps = list(PYPROJECT["project"]["dependencies"])
    optional = PYPROJECT["project"]["optional-dependencies"]
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in optional[extra]:
            req = Requirement(text)
            if canonicalize_name(req.name) == "dlops":
                todo += sorted(req.extras)
            else:
                deps.append(text)
    return {canonicalize_name(Requirement(d).name) for d in deps}


def third_party_imports(source: str, here: Path) -> set[str]:
    """Top-level modules a file imports (at any depth) that are neither stdlib nor local."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            sibling = (here / f"{top}.py").is_file() or (here / top).is_dir()
            if top not in sys.stdlib_module_names and top not in LOCAL and not sibling:
                found.add(top)
    return found


def undeclared(folders: list[str], allowed: set[str]) -> dict[str, str]:
    """module -> first file importing it, for modules whose distribution is not declared."""
    owners = packages_distributions()
    missing: dict[str, str] = {}
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for module in third_party_imports(path.read_text(), path.parent):
                dists = {canonicalize_name(d) for d in owners.get(module, [module])}
                if not dists & allowed:
                    missing.setdefault(module, str(path.relative_to(ROOT)))
    return missing


def test_every_import_of_the_code_is_declared():
    code = [p for p in [*PACKAGES, "serving"] if (ROOT / p).is_dir()]
    assert undeclared(code, declared()) == {}


def test_tests_and_benchmarks_import_only_declared_or_dev_packages():
    assert undeclared(["tests", "benchmarks"], declared("dev")) == {}


def test_the_import_scan_finds_an_undeclared_module(tmp_path):
    (tmp_path / "helper.py").write_text("")
    source = (
        "import os, numpy\nfrom requests.adapters import HTTPAdapter\nimport helper\n"
        "def f():\n    import boto3\n"
    )
    assert third_party_imports(source, tmp_path) == {"numpy", "requests", "boto3"}


def test_database_drivers_are_extras_pulled_by_dev():
    assert "psycopg2-binary" not in declared()
    assert "psycopg2-binary" in declared("postgres") and "psycopg2-binary" in declared("dev")


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not pinned with =="
            pins[canonicalize_name(name)] = version
    return pins


def _closure(names: set[str]) -> set[str]:
    """The installed distributions `names` need, transitively (markers evaluated, extras kept)."""
    todo = [Requirement(n) for n in names]
    for extra, reqs in PYPROJECT["project"]["optional-dependencies"].items():
        if extra in ("dev", "postgres"):
            todo += [Requirement(r) for r in reqs if not r.startswith("dlops")]
    todo += [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        req = todo.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        for text in distribution(req.name).requires or []:
            dep = Requirement(text)
            envs = [{"extra": e} for e in (req.extras or {""})]
            if dep.marker is None or any(dep.marker.evaluate(env) for env in envs):
                todo.append(dep)
    return {name for name, _ in seen}


def test_the_lock_pins_the_installed_set_torch_aside():
    pins = _lock()
    assert "torch" not in pins and "dlops" not in pins  # the Makefile pins torch
    needed = _closure(set()) - {"torch"}
    assert sorted(needed - set(pins)) == [], "not in requirements.lock: run `make lock`"
    stale = {}
    for name, version in pins.items():
        try:
            installed = distribution(name).version
        except PackageNotFoundError:
            installed = None
        if installed != version:
            stale[name] = (version, installed)
    assert stale == {}, "requirements.lock differs from this venv: `make install` or `make lock`"


@pytest.mark.parametrize("name", sorted(declared("dev")))
def test_each_declared_requirement_is_satisfied_by_its_pin(name):
    pins = _lock()
    specs = [
        Requirement(r)
        for r in [
            *PYPROJECT["project"]["dependencies"],
            *(r for rs in PYPROJECT["project"]["optional-dependencies"].values() for r in rs),
        ]
        if canonicalize_name(Requirement(r).name) == name
    ]
    if name == "torch":
        pytest.skip("pinned by the Makefile, not the lock")
    for req in specs:
        assert req.specifier.contains(pins[name], prereleases=True), (name, pins[name])
