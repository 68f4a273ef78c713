"""Imports run one way: a module imports only from its own layer and the layers below it (docs/development.md).

The layers, bottom to top, as the package is built today (one flat folder, report/ apart); a module that is in no
layer fails the test too, so a new module is placed on purpose."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "resattn"
LAYERS = {  # bottom first
    "core": ["errors", "clock", "identity", "provenance"],
    "models": ["attention", "external", "blocks", "model", "resnet"],
    "data": ["data", "corruptions"],
    "training": ["config", "build", "members", "engine", "evaluate", "robustness", "checkpoint", "records", "tracking"],
    "report": ["report"],
    "sweeps": ["sweep", "rerun", "pieces", "study"],
    "cli": ["job", "job_records", "keys", "launchers", "tuning", "callbacks"],
}
LEVEL = {module: level for level, modules in enumerate(LAYERS.values()) for module in modules}


def imported(path: Path) -> set[str]:
    """The resattn modules a file imports (resattn.report.x counts as report), at any depth of the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "resattn":
            parts = node.module.split(".")
            names |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("resattn.")}
    return names


def test_every_module_has_a_layer_and_imports_none_above_it():
    files = [p for p in PACKAGE.glob("*.py") if p.stem != "__init__"] + sorted((PACKAGE / "report").glob("*.py"))
    upward = []
    for path in files:
        module = path.stem if path.parent == PACKAGE else "report"
        assert module in LEVEL, f"{path.name} is in no layer: add it to LAYERS"
        upward += [f"{module} -> {name}" for name in imported(path) if LEVEL.get(name, -1) > LEVEL[module]]
    assert not upward, f"imports that run up a layer: {', '.join(sorted(set(upward)))}"


def test_the_check_sees_an_upward_import(tmp_path):
    path = tmp_path / "identity.py"
    path.write_text("from resattn.job import run\nfrom resattn import engine\n")
    assert imported(path) == {"job", "engine"}
