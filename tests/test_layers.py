"""The import direction of the package: each layer imports only the layers below it.

    errors, validation, clikit ← features ← bandit ← config ← sim, decoder ← replay ← serving ← control, demo ← serve ← cli

Every import counts, also the ones inside functions (lazy imports still make a
dependency). A ``cli_commands`` module, and the ``cli_support`` helpers of one, belong
to the CLI layer, whatever their package. The package root re-exports lazily and is not a layer.
"""

from __future__ import annotations

import ast
import pathlib

import stopbandit

ROOT = pathlib.Path(stopbandit.__file__).parent
RANK = {
    "_version": 0, "errors": 0, "validation": 1, "clikit": 1, "features": 2, "bandit": 3, "config": 4,
    "sim": 5, "decoder": 5, "replay": 6, "serving": 7, "control": 8, "demo": 8, "serve": 9, "cli": 10,
}
CLI = 10


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts == ("__init__",):
            continue
        yield path, parts


def _layer(parts: tuple[str, ...]) -> tuple[str, int]:
    top = parts[0]
    if parts[-1] in ("cli_commands", "cli_support"):
        return top, CLI
    return top, RANK[top]


def _imports(path: pathlib.Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "stopbandit":
                for alias in node.names:
                    yield node.lineno, f"stopbandit.{alias.name}"
            else:
                yield node.lineno, node.module


def test_every_part_has_a_layer():
    tops = {parts[0] for _, parts in _modules()}
    assert tops <= set(RANK), sorted(tops - set(RANK))


def test_imports_point_down_the_layers():
    wrong = []
    for path, parts in _modules():
        top, rank = _layer(parts)
        for line, name in _imports(path):
            if not name.startswith("stopbandit."):
                continue
            target = name.split(".")[1]
            if target == top:
                continue
            if target not in RANK:  # a name re-exported by the package root
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {name} from the package root")
                continue
            if RANK[target] >= rank:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({top}, layer {rank}) imports {name} "
                             f"({target}, layer {RANK[target]})")
    assert wrong == []


def test_heavy_engines_stay_behind_their_seams():
    """Only the decoder imports torch; only bandit/vw.py imports Vowpal Wabbit."""
    wrong = []
    for path, parts in _modules():
        for line, name in _imports(path):
            root = name.split(".")[0]
            if root == "torch" and parts[0] != "decoder":
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports torch")
            if root == "vowpalwabbit" and parts != ("bandit", "vw"):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports vowpalwabbit")
    assert wrong == []


def test_bandit_is_pure():
    """bandit: no database, no files of its own, no threads started."""
    wrong = []
    for path, parts in _modules():
        if parts[0] != "bandit":
            continue
        for line, name in _imports(path):
            if name.split(".")[0] in ("sqlalchemy", "alembic", "sqlite3", "psycopg", "subprocess", "socket"):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
        if "threading.Thread(" in path.read_text(encoding="utf-8"):
            wrong.append(f"{path.relative_to(ROOT)} starts a thread")
    assert wrong == []


def test_top_level_namespace_is_curated_and_lazy():
    import subprocess
    import sys

    assert set(stopbandit.__all__) == {
        "Arm", "ConfigError", "ConflictError", "ControlledSelector", "Decision", "Health", "InputError", "Selector",
        "SelectorConfig", "SnapshotError", "StopbanditError", "StoreError", "UnknownDecisionError", "__version__"}
    for name in stopbandit.__all__:
        assert getattr(stopbandit, name) is not None
    code = "import sys, stopbandit; print(any(m.startswith(('stopbandit.serving', 'sqlalchemy')) for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"  # `import stopbandit` loads neither the facade nor the database stack


STORE_MODULES = {("replay", "store"), ("replay", "eventlog"), ("replay", "migrate"), ("replay", "engine"),
                 ("replay", "models"), ("replay", "tables"), ("replay", "bulk")}
TABLE_NAMES = {"DECISIONS", "OUTCOMES", "SNAPSHOTS", "LAMBDAS", "_guard", "guard"}


def test_only_the_store_speaks_sql():
    """Tables, connections and the error guard stay inside the store's modules; everything else asks the store."""
    wrong = []
    for path, parts in _modules():
        if parts in STORE_MODULES:
            continue
        text = path.read_text(encoding="utf-8")
        for needle in ("engine.connect(", "engine.begin(", "exec_driver_sql("):
            if needle in text:
                wrong.append(f"{path.relative_to(ROOT)} uses {needle}")
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stopbandit.replay"):
                for alias in node.names:
                    if alias.name in TABLE_NAMES or alias.name.endswith("Row") and node.module.endswith("models"):
                        wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {alias.name}")
    assert wrong == []
