"""The package's imports run one way: config <- model <- (accelerators, decoding) <- applications,
with no circle between modules. Read from the source, so a wrong import fails here, not at a
reader's desk."""

import ast
from pathlib import Path

import nexttoken

ROOT = Path(nexttoken.__file__).parent
# a module may import its own package and any package of a lower layer; packages of one layer
# stay apart (the accelerators and decoding never import each other)
LAYERS = [
    {"errors"},
    {"config", "files", "packaged"},
    {"tokenizer", "model"},
    {"accel", "decoding", "families"},
    {"loaders"},
    {"pretrained"},
    {"encoder"},
    {"apps"},  # tools on the layers below, which the server's page uses too
    {"serve", "train", "cli_options"},
    {"cli"},
]
LAYER = {package: n for n, packages in enumerate(LAYERS) for package in packages}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool = False) -> list[tuple[int, str]]:
    """(line, module) of every nexttoken import in the file, `from package import module` naming
    the module; `top_level_only`: those that run when it is imported (not inside functions)."""
    tree = ast.parse(path.read_text())
    nodes = [n for stmt in tree.body for n in ([stmt] + (stmt.body if isinstance(stmt, ast.If) else []))] \
        if top_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nexttoken."):
            submodules = [f"{node.module}.{a.name}" for a in node.names
                          if (ROOT.parent / f"{node.module}.{a.name}".replace(".", "/")).with_suffix(".py").exists()]
            found += [(node.lineno, m) for m in submodules or [node.module]]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("nexttoken.")]
    return found


def test_imports_point_down_the_layers():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        own = module_name(path).split(".")[1] if "." in module_name(path) else ""
        for line, target in imports(path):
            package = target.split(".")[1]
            if package != own and LAYER[package] >= LAYER[own]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_module_imports_itself_back():
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {m: {t for _, t in imports(p, top_level_only=True)} - {m} for m, p in modules.items()}
    circles = []

    def visit(module: str, stack: list[str], done: set[str]) -> None:
        for target in graph.get(module, ()):
            if target in stack:
                circles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in done:
                visit(target, stack + [target], done)
        done.add(module)

    done: set[str] = set()
    for module in sorted(modules):
        visit(module, [module], done)
    assert not circles, "\n".join(circles)


def test_the_model_reads_without_its_accelerators():
    core = [p for p in (ROOT / "model").rglob("*.py")]
    assert core and not [t for p in core for _, t in imports(p) if t.split(".")[1] in ("accel", "decoding")]
