"""Dependencies point down: read every module of polyformer/ with ast (imports inside functions
included) and check which layer imports which, that no import cycle exists, and that nobody
uses another module's underscore names."""

import ast
import pathlib

import pytest

import polyformer

ROOT = pathlib.Path(polyformer.__file__).parent

# Area (first name under polyformer/) -> layer. An area imports its own modules and those of
# lower layers only: cli -> training and pipelines -> hub -> models -> attention, with
# checkpoint_io, targets and audio beside attention at the bottom. datasets sit beside models
# and import neither it nor anything above; lora (adapters on any family) and interp (capture
# and patch) sit beside hub.
LAYERS = {
    "attention": 0,
    "audio": 0,
    "checkpoint_io": 0,
    "targets": 0,
    "datasets": 1,
    "models": 1,
    "hub": 2,
    "lora": 2,
    "interp": 2,
    "pipelines": 3,
    "training": 3,
    "cli": 4,
    "__init__": 4,
}


def module_name(file: pathlib.Path) -> str:
    parts = file.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(f): f for f in sorted(ROOT.rglob("*.py"))}


def area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(module: str) -> dict[str, set[str]]:
    """polyformer modules that `module` imports (anywhere in it) -> the names it takes."""
    file = MODULES[module]
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    found: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "polyformer":
                    found.setdefault(alias.name, set())
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            if base.split(".")[0] != "polyformer":
                continue
            for alias in node.names:
                if f"{base}.{alias.name}" in MODULES:  # a submodule
                    found.setdefault(f"{base}.{alias.name}", set())
                else:
                    found.setdefault(base, set()).add(alias.name)
    return found


def module_aliases(module: str) -> dict[str, str]:
    """Local names bound to polyformer modules in `module` (`from polyformer import hub` ->
    {"hub": "polyformer.hub"})."""
    names = {}
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("polyformer"):
            for alias in node.names:
                if f"{node.module}.{alias.name}" in MODULES:
                    names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in MODULES:
                    names[alias.asname] = alias.name
    return names


def test_every_area_has_a_layer():
    unknown = sorted({area(m) for m in MODULES} - set(LAYERS))
    assert not unknown, f"polyformer/{unknown}: add them to LAYERS, in the layer they belong to"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    mine = area(module)
    if mine not in LAYERS:
        pytest.skip("reported by test_every_area_has_a_layer")
    wrong = [
        target
        for target in imports(module)
        if area(target) != mine and LAYERS.get(area(target), 99) >= LAYERS[mine]
    ]
    assert not wrong, f"{module} (layer {LAYERS[mine]}) imports {wrong} from its layer or above"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_uses_another_modules_underscore_names(module):
    taken = [
        f"{target}.{name}"
        for target, names in imports(module).items()
        for name in names
        if target != module and name.startswith("_") and not name.startswith("__")
    ]
    aliases = module_aliases(module)
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            taken.append(f"{aliases[node.value.id]}.{node.attr}")
    assert not taken, f"{module} uses private names of other modules: {taken}"


def test_no_import_cycles():
    graph = {m: set(imports(m)) & set(MODULES) for m in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target] if target in path else [target]
            if target not in state and (cycle := visit(target, [*path, target])):
                return cycle
        state[module] = 2
        return None

    for module in MODULES:
        if module not in state and (cycle := visit(module, [module])):
            pytest.fail(f"import cycle: {' -> '.join(cycle)}")
