"""The package's layers, checked on its source: each module imports only from its own layer or a lower
one, and no chain of imports comes back to where it started, counting imports inside functions.
Imports are read with ast (absolute, relative, at the top or inside a function), never run."""
import ast
from pathlib import Path

import pytest

import triplet_keras

pytestmark = pytest.mark.backend_free  # reads source files only

PACKAGE_DIR = Path(triplet_keras.__file__).resolve().parent
# Lowest first. serving (the Predictor) sits below pipeline because the run's stages save predictors;
# the command line that serves them is __main__, at the top.
LAYERS = ("core", "data", "models", "transfer", "serving", "pipeline")
TOP = ("__init__", "__main__", "backend_choice")  # above every layer: the public names and the command line


def module_files(package_dir):
    """{dotted module name: (path, is a package's __init__)} for every .py file of the package."""
    root = package_dir.parent
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def imported_modules(path, module, is_package, known):
    """The modules of ``known`` that the file imports anywhere: ``import a.b``, ``from a.b import c``
    (a.b.c itself when it is a module, else a.b), relative forms resolved against ``module``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:
                target = f"{source}.{alias.name}"
                if target in known:
                    found.add(target)
                elif source in known:
                    found.add(source)
    found.discard(module)
    return found


def import_graph(package_dir):
    """{module: set of the package's modules it imports}."""
    modules = module_files(package_dir)
    return {name: imported_modules(path, name, is_package, modules) for name, (path, is_package) in modules.items()}


def layer_of(module):
    """The module's rank: the index of its layer in LAYERS, len(LAYERS) for the TOP modules, None for a
    module in no layer."""
    parts = module.split(".")[1:]
    if not parts or (len(parts) == 1 and parts[0] in TOP):
        return len(LAYERS)
    return LAYERS.index(parts[0]) if parts[0] in LAYERS else None


def upward_imports(graph):
    """(importer, imported) pairs where the imported module's layer is above the importer's."""
    return sorted((module, target) for module, targets in graph.items() for target in targets
                  if layer_of(target) > layer_of(module))


def find_cycle(graph):
    """One import cycle as a list of modules [m0, m1, ..., m0], or None when the graph has none."""
    state = {}  # module -> "open" while on the current path, "done" after

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [module, target]
            if target not in state:
                cycle = visit(target, path + [module])
                if cycle:
                    return cycle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module, [])
            if cycle:
                return cycle
    return None


def test_every_module_is_in_a_layer_or_at_the_top():
    graph = import_graph(PACKAGE_DIR)
    assert len(graph) > 40
    assert [module for module in graph if layer_of(module) is None] == []


def test_no_module_imports_from_a_layer_above_its_own():
    assert upward_imports(import_graph(PACKAGE_DIR)) == []


def test_the_package_has_no_import_cycle():
    assert find_cycle(import_graph(PACKAGE_DIR)) is None


def top_level_names(path):
    """The names a module defines at its top level (functions, classes, assignments, imports)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def test_the_names_imported_by_name_at_run_time_exist():
    """The package's lazy public names and the modules it imports to register Keras objects are strings,
    out of the graph's sight: each must name a module of the package, and a name that module defines."""
    modules = module_files(PACKAGE_DIR)
    for module in triplet_keras.KERAS_OBJECT_MODULES:
        assert module in modules
    for name, module in triplet_keras._EXPORTS.items():
        assert name in top_level_names(modules[f"triplet_keras.{module}"][0]), (name, module)


def write_package(root, files):
    """Write {relative path: source} under root, each folder with an empty __init__.py unless given."""
    for relative, source in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    for folder in [root, *[path for path in root.rglob("*") if path.is_dir()]]:
        if not (folder / "__init__.py").exists():
            (folder / "__init__.py").write_text("")


def test_the_checker_finds_an_upward_import_and_a_cycle_hidden_in_functions(tmp_path):
    package = tmp_path / "triplet_keras"
    write_package(package, {
        "core/paths.py": "def f():\n    from ..pipeline.run import go\n",  # relative, upward, late
        "core/a.py": "import triplet_keras.core.b\n",
        "core/b.py": "def g():\n    from triplet_keras.core import a\n",  # closes a -> b -> a, late
        "pipeline/run.py": "from triplet_keras.core import paths\nfrom . import helpers\n",
        "pipeline/helpers.py": "from triplet_keras.core.paths import f\n",
        "__init__.py": "",
    })
    graph = import_graph(package)
    assert graph["triplet_keras.pipeline.run"] == {"triplet_keras.core.paths", "triplet_keras.pipeline.helpers"}
    assert graph["triplet_keras.core.b"] == {"triplet_keras.core.a"}  # a module named in from-import
    assert upward_imports(graph) == [("triplet_keras.core.paths", "triplet_keras.pipeline.run")]
    cycle = find_cycle(graph)
    assert cycle[0] == cycle[-1] and set(cycle) in ({"triplet_keras.core.a", "triplet_keras.core.b"},
                                                     {"triplet_keras.core.paths", "triplet_keras.pipeline.run"})
    # the same package mended: helpers moved down, the late import dropped
    (package / "core" / "paths.py").write_text("def f():\n    return 1\n")
    (package / "core" / "b.py").write_text("X = 1\n")
    graph = import_graph(package)
    assert upward_imports(graph) == [] and find_cycle(graph) is None


def test_a_module_outside_the_layers_is_reported(tmp_path):
    package = tmp_path / "triplet_keras"
    write_package(package, {"flat.py": "", "core/x.py": "", "__main__.py": ""})
    assert [module for module in import_graph(package) if layer_of(module) is None] == ["triplet_keras.flat"]
