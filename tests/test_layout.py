"""The house reads top-down: no import cycle between fractalgen's modules (counting imports inside
functions too), nothing below the command line imports it, and the package face holds no logic
that other modules import back."""
import ast
from pathlib import Path

import fractalgen

PACKAGE = Path(fractalgen.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """fractalgen modules imported anywhere in the file (module level or inside functions)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("fractalgen")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("fractalgen"):
                continue
            for alias in node.names:  # `from . import conditional` imports a module
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in MODULES else target)
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: {m for m in imports_of(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def test_no_import_cycles():
    state = {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(GRAPH[node]):
            if nxt.startswith(node + ".") or node == "fractalgen":
                continue  # a package importing its own submodules (its face) is not a cycle
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join(trail + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])


def test_only_the_command_line_imports_the_command_line():
    for name, imported in GRAPH.items():
        if not name.startswith(("fractalgen.cli", "fractalgen.__main__")):
            assert not any(m.startswith("fractalgen.cli") for m in imported), name


def test_nothing_imports_the_package_face_back():
    for name, imported in GRAPH.items():
        if name != "fractalgen" and not name.startswith(("fractalgen.cli", "fractalgen.app")):
            assert "fractalgen" not in imported, f"{name} imports fractalgen/__init__.py"


def test_no_importlib_tricks():
    for name, path in MODULES.items():
        assert "import_module(" not in path.read_text(), name


APPLICATIONS = ("fractalgen.cli", "fractalgen.__main__", "fractalgen.app", "fractalgen.apps")
DEPRECATED = {"fractalgen.checkpoint", "fractalgen.hub", "fractalgen.card"}  # re-exports kept for one release


def test_formats_import_neither_the_command_line_nor_the_web_app():
    for name, imported in GRAPH.items():
        if name.startswith("fractalgen.formats"):
            bad = [m for m in imported if m.startswith(APPLICATIONS)]
            assert not bad, f"{name} imports {bad}"


def test_each_format_stands_alone_below_the_dispatcher():
    """formats/__init__.py tells the formats apart and imports them; no format imports it back."""
    for name, imported in GRAPH.items():
        if name.startswith("fractalgen.formats."):
            assert "fractalgen.formats" not in imported, f"{name} imports the dispatcher"


def test_nothing_imports_the_deprecated_modules():
    for name, imported in GRAPH.items():
        if name not in DEPRECATED:
            assert not imported & DEPRECATED, f"{name} imports {sorted(imported & DEPRECATED)}"
