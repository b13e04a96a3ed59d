"""Layers point one way: every import in the package, read from the source, against the list of
layers in docs/development.md (the one place it is written)."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "cccatalog"
DOC = ROOT / "docs" / "development.md"


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. cccatalog.catalog.views
    target: str  # what it imports, e.g. cccatalog.gitmirror.layout
    line: int


def layers() -> dict[str, int]:
    """name -> its layer's number, from the numbered list between the `layers` markers."""
    text = DOC.read_text(encoding="utf-8")
    block = re.search(r"<!-- layers[^>]*-->\n(.*?)<!-- /layers -->", text, re.S)
    assert block, f"{DOC}: no <!-- layers --> block"
    found: dict[str, int] = {}
    layer = 0
    for line in block.group(1).splitlines():
        if number := re.match(r"(\d+)\. ", line):
            layer = int(number.group(1))
        elif not line.startswith(" "):  # a numbered item's continuation is indented
            continue
        for name in re.findall(r"`([\w.]+)`", line):
            assert name not in found, f"{DOC}: {name} is in two layers"
            found[name] = layer
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    """The name a layer lists: `cccatalog` itself, a top-level module, or a subpackage."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def imports() -> list[Import]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                targets = [base]
            else:
                continue
            found += [Import(module, t, node.lineno) for t in targets if t.split(".")[0] == "cccatalog"]
    return found


def test_the_layer_list_places_every_module_of_the_package() -> None:
    listed = layers()
    units = {unit(module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert units - set(listed) == set(), "add these to the layers list in docs/development.md"
    assert set(listed) - units == set(), "the layers list names modules that do not exist"


def test_no_module_imports_from_its_own_layer_or_one_below() -> None:
    listed = layers()
    upward = [
        f"{i.module}:{i.line} imports {i.target} (layer {listed[unit(i.target)]}, "
        f"its own is {listed[unit(i.module)]})"
        for i in imports()
        if unit(i.target) != unit(i.module) and listed[unit(i.target)] >= listed[unit(i.module)]
    ]
    assert upward == []


def test_imports_inside_functions_and_under_type_checking_are_read() -> None:
    found = {(i.module, i.target) for i in imports()}
    # `bake` is imported inside the command's function; Store only for the type checker
    assert ("cccatalog.cli.commands", "cccatalog.bake") in found
    assert ("cccatalog.manifest", "cccatalog.catalog.store") in found


def module_graph() -> dict[str, set[str]]:
    """module -> the modules it imports (`from package import module` names the module itself)."""
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cccatalog"):
                for alias in node.names:
                    name = f"{node.module}.{alias.name}"
                    graph[module].add(name if name in modules else node.module)
            elif isinstance(node, ast.Import):
                graph[module] |= {a.name for a in node.names if a.name in modules}
    return graph


def test_no_two_modules_import_each_other_however_indirectly() -> None:
    graph = module_graph()
    circles = []
    for start in sorted(graph):
        # every module reachable from `start`; a circle when `start` is among them
        seen, todo = set(), list(graph[start])
        while todo:
            found = todo.pop()
            if found not in seen and found in graph:
                seen.add(found)
                todo.extend(graph[found])
        if start in seen:
            circles.append(start)
    assert circles == []
