"""The package's structure: imports point one way, and the lists of settings come from the config.

The import graph is read from the source with `ast` (every import statement, including those
inside functions, which are often how a circle is hidden), not by importing anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import resnets
from resnets.config import CRITICAL, REPORT, REUSE, TrainConfig, marked_keys

PACKAGE = Path(resnets.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = ("resnets",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1]) if parts[-1] == "__init__" else ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """{module: the resnets modules it imports}, a package standing for its __init__."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        base = name.split(".") if is_package else name.split(".")[:-1]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                stem = ".".join(base[: len(base) - node.level + 1]) if node.level else ""
                origin = ".".join(p for p in (stem, node.module or "") if p)
                # `from package import submodule` imports the submodule; anything else, the module.
                found = [f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in modules else origin
                         for alias in node.names]
            else:
                continue
            targets |= {t for t in found if t in modules and t != name}
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def part_of(module: str) -> str:
    """The first level below resnets: `resnets.train.engine` -> `train`, `resnets.io` -> `io`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "resnets"


def test_the_graph_sees_imports_of_every_kind():
    graph = import_graph()
    assert "resnets.io" in graph["resnets.config"]  # from .io import ...
    assert "resnets.train.imagenet_data" in graph["resnets.train.engine"]  # from .imagenet_data import ...
    assert "resnets.models.factory" in graph["resnets.models"]  # package __init__, relative
    assert "resnets.cli.download" in graph["resnets.cli"]  # from . import download (a submodule)
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_among_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_imports_from_a_package_that_imports_it_back():
    # The parts of resnets (its subpackages and top-level modules) form layers: no two import each other,
    # directly or around a longer circle.
    parts: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        parts.setdefault(part_of(module), set()).update(part_of(t) for t in targets if part_of(t) != part_of(module))
    parts.pop("resnets")  # the root __init__ re-exports the public names; nothing inside imports it back
    cycle = find_cycle(parts)
    assert cycle is None, "packages importing each other: " + " -> ".join(cycle)


def test_foundations_import_nothing_above_them():
    graph = import_graph()
    for module in ("resnets.errors", "resnets.io", "resnets.runtime"):
        assert graph[module] <= {"resnets.errors"}, (module, graph[module])
    assert {part_of(t) for t in graph["resnets.config"]} <= {"errors", "io"}


# The hand-kept lists the field marks replaced (as of commit a0f3558).
OLD_CRITICAL_SETTINGS = (
    "model.name", "model.num_classes", "model.shortcut", "model.stride_in_1x1", "model.zero_init_residual",
    "model.normalization", "data.dataset", "data.val_size", "data.train_size", "data.split_seed", "data.augment",
    "optim.batch_size", "optim.momentum", "optim.weight_decay", "seed",
)
OLD_REUSE_KEYS = ("model.name", "seed", "optim.iters", "optim.milestones", "optim.batch_size", "optim.lr",
                  "data.val_size", "data.train_size", "data.split_seed", "data.augment")
OLD_SCHEDULE_KEYS = ("optim.iters", "optim.batch_size", "optim.lr", "optim.milestones", "optim.schedule",
                     "optim.warmup", "optim.weight_decay", "optim.momentum", "data.val_size", "data.train_size",
                     "data.augment", "eval_every", "precision")


def test_marked_settings_hold_what_the_old_lists_held():
    assert set(OLD_CRITICAL_SETTINGS) <= set(marked_keys(TrainConfig, CRITICAL))
    assert set(OLD_REUSE_KEYS) <= set(marked_keys(TrainConfig, REUSE))
    assert set(OLD_SCHEDULE_KEYS) <= set(marked_keys(TrainConfig, REPORT))
    # Legitimate changes on resume (a longer run, new milestones, another lr) stay allowed.
    assert not {"optim.iters", "optim.milestones", "optim.lr", "eval_every"} & set(marked_keys(TrainConfig, CRITICAL))


def test_readme_layout_table_matches_the_tree():
    readme = (PACKAGE.parent / "README.md").read_text()
    table = readme[readme.index("## Layout"):]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    listed = {path.strip().rstrip("/") for row in rows for path in row.split("|")[1].replace("`", "").split(",")}
    for path in listed:
        assert (PACKAGE.parent / path).exists(), f"README lists {path}, which does not exist"
    parts = {f"resnets/{p.name}" for p in PACKAGE.iterdir()
             if (p.suffix == ".py" and p.stem not in ("__init__", "__main__")) or (p / "__init__.py").exists()}
    assert parts <= listed, f"README's layout table misses {sorted(parts - listed)}"
