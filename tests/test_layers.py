"""The import graph of the package (docs/architecture.md): no circle between modules, and no arrow from a lower
layer to a higher one. Read from the source with `ast` (every import, those inside functions too), with the folders
mapped to `maest.*` as setup.cfg maps them."""

import ast
import configparser
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
# docs/architecture.md's layers: 0 the ground, 1 inference and training, 2 the applications.
GROUND = ("maest.modeling", "maest.feature_extraction", "maest.errors", "maest.files", "maest.constants")
MIDDLE = ("maest.inference", "maest.training", "maest.model_cards")


def _layer(module: str) -> int:
    if any(module == name or module.startswith(name + ".") for name in GROUND):
        return 0
    if any(module == name or module.startswith(name + ".") for name in MIDDLE):
        return 1
    return 2


def _modules() -> dict[str, Path]:
    config = configparser.ConfigParser()
    config.read(REPOSITORY / "setup.cfg", encoding="utf-8")
    mapping = dict(
        (part.strip() for part in line.split("=", 1)) for line in config["options"]["package_dir"].strip().splitlines()
    )
    modules = {}
    for package, folder in mapping.items():
        for path in sorted((REPOSITORY / folder).rglob("*.py")):
            parts = path.relative_to(REPOSITORY / folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            if package == "maest" and parts[0] in {p.split(".")[1] for p in mapping if p != "maest"}:
                continue  # (no such folder inside maest/, but a mapped name always wins)
            modules[name] = path
    return modules


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph = {}
    for module, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = module.split(".")
                    package = package[: len(package) - node.level + (path.name == "__init__.py")]
                    base = ".".join(package + ([node.module] if node.module else []))
                names = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                while name and name not in modules:
                    name = name.rpartition(".")[0]
                if name and name not in (module, "maest"):  # the root's lazy names are not an import of a layer
                    targets.add(name)
        graph[module] = targets
    return graph


def test_imports_form_no_circle_and_go_downwards():
    modules = _modules()
    assert {"maest.inference.loading", "maest.modeling.conversion", "maest.cli.collection"} <= set(modules)
    graph = _imports(modules)
    upwards = sorted((a, b) for a, targets in graph.items() for b in targets if _layer(b) > _layer(a))
    assert upwards == []
    # A circle is a path back to where it started: depth-first search with the path on a stack.
    state, circles = {}, []

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                circles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []
    # The check sees function-level imports (the circle it guards against hid in one).
    assert "maest.inference.model" in graph["maest.inference.backends"]
    assert "maest.inference.backends" not in graph["maest.inference.model"]
