"""The house reads top-down: no import cycle between fractalgen's modules (counting imports inside
functions too), nothing below the command line imports it, and the package face holds no logic
that other modules import back. The applications (the command line, the demo, the web page) form
one wing, `fractalgen.cli`: the library imports no web framework and loads no dataset or classifier
itself; it takes tensors and paths from its callers."""
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
# Old module names kept for one release: each only re-exports its new home and warns when imported.
DEPRECATED_ALIASES = {"fractalgen.app": "fractalgen.cli.web"}
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
        if name in DEPRECATED_ALIASES:
            assert imported == {DEPRECATED_ALIASES[name]}, f"{name} may only re-export {DEPRECATED_ALIASES[name]}"
        elif not name.startswith(("fractalgen.cli", "fractalgen.__main__")):
            assert not any(m.startswith("fractalgen.cli") for m in imported), name


def test_nothing_imports_the_package_face_back():
    for name, imported in GRAPH.items():
        if name != "fractalgen" and not name.startswith("fractalgen.cli"):
            assert "fractalgen" not in imported, f"{name} imports fractalgen/__init__.py"


def test_no_importlib_tricks():
    for name, path in MODULES.items():
        assert "import_module(" not in path.read_text(), name


def test_deprecated_aliases_only_forward_and_warn():
    for old in DEPRECATED_ALIASES:
        source = MODULES[old].read_text()
        body = [node for node in ast.parse(source).body if not isinstance(node, ast.Expr) or
                not isinstance(node.value, ast.Constant)]  # the docstring aside
        assert [type(node).__name__ for node in body] == ["Import", "ImportFrom", "Expr"], old
        assert [a.name for a in body[1].names] == ["*"] and "DeprecationWarning" in ast.unparse(body[2]), old


# The library takes tensors and paths from its callers. Only these modules fetch the bundled datasets or the
# MNIST classifier: the loaders' homes, training (it reads the data its options name), and the package face
# (it names mnist_heldout). The command line and the web page read them and hand them to the library.
LOADERS = {"load_dataset", "mnist_split", "mnist_heldout", "load_mnist_classifier"}
MAY_LOAD = {"fractalgen", "fractalgen.data", "fractalgen.classifier", "fractalgen.train"}
WEB_FRAMEWORKS = {"gradio", "gradio_client", "starlette", "fastapi", "uvicorn"}


def library_modules():
    return {name: path for name, path in MODULES.items()
            if not name.startswith(("fractalgen.cli", "fractalgen.__main__")) and name not in DEPRECATED_ALIASES}


def warns_deprecation(node) -> bool:
    return any(isinstance(n, ast.Name) and n.id == "DeprecationWarning" for n in ast.walk(node))


def loaders_named(path: Path) -> set[str]:
    """LOADERS the file names (imports, calls, attributes), outside functions kept for one release: those
    say so with a DeprecationWarning and go away with it."""
    found = set()

    def visit(node):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and warns_deprecation(node):
            return
        if isinstance(node, ast.alias):
            found.add(node.name.rsplit(".", 1)[-1])
        elif isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.Attribute):
            found.add(node.attr)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found & LOADERS


def test_the_library_loads_no_dataset_or_classifier_itself():
    for name, path in library_modules().items():
        if name not in MAY_LOAD:
            assert not loaders_named(path), f"{name} loads {sorted(loaders_named(path))}: take tensors or paths instead"


def test_the_loader_rule_can_fail(tmp_path):
    loads = tmp_path / "loads.py"
    loads.write_text("from .data import stack\n\n\ndef f():\n    from . import classifier\n"
                     "    return classifier.load_mnist_classifier()\n")
    deprecated = tmp_path / "deprecated.py"
    deprecated.write_text("import warnings\n\n\ndef f():\n    warnings.warn('old', DeprecationWarning)\n"
                          "    from .data import mnist_split\n")
    assert loaders_named(loads) == {"load_mnist_classifier"} and loaders_named(deprecated) == set()


def test_only_the_command_line_serves_the_web_page():
    for name, path in library_modules().items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                imported.add(node.module.split(".")[0])
        assert not imported & WEB_FRAMEWORKS, f"{name} imports {sorted(imported & WEB_FRAMEWORKS)}"


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
