"""The layout's promises: the root helper imports nothing of the controller (nor the lab);
the product imports no lab code at module level; no import cycles between modules; tests and
benches import only installed packages; each service's introspection is its XML contract."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from wg_netmanager.dbus import (
    CONTROLLER_INTERFACE,
    CONTROLLER_XML,
    HELPER_INTERFACE,
    HELPER_XML,
    contract_file,
    contract_structure,
)
from wg_netmanager.dbus.compat import Node, ServiceInterface

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"common": "wg_netmanager.common", "controller": "wg_netmanager.controller",
            "dbus": "wg_netmanager.dbus", "helper": "wg_netmanager.helper", "lab": "wg_netmanager.lab"}


def test_the_helper_imports_nothing_of_the_controller():
    code = ("import sys, wg_netmanager.helper.service, wg_netmanager.helper.device, wg_netmanager.helper.kernel; "
            "print(sorted(m for m in sys.modules if m.startswith(('wg_netmanager.controller', 'wg_netmanager.lab'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _modules() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([package, *parts])] = path
    return out


def _imports(module: str, path: Path, known: set[str], top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            for alias in node.names:
                name = f"{base}.{alias.name}"
                found.add(name if name in known else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in known and m != module}


def test_no_import_cycles_and_no_lab_in_the_product():
    modules = _modules()
    known = set(modules)
    graph = {m: _imports(m, p, known, top_level_only=False) for m, p in modules.items()}
    for module in graph:
        if not module.startswith("wg_netmanager.lab"):
            # the product may load the lab only where it offers the demo (lazily, optional)
            assert not {d for d in _imports(module, modules[module], known, True) if d.startswith("wg_netmanager.lab")}
    # every cycle is a bug (an import cycle between modules), except a package and its own
    # submodules (the package re-exports them)
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in graph[m]:
            if m.startswith(d + ".") or d.startswith(m + "."):
                continue
            if state.get(d) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d, stack + [d])
        state[m] = 2
    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


@pytest.mark.parametrize("folder", ["tests", "bench"])
def test_tests_and_benches_import_installed_packages_only(folder):
    for path in (ROOT / folder).glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("tests"), f"{path.name} imports {node.module}"
            if isinstance(node, ast.Attribute) and node.attr == "path" and \
                    isinstance(node.value, ast.Name) and node.value.id == "sys":
                parent = path.read_text()
                assert "sys.path.insert" not in parent and "sys.path.append" not in parent, path.name


def _introspection(cls, interface: str) -> str:
    """The interface's introspection as the library would serve it, without a bus."""
    obj = cls.__new__(cls)
    ServiceInterface.__init__(obj, interface)
    path = "/" + interface.replace(".", "/")
    return Node(path, interfaces=[obj.introspect()]).tostring()


@pytest.mark.parametrize("which", ["helper", "controller"])
def test_introspection_is_the_contract(which):
    if which == "helper":
        from wg_netmanager.helper.service import Helper1 as cls
        interface, xml = HELPER_INTERFACE, HELPER_XML
    else:
        from wg_netmanager.controller.dbus_service import Controller1 as cls
        interface, xml = CONTROLLER_INTERFACE, CONTROLLER_XML
    served = contract_structure(_introspection(cls, interface), interface)
    assert served == contract_structure(contract_file(xml).read_text(), interface)
    assert served["methods"], "the interface has methods"


def test_the_version_is_written_once():
    from importlib import metadata

    from wg_netmanager.common import VERSION

    assert metadata.version("wg-netmanager") == VERSION
