"""The layout's rules, checked: no import cycles, a cheap `import analysis`, modules that are modules, small files."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _cycles(graph: grimp.ImportGraph, modules: set[str]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), i.e. import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.find_modules_directly_imported_by(v) & modules:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(modules):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_between_modules():
    graph = grimp.build_graph("analysis", "ghostnet")
    # A package's __init__ re-exports its children, so package -> child edges are expected; a cycle among
    # modules (leaves) is not.
    leaves = {m for m in graph.modules if not graph.find_children(m)}
    assert _cycles(graph, leaves) == []


def test_cycle_finder_finds_a_planted_cycle():
    graph = grimp.ImportGraph()
    for m in ("p.a", "p.b", "p.c"):
        graph.add_module(m)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.a")
    graph.add_import(importer="p.c", imported="p.a")
    assert _cycles(graph, {"p.a", "p.b", "p.c"}) == [["p.a", "p.b"]]


def test_import_analysis_is_cheap_and_sets_no_matplotlib_backend():
    code = ("import sys; import analysis; print('matplotlib' in sys.modules, 'torch' in sys.modules); "
            "import matplotlib; calls = []; matplotlib.use = lambda *a, **k: calls.append(a); "
            "import analysis.plots; print(calls == [])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "True"]


def test_submodules_are_modules_and_survey_is_also_callable():
    import analysis

    code = "import analysis.survey as m, types; print(isinstance(m, types.ModuleType))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
    for name in ("survey", "plots", "hooks", "stats", "measure", "reconstruct", "convert", "data", "pipeline"):
        assert isinstance(getattr(analysis, name), types.ModuleType), name
    assert callable(analysis.survey)
    import inspect

    from analysis.survey.run import survey as run_survey

    assert inspect.signature(analysis.survey) == inspect.signature(run_survey)


def test_every_public_name_resolves():
    import analysis
    import ghostnet

    for name in analysis.__all__:
        assert getattr(analysis, name) is not None, name
    for name in ghostnet.__all__:
        assert getattr(ghostnet, name) is not None, name
    with pytest.raises(AttributeError, match="moved to analysis.ghostify"):
        ghostnet.ghostify  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        analysis.nope  # noqa: B018


@pytest.mark.parametrize("package", ["analysis", "ghostnet"])
def test_no_module_over_about_400_lines(package):
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / package).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 440}
    assert long == {}
