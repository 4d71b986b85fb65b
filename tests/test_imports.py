"""The layering a maintainer relies on: the numbered scripts on top, plumbing/ below them,
common.py (the science) at the bottom; no import cycle anywhere, function-level imports
included; and importing a module changes nothing (no exit, no signal handler, no
environment variable, no state of another module): effects happen in functions called."""
import ast
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

PACKAGE = "plumbing"


def project_files() -> dict[str, ast.Module]:
    """Every Python file of the project (not the tests), by module name."""
    files = {}
    for path in sorted(ROOT.glob("*.py")) + sorted((ROOT / PACKAGE).glob("*.py")) + \
            sorted((ROOT / "benchmarks").glob("*.py")) + sorted((ROOT / "cluster").glob("*.py")):
        relative = path.relative_to(ROOT).with_suffix("")
        name = ".".join(relative.parts).removesuffix(".__init__")
        files[name] = ast.parse(path.read_text(), str(path))
    return files


def imports_of(tree: ast.Module, modules: set[str]) -> set[str]:
    """The project modules a file imports, anywhere in it (top level or inside functions)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found & modules


def import_graph() -> dict[str, set[str]]:
    files = project_files()
    modules = set(files)
    return {name: imports_of(tree, modules) - {name} for name, tree in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first search, each as the path that closes it."""
    found, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_the_search_finds_a_cycle_through_a_function_level_import():
    tree_a = ast.parse("import b\n")
    tree_b = ast.parse("def f():\n    from a import x\n")
    graph = {"a": imports_of(tree_a, {"a", "b"}), "b": imports_of(tree_b, {"a", "b"})}
    assert cycles(graph) == [["a", "b", "a"]]


def test_no_import_cycle_anywhere():
    assert cycles(import_graph()) == []


def test_the_science_imports_nothing_of_the_project():
    assert import_graph()["common"] == set()


def test_plumbing_never_imports_a_numbered_script_or_the_report():
    graph = import_graph()
    above = {name for name in graph if name[0].isdigit() or name == "report"}
    assert {name: graph[name] & above for name in graph if name.startswith(PACKAGE)
            and graph[name] & above} == {}


# imports each module in turn in a fresh process and reports what changed at each import;
# with "no-dragon" DragonHPC cannot be imported (a machine without it): a module may fail
# with ImportError, never exit
PROBE = """
import importlib, json, os, signal, sys
where, modules = sys.argv[1], sys.argv[2:]
if where == "no-dragon":
    sys.modules["dragon"] = None
from plumbing import lifecycle
def state():
    handlers = {s.name: repr(signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGTERM,
                                                             signal.SIGALRM, signal.SIGCHLD)}
    lifecycle_state = {name: repr(value) for name, value in vars(lifecycle).items()
                       if name.startswith('_') and not name.startswith('__')
                       and not callable(value)}
    return {"env": dict(os.environ), "signals": handlers, "cwd": os.getcwd(),
            "lifecycle": lifecycle_state, "argv": list(sys.argv)}
changed = {}
for module in modules:
    before = state()
    try:
        importlib.import_module(module)
    except ImportError as error:
        if where != "no-dragon" or "dragon" not in str(error):
            raise
    except SystemExit as leaving:
        changed[module] = f"exited ({leaving.code!r})"
        continue
    after = state()
    changes = [key for key in before if before[key] != after[key]]
    if changes:
        changed[module] = f"changed {', '.join(changes)}"
print(json.dumps(changed))
"""


def importable_modules() -> list[str]:
    """The package's modules (dragon_site/ is a sitecustomize: changing Dragon at start-up
    is its whole purpose, and it lives apart, applied by the launcher) and common."""
    return ["common"] + sorted(name for name in import_graph() if name.startswith(PACKAGE + "."))


@pytest.mark.parametrize("where", ["here", "in-a-dragon-runtime", "no-dragon"])
def test_importing_a_module_changes_nothing(where, tmp_path):
    """Here, inside a Dragon runtime that a script started (its process id and the folder
    it shares with the script that started it), and where DragonHPC is missing."""
    env = dict(os.environ)
    if where == "in-a-dragon-runtime":
        env.update(DRAGON_MY_PUID="4294967297", PC_DRAGON_CONTROL=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", PROBE, where, *importable_modules()], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == {}
