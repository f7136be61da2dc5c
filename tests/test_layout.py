"""The package tree is the pipeline, and imports only point down it.

Every import in radgpt/ is read from the source (function-level ones too: a lazy import is still a
dependency), mapped to its stage package, and checked against LAYERS. A new upward import or a cycle
between modules fails here with the file and line that made it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "radgpt"

# stage -> the stages it may import. Read it bottom-up: common is plumbing; findings (the labeler) and
# prepare (reports → records) need only common; runs is the run-folder contract every model reader shares;
# export and impress read runs; finetune validates with impress's generation and evaluate's metrics;
# serve puts impress behind HTTP; study needs only the labeler.
LAYERS: dict[str, set[str]] = {
    "common": set(),
    "findings": {"common"},
    "prepare": {"common"},
    "evaluate": {"common", "findings", "prepare"},
    "runs": {"common", "findings", "prepare"},
    "export": {"common", "runs"},
    "impress": {"common", "findings", "prepare", "runs", "export"},
    "finetune": {"common", "findings", "prepare", "runs", "evaluate", "impress"},
    "serve": {"common", "findings", "runs", "impress"},
    "study": {"common", "findings"},
}
TOP = {"__init__", "__main__", "cli"}  # radgpt/cli.py, the verb table, may import every stage


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, text: str | None = None) -> list[tuple[str, int]]:
    """(imported radgpt module, line) for every import statement in the file, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8") if text is None else text, str(path))
    me = _module_name(path)
    pkg = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("radgpt")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            if not base.startswith("radgpt"):
                continue
            for a in node.names:  # `from radgpt.study import auth` imports the module radgpt.study.auth
                sub = f"{base}.{a.name}"
                found.append((sub if _exists(sub) else base, node.lineno))
    return found


def _exists(module: str) -> bool:
    p = ROOT.parent.joinpath(*module.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


FILES = sorted(ROOT.rglob("*.py"))


def test_every_module_belongs_to_a_stage():
    stray = [str(p.relative_to(ROOT)) for p in FILES
             if _stage(_module_name(p)) not in LAYERS and _stage(_module_name(p)) not in TOP]
    assert not stray, f"modules outside the stage packages {sorted(LAYERS)}: {stray}"


def test_imports_point_down_the_pipeline():
    bad = []
    for path in FILES:
        me = _stage(_module_name(path))
        if me in TOP:
            continue
        for target, line in _imports(path):
            to = _stage(target)
            if to != me and to not in LAYERS[me] and to != "__init__":
                bad.append(f"{path.relative_to(ROOT.parent)}:{line}: {me} imports {target} ({to} is not below {me})")
    assert not bad, "upward or sideways imports:\n" + "\n".join(bad)


def test_no_import_cycles_between_modules():
    graph = {_module_name(p): {t for t, _ in _imports(p) if _exists(t)} - {_module_name(p)} for p in FILES}
    # a package's __init__ is not a dependency of its modules' users in this sense: only real module files
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" → ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("source, expected", [
    ("from radgpt.serve.cli import run\n", "serve"),
    ("def f():\n    from radgpt.impress.load import load_model\n", "impress"),
])
def test_the_checker_sees_lazy_and_module_level_imports(source, expected):
    """The scan itself: an upward import inside a function counts (a check that missed it would pass anything)."""
    targets = [_stage(t) for t, _ in _imports(ROOT / "runs" / "probe.py", source)]
    assert targets == [expected]
    assert expected not in LAYERS["runs"]
