"""The package's layout rules, read off the source: neurons/ stands on its own, no module reaches
into another's private names, and module-level imports form no cycle."""

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Source folder of each installed package (setup.cfg maps two of them from the repository root).
FOLDERS = {"spikemllm_sj": ROOT / "spikemllm_sj", "spikemllm_sj.neurons": ROOT / "neurons",
           "spikemllm_sj.lava_backend": ROOT / "lava_backend"}


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name."""
    found = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if package == "spikemllm_sj" and parts[0] in ("neurons", "lava_backend"):
                continue
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path, module_level_only: bool = False) -> list[tuple[str, list[str]]]:
    """``(imported module, names)`` of every import statement of a module, relative ones resolved."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.append((base, [alias.name for alias in node.names]))
    return found


def test_the_neurons_import_nothing_of_the_package_outside_themselves():
    outside = []
    for name, path in modules().items():
        if name.startswith("spikemllm_sj.neurons"):
            for module, _ in imports(name, path):
                if module.startswith("spikemllm_sj") and not module.startswith("spikemllm_sj.neurons"):
                    outside.append(f"{name} imports {module}")
    assert outside == []


def test_the_neurons_import_with_the_rest_of_the_package_unimportable():
    # Every spikemllm_sj module but the package itself and its neurons is made unimportable.
    code = textwrap.dedent(
        """
        import sys
        from importlib.abc import MetaPathFinder

        class Block(MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                allowed = name == "spikemllm_sj" or name.startswith("spikemllm_sj.neurons")
                if name.startswith("spikemllm_sj") and not allowed:
                    raise ImportError(f"blocked: {name}")
                return None

        sys.meta_path.insert(0, Block())
        from spikemllm_sj.neurons import MSTSEncoder, TCLIFNode
        import torch
        print(TCLIFNode(16).encode(torch.tensor([3.0])).flatten().tolist())
        print(sorted(m for m in sys.modules if m.startswith("spikemllm_sj")))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "[0.0, 1.0, 1.0]"  # 3 = 0*4 + 1*2 + 1*1
    assert all(m == "spikemllm_sj" or m.startswith("spikemllm_sj.neurons") for m in eval(out[1]))


def test_no_module_imports_a_private_name_of_another():
    private = []
    for name, path in modules().items():
        for module, names in imports(name, path):
            if module.startswith("spikemllm_sj") and module != name:
                private += [f"{name}: {n} from {module}" for n in names if n.startswith("_")]
    assert private == []


def test_module_level_imports_form_no_cycle():
    graph = {}
    known = modules()
    for name, path in known.items():
        targets = set()
        for module, names in imports(name, path, module_level_only=True):
            # `from package import module` imports the submodule too.
            for candidate in (module, *(f"{module}.{n}" for n in names)):
                if candidate in known and candidate != name:
                    targets.add(candidate)
        graph[name] = targets

    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, route = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return route + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, route + [nxt]))
        return None

    cycles = [" -> ".join(route) for route in map(cycle_from, graph) if route]
    assert cycles == []
