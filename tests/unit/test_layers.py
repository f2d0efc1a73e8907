"""The package layout is the architecture: imports only run down the layers.

protocol/ (pure) -> http/ -> store/ -> client/ -> web/ -> service/ -> tools (the
top-level modules: demo, cli, sampleapi, wiretap).  Parsed from the source (ast),
so a new upward import fails here, naming the module and the import.  Imports
under ``if TYPE_CHECKING:`` are for type checkers only (the layer above passes
the object in) and are not followed.
"""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial.unittest import TestCase

import mterelay

PACKAGE = Path(mterelay.__file__).parent

#: Lowest first; a module may import its own layer and any below it.
LAYERS = ("protocol", "http", "store", "client", "web", "service", "tools")

#: Within web/, the two roles share nothing directly: shared parts live a layer down.
FORBIDDEN = {("web.outbound", "web.inbound"), ("web.inbound", "web.outbound"),
             ("web.inbound", "web.passthrough"), ("web.inbound", "web.site")}

#: Known upward imports still to remove.  This list may only shrink (it is empty:
#: metrics are passed in, mterelay.http.observe.NO_METRICS where none are wanted).
KNOWN_UPWARD: set[tuple[str, str]] = set()


def layer_of(module: str) -> str:
    """``web.inbound`` -> ``web``; a top-level module is a tool; the bare package is bottom."""
    if module == "":
        return "protocol"  # mterelay/__init__.py: only __version__
    head = module.split(".", 1)[0]
    return head if head in LAYERS else "tools"


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def runtime_imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """The mterelay modules a module imports when it runs (relative to ``mterelay.``)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    parts = module.split(".") if module else []
                    base = parts if is_package else parts[:-1]
                    base = base[:len(base) - (child.level - 1)]
                    name = ".".join(base + ([child.module] if child.module else []))
                    found.add(name)
                elif child.module and (child.module == "mterelay"
                                       or child.module.startswith("mterelay.")):
                    name = child.module[len("mterelay."):] if child.module != "mterelay" else ""
                    if name == "":
                        # "from mterelay import x": x may be a subpackage.
                        found.update(alias.name for alias in child.names
                                     if alias.name != "__version__")
                    else:
                        found.add(name)
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("mterelay."):
                        found.add(alias.name[len("mterelay."):])
            visit(child)

    visit(tree)
    return found


def modules() -> dict[str, tuple[ast.AST, bool]]:
    result = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).with_suffix("")
        parts = list(relative.parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        result[".".join(parts)] = (ast.parse(path.read_text(), str(path)), is_package)
    return result


def violations() -> list[str]:
    found = []
    for module, (tree, is_package) in modules().items():
        own = LAYERS.index(layer_of(module))
        for imported in sorted(runtime_imports(tree, module, is_package)):
            target = ".".join(imported.split(".")[:2])
            if (module, target) in FORBIDDEN:
                found.append(f"{module} imports {imported} (the roles share through a lower layer)")
            elif LAYERS.index(layer_of(imported)) > own and (module, target) not in KNOWN_UPWARD:
                found.append(f"{module} ({layer_of(module)}) imports {imported} "
                             f"({layer_of(imported)}), a layer above it")
    return found


class LayerTests(TestCase):
    def test_imports_run_down_the_layers(self) -> None:
        self.assertEqual(violations(), [])

    def test_known_exceptions_are_still_real(self) -> None:
        """An entry of KNOWN_UPWARD that no longer happens must be deleted from it."""
        imports = {module: runtime_imports(tree, module, is_package)
                   for module, (tree, is_package) in modules().items()}
        for module, target in sorted(KNOWN_UPWARD):
            self.assertIn(target, imports[module], f"{module} no longer imports {target}")

    def test_the_checker_sees_an_upward_import(self) -> None:
        """The parser itself: relative, absolute and TYPE_CHECKING imports."""
        tree = ast.parse("from typing import TYPE_CHECKING\n"
                         "from mterelay.service.config import Config\n"
                         "from .bodies import x\n"
                         "if TYPE_CHECKING:\n    from mterelay.web.root import RelayRoot\n"
                         "def f():\n    from mterelay import tap\n")
        self.assertEqual(runtime_imports(tree, "http.names", False),
                         {"service.config", "http.bodies", "tap"})
        self.assertEqual(layer_of("service.config"), "service")
        self.assertEqual(layer_of("demo"), "tools")
