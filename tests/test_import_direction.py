"""The router core imports no system; systems import the core and never each other."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "streammoe"
CORE_ALLOWED = {"torch", "numpy", "pandas", "streammoe"}  # pandas only lazily, for to_dataframe


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _systems() -> dict[str, Path]:
    found = {}
    if (PKG / "stream").is_dir():
        found["streammoe.stream"] = PKG / "stream"
    control = PKG / "control"
    if control.is_dir():
        for sub in control.iterdir():
            if sub.is_dir() and (sub / "__init__.py").exists():
                found[f"streammoe.control.{sub.name}"] = sub
    return found


def test_core_depends_on_torch_numpy_stdlib_only():
    files = list((PKG / "routing").rglob("*.py"))
    assert files
    for f in files:
        for name in _imports(f):
            top = name.split(".")[0]
            assert top in CORE_ALLOWED or top in sys.stdlib_module_names, f"{f.name} imports {name}"
            if top == "streammoe":
                assert name.startswith("streammoe.routing"), f"core module {f.name} imports {name}"


def test_systems_do_not_import_each_other():
    systems = _systems()
    for name, folder in systems.items():
        for f in folder.rglob("*.py"):
            for imp in _imports(f):
                for other in systems:
                    if other != name:
                        assert not imp.startswith(other), f"{name} ({f.name}) imports {imp}"


# The one exemption: the CLI is where the list of systems lives, so it imports each system's
# ``config`` module (schema dataclasses, registered in Hydra's ConfigStore before composing; see
# streammoe/config.py) and nothing else of a system. Every other shared module imports no system.
CLI_MAY_IMPORT = {f"{system}.config" for system in _systems()}


def test_shared_modules_import_no_system():
    for f in [*PKG.glob("*.py"), *(PKG / "routing").rglob("*.py")]:
        for imp in _imports(f):
            if f.name == "cli.py" and imp in CLI_MAY_IMPORT:
                continue
            assert not imp.startswith(("streammoe.stream", "streammoe.control")), f"{f.name}: {imp}"


def test_cli_registers_every_system_schema():
    """The exemption above is used for what it is for: one schema module per system."""
    imported = {imp for imp in _imports(PKG / "cli.py") if imp.startswith(("streammoe.stream", "streammoe.control"))}
    assert imported == CLI_MAY_IMPORT


ENVS = Path(__file__).resolve().parents[1] / "envs"


def test_environments_import_no_part_of_streammoe():
    """``streammoe_envs`` (the ``envs/`` folder) is below the systems: they import it, never back."""
    files = list(ENVS.rglob("*.py"))
    assert files
    for f in files:
        for imp in _imports(f):
            assert imp.split(".")[0] != "streammoe", f"envs/{f.relative_to(ENVS)} imports {imp}"
            assert imp.split(".")[0] != "envs", f"envs/{f.relative_to(ENVS)} imports {imp}: use streammoe_envs"


def test_no_module_imports_the_bare_envs_name():
    root = Path(__file__).resolve().parents[1]
    for folder in ("streammoe", "scripts", "tests", "envs"):
        for f in (root / folder).rglob("*.py"):
            for imp in _imports(f):
                assert imp.split(".")[0] != "envs", f"{f.relative_to(root)} imports {imp}"
