"""The layers hold: read every module's imports (those inside functions too) and fail on an import cycle among the
project's modules, on anything under pipeline/stages/ importing Ray, the settings, or a project module that imports
Ray; on anything under pipeline/jobs/ importing Ray itself; and on model/ importing video, Ray or the pipeline.
(The rules are pipeline/__init__.py's map; this test is what keeps them.)"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "pipeline")


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in (PROJECT / package).rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """(the project modules `name` imports, the top-level names of everything else it imports), from every import
    statement in the file, at any depth (a function's own imports hide cycles, not remove them)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    inner, outer = set(), set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(filter(None, [*anchor, base]))
            # `from . import x` / `from .pkg import mod`: the names may be modules themselves
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            # The module itself, else the nearest package above it that is the project's (`pipeline.x.y` -> ...)
            parts = target.split(".")
            found = next((".".join(parts[:k]) for k in range(len(parts), 0, -1) if ".".join(parts[:k]) in known), None)
            if found is None:
                outer.add(parts[0])
            elif found != name:
                inner.add(found)
    return inner, outer


def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    modules = project_modules()
    known = set(modules)
    inner, outer = {}, {}
    for name, path in modules.items():
        inner[name], outer[name] = imports_of(name, path, known)
    return inner, outer


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, each once (Tarjan's strongly connected components of more than one module)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles():
    inner, _ = graph()
    assert cycles(inner) == []


# Each layer imports only its own and those below it (pipeline/__init__.py draws them); a module of none is an error
LAYERS = [
    ("model",),
    ("pipeline.errors", "pipeline.urls", "pipeline.formats", "pipeline.storage"),
    ("pipeline.stages", "pipeline.sample_video"),
    ("pipeline.settings",),
    ("pipeline.cluster",),
    ("pipeline.jobs",),
]


def layer_of(name: str) -> int:
    for rank, prefixes in enumerate(LAYERS):
        if any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes):
            return rank
    return -1 if name == "pipeline" else None  # the package's own map imports nothing


def test_every_module_has_a_layer():
    assert [name for name in sorted(project_modules()) if layer_of(name) is None] == []


def test_each_layer_imports_only_those_below_it():
    inner, _ = graph()
    problems = [f"{name} imports {other}" for name in sorted(inner) for other in sorted(inner[name])
                if layer_of(name) is not None and layer_of(other) is not None and layer_of(other) > layer_of(name)]
    assert problems == []


def test_ray_is_called_only_from_the_cluster():
    """Every module that imports Ray is under pipeline/cluster/ (stages, jobs and settings never do)."""
    _, outer = graph()
    assert [name for name in sorted(outer) if "ray" in outer[name] and not name.startswith("pipeline.cluster")] == []


def test_stages_know_nothing_of_ray_or_the_settings():
    inner, outer = graph()
    uses_ray = {name for name, others in outer.items() if "ray" in others}
    problems = []
    for name in sorted(inner):
        if not name.startswith("pipeline.stages"):
            continue
        if "ray" in outer[name]:
            problems.append(f"{name} imports ray")
        for other in sorted(inner[name]):
            if other == "pipeline.settings":
                problems.append(f"{name} imports the settings ({other})")
            elif other in uses_ray:
                problems.append(f"{name} imports {other}, which imports ray")
    assert problems == []


def test_the_model_knows_nothing_of_video_ray_or_the_pipeline():
    """(OpenCV is allowed: the CPU's input preparation is the original's OpenCV recipe, on images, not video.)"""
    inner, outer = graph()
    problems = [f"{name} imports {other}" for name in sorted(inner) if name.startswith("model")
                for other in sorted(inner[name]) if other.startswith("pipeline")]
    problems += [f"{name} imports {other}" for name in sorted(outer) if name.startswith("model")
                 for other in sorted(outer[name] & {"ray", "av"})]
    assert problems == []


def test_the_rules_catch_what_they_are_for(tmp_path, monkeypatch):
    """The rules' own check, on a made-up tree: a stage that imports the settings, a job that imports Ray, a cycle
    hidden in a function, a relative import two levels up."""
    for name, text in {
        "model/__init__.py": "",
        "pipeline/__init__.py": "",
        "pipeline/settings.py": "from pipeline.stages import a\n",
        "pipeline/stages/__init__.py": "",
        "pipeline/stages/a.py": "def f():\n    from ..settings import X\n",
        "pipeline/jobs/__init__.py": "",
        "pipeline/jobs/b.py": "import ray\n",
    }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "PROJECT", tmp_path)
    inner, outer = graph()
    assert "pipeline.settings" in inner["pipeline.stages.a"]  # function-level and relative, two levels up
    assert cycles(inner) == [["pipeline.settings", "pipeline.stages.a"]]
    for rule in (test_each_layer_imports_only_those_below_it, test_ray_is_called_only_from_the_cluster,
                 test_stages_know_nothing_of_ray_or_the_settings):
        try:
            rule()
        except AssertionError:
            continue
        raise AssertionError(f"{rule.__name__} passed on a tree that breaks it")


def test_the_reader_sees_what_python_sees():
    """Known imports of the real tree are found, function-level ones included."""
    inner, outer = graph()
    assert "pipeline.stages.frames" in inner["pipeline.stages.sources.video_decoder"]
    assert "ray" in outer["pipeline.cluster.graph"] and "torch" in outer["model.predictor"]
    assert "pipeline.stages.sources.image_sequence" in inner["pipeline.stages.sources.video_decoder"]  # in a function


def test_the_installed_package_holds_every_module():
    """`pip install .` finds its packages from pyproject.toml's patterns: every folder of modules under model/ and
    pipeline/ is a package they include (a folder missed would be absent from the installed command)."""
    import tomllib
    from setuptools import find_packages

    config = tomllib.loads((PROJECT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set(find_packages(where=str(PROJECT), include=config["packages"]["find"]["include"]))
    folders = {".".join(path.parent.relative_to(PROJECT).parts) for package in PACKAGES
               for path in (PROJECT / package).rglob("*.py")}
    assert folders - found == set()
    assert config["py-modules"] == ["run_pipeline"]
    # (files that are not modules: the dashboard's page, script and style; the presets --config names)
    static = {path.name for path in (PROJECT / "pipeline" / "jobs" / "static").iterdir()}
    presets = {path.stem for path in (PROJECT / "pipeline" / "presets").glob("*.yaml")}
    assert config["package-data"] == {"pipeline.jobs": ["static/*"], "pipeline": ["presets/*.yaml"]}
    assert static >= {"index.html", "dashboard.js"} and presets == {"cpu", "gpu", "default", "high-quality"}


def test_what_a_remote_cluster_is_shipped_is_the_project():
    """Workers on other machines get model/ and pipeline/ as py_modules, found from runtime.py's own place."""
    from pipeline.cluster import runtime

    assert runtime.PROJECT_ROOT == PROJECT
    assert all((runtime.PROJECT_ROOT / package / "__init__.py").exists() for package in PACKAGES)
