"""The package keeps its shape: layers, no import cycle, small files, honest names, no outside citations.

The import graph is read from the source (ast), lazy imports inside functions
included, and so are the names the package resolves lazily (`__init__`'s
`_WHERE`) and module names passed as strings (`importlib.import_module`).
docs/architecture.md explains the layers; LAYERS below is their one definition.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pruned_upstream"
MAX_LINES = 450

# Rank of each module (first matching prefix wins): a module imports only modules of a
# rank no higher than its own, and within a rank the graph has no cycle.
LAYERS = (
    ("foundation", 0, ("arch", "gating", "config", "config_files", "shipped", "errors", "small_files",
                            "run_files")),
    ("superb score (torch-free)", 0, ("superb",)),
    ("s3prl task facts (torch-free)", 0, ("s3prl_plugin.tasks", "s3prl_plugin.preflight", "s3prl_plugin.override_quoting")),
    ("model", 1, ("model",)),
    ("file formats", 2, ("checkpoints", "safe_load", "families", "fairseq_pickle", "pickle_reader", "torch_files", "exporting", "run_dir", "macs", "s3prl_plugin.expert",
                         "s3prl_plugin.hubconf", "__init__")),
    ("measurements and data", 3, ("speed", "synthetic_pruning", "model_report", "analysis", "data",
                                  "superb_data", "s3prl_plugin", "model_card")),
    ("training", 4, ("training",)),
    ("reports", 5, ("plots", "gpu_check")),
    ("command line and demo", 6, ("commands", "cli", "demo", "demo_superb", "demo_report")),
)
# What the s3prl upstream may reach (transitively): a SUPERB user needs the model and its file.
UPSTREAM_REACH = ("s3prl_plugin.expert", "s3prl_plugin.hubconf", "model", "arch", "gating", "checkpoints", "families",
                  "fairseq_pickle", "pickle_reader", "torch_files", "safe_load", "errors", "small_files", "__init__")
# What file formats may reach: never the trainer, the CLI, the analysis, the demo or the data pipeline.
FORMATS = ("checkpoints", "exporting", "run_dir")
FORMATS_REACH = FORMATS + ("model", "arch", "gating", "families", "fairseq_pickle", "pickle_reader", "torch_files", "small_files", "safe_load", "errors", "__init__",
                           "run_files")
TORCH_FREE = ("arch", "errors", "small_files", "pickle_reader", "fairseq_pickle", "run_files", "gating", "config", "config_files", "shipped", "superb", "s3prl_plugin.tasks", "s3prl_plugin.preflight",
              "s3prl_plugin.override_quoting", "macs")
# Citations of files that only exist outside the repository.
OUTSIDE = re.compile(
    r"\.\./shared|/work/|\bshared/(seeds|third_party)|\b(METHOD|ENVIRONMENT|SUPERB_REFERENCE|ARCHITECTURE|STYLE)\.md"
    r"|\bseeds?/\d{3}_|\b\d{3}_[0-9a-f]{16}\.txt"
)
# .ci/run may point the test command at CI's copies of third-party trees; this file holds the patterns.
OUTSIDE_ALLOWED = {".ci/run", "tests/test_architecture.py"}


# ---------------------------------------------------------------------------- the graph
def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" and len(rel.parts) > 1 else rel.parts
    return ".".join(parts) or "__init__"


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py" and name != "__init__"


def _resolve(name: str, current: str, level: int) -> str | None:
    """A (relative) import target -> our module name, or None when it is not ours."""
    if level:
        base = current.split(".") if _is_package(current) or current == "__init__" else current.split(".")[:-1]
        base = [] if current == "__init__" else base
        base = base[: len(base) - (level - 1)] if level > 1 else base
        full = ".".join(base + ([name] if name else []))
    elif name == "pruned_upstream" or name.startswith("pruned_upstream."):
        full = name.removeprefix("pruned_upstream").removeprefix(".")
    else:
        return None
    while full and full not in modules():
        full = full.rpartition(".")[0]
    return full or "__init__"


def dynamic_import_strings(tree: ast.Module) -> set[ast.Constant]:
    """String constants that name a module to import: arguments of import_module(...), values of a
    module-level NAME_MODULE = "..." or _WHERE = {...}. A module run as a subprocess is not imported."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            found |= {n for arg in node.args for n in ast.walk(arg) if isinstance(n, ast.Constant)}
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and (t.id.endswith("_MODULE") or t.id == "_WHERE") for t in targets):
                found |= {n for n in ast.walk(node.value) if isinstance(n, ast.Constant)}
    return found


def imports_of(name: str) -> tuple[set[str], set[str]]:
    """(our modules, top-level third-party names) that module `name` imports anywhere in its source."""
    tree = ast.parse(modules()[name].read_text())
    ours, third, dynamic = set(), set(), dynamic_import_strings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name, name, 0)
                ours.add(target) if target else third.add(alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node.module or "", name, node.level)
            if target is None:
                third.add((node.module or "").split(".")[0])
                continue
            for alias in node.names:  # `from . import run_dir`: the submodule itself
                sub = f"{target}.{alias.name}" if target != "__init__" else alias.name
                ours.add(sub if sub in modules() else target)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node in dynamic:
            text = node.value  # importlib.import_module("pruned_upstream....") and __init__'s _WHERE
            if text.startswith("pruned_upstream.") and text.removeprefix("pruned_upstream.") in modules():
                ours.add(text.removeprefix("pruned_upstream."))
            if name == "__init__" and text in modules():
                ours.add(text)
    ours.discard(name)
    return ours, third


@cache
def graph() -> dict[str, set[str]]:
    return {name: imports_of(name)[0] for name in modules()}


def reach(name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        for nxt in graph()[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def matches(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def rank(name: str) -> tuple[str, int]:
    for layer, value, prefixes in LAYERS:
        if matches(name, prefixes):
            return layer, value
    raise AssertionError(f"module pruned_upstream.{name} has no layer: add it to LAYERS in "
                         "tests/test_architecture.py and to docs/architecture.md")


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
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
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


# ---------------------------------------------------------------------------- the rules
def test_the_graph_reader_sees_lazy_imports_and_lazy_names():
    g = graph()
    assert {"checkpoints", "model.prunable", "exporting"} <= g["__init__"]  # _WHERE
    assert "s3prl_plugin.hubconf" in g["s3prl_plugin.runner"]  # importlib.import_module(HUBCONF_MODULE)
    assert "training.run" in g["cli"]  # imported inside a function
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_every_module_has_a_layer_and_imports_only_downwards():
    bad = []
    for name, targets in graph().items():
        layer, value = rank(name)
        for target in targets:
            t_layer, t_value = rank(target)
            if t_value > value:
                bad.append(f"{name} ({layer}) imports {target} ({t_layer})")
    assert bad == []


def test_the_model_imports_nothing_above_it():
    for name in modules():
        if matches(name, ("model",)):
            assert reach(name) <= {n for n in modules() if matches(n, ("model", "arch", "gating"))}, name


def test_file_formats_never_reach_training_cli_analysis_demo_or_data():
    for name in modules():
        if matches(name, FORMATS):
            outside = sorted(n for n in reach(name) if not matches(n, FORMATS_REACH))
            assert outside == [], f"{name} reaches {outside}"


def test_the_s3prl_upstream_reaches_only_the_model_and_its_file():
    for name in ("s3prl_plugin.expert", "s3prl_plugin.hubconf"):
        outside = sorted(n for n in reach(name) if not matches(n, UPSTREAM_REACH))
        assert outside == [], f"{name} reaches {outside}"


def test_torch_free_modules_import_no_torch():
    for name in modules():
        if matches(name, TORCH_FREE):
            third = set().union(*(imports_of(n)[1] for n in reach(name) | {name}))
            assert not third & {"torch", "torchaudio", "s3prl", "safetensors"}, f"{name}: {sorted(third)}"


def test_arguments_are_parsed_only_by_the_command_line():
    for name in modules():
        if "argparse" in imports_of(name)[1]:
            assert matches(name, ("cli", "commands", "s3prl_plugin.runner")), name  # runner: torch's safe globals


# ---------------------------------------------------------------------------- files and names
def tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [ROOT / line for line in out.splitlines() if line and (ROOT / line).is_file()]


def test_no_source_file_over_the_limit():
    long = {str(p.relative_to(ROOT)): n for p in tracked_files() if p.suffix in (".py", ".sh")
            and (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_no_module_is_named_like_a_standard_library_module():
    names = [p for p in tracked_files() if p.suffix == ".py" and p.is_relative_to(PACKAGE)] + \
            [p for p in PACKAGE.rglob("*") if p.is_dir() and p.name != "__pycache__"]
    clash = sorted(str(p.relative_to(ROOT)) for p in names if p.stem in sys.stdlib_module_names)
    assert clash == []


def test_nothing_cites_files_outside_the_repository():
    found = []
    for path in tracked_files():
        rel = str(path.relative_to(ROOT))
        if rel in OUTSIDE_ALLOWED or path.suffix in (".png", ".gz", ".flac", ".wav"):
            continue
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{rel}:{i}: {line.strip()[:100]}")
    assert found == []


def test_cited_docs_exist_and_are_lower_case():
    cited = set()
    for path in tracked_files():
        if path.suffix in (".py", ".md", ".yaml", ".sh", ".toml") or path.name in ("Makefile",):
            cited |= set(re.findall(r"(?<![\w/.-])docs/[\w./-]+\.md", path.read_text(errors="replace")))
    missing = sorted(c for c in cited if not (ROOT / c).is_file())
    upper = sorted(c for c in cited if c != c.lower())
    assert (missing, upper) == ([], [])


@pytest.mark.parametrize("bad", ["see METHOD.md section 2", "../shared/third_party/x.tar.gz",
                                 "shared/seeds/001_41c77bdd3c27f8b0.txt", "/work/main/docs"])
def test_the_citation_check_catches(bad):
    assert OUTSIDE.search(bad)


def test_our_sources_compile_without_warnings():
    """pyproject filters "invalid escape sequence" (s3prl's files); ours must not have any."""
    import warnings

    for path in sorted(PACKAGE.rglob("*.py")) + sorted((ROOT / "tests").glob("*.py")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            compile(path.read_text(), str(path), "exec")
