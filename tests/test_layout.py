"""The package layout holds: each subpackage imports only the layers below
it (docs/method.md, module map), the pure maths imports neither torch nor
MMEngine, and no module imports itself back through others."""
import ast
import os.path as osp
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / 'mmaction_multigrid'
# Subpackage -> the subpackages it may import.
ALLOWED = {
    'schedule': set(),
    'datasets': {'schedule'},
    'models': {'schedule'},
    'engine': {'schedule', 'datasets', 'models'},
    'tools': {'schedule', 'datasets', 'models', 'engine'},
}


def _imports(path: Path):
    """(module imported, at module level?) of every package-internal and
    third-party import in ``path``, relative imports resolved."""
    module = '.'.join(path.relative_to(PACKAGE.parent).with_suffix('').parts)
    package = module.rsplit('.', 1)[0]
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit('.', node.level -
                                      1)[0] if (node.level > 1) else package
                name = f'{base}.{node.module}' if node.module else base
                if not node.module:  # from . import x
                    for alias in node.names:
                        yield f'{base}.{alias.name}', id(node) in top
                    continue
            else:
                name = node.module
            yield name, id(node) in top
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, id(node) in top


def _modules():
    return {
        '.'.join(p.relative_to(PACKAGE.parent).with_suffix('').parts): p
        for p in PACKAGE.rglob('*.py') if 'configs' not in p.parts
    }


def test_each_layer_imports_only_the_layers_below():
    wrong = []
    for module, path in _modules().items():
        parts = module.split('.')
        if len(parts) < 3:
            continue
        layer = parts[1]
        for name, _ in _imports(path):
            target = name.split('.')
            if target[0] != 'mmaction_multigrid' or len(target) < 2:
                continue
            if target[1] != layer and target[1] not in ALLOWED[layer]:
                wrong.append(f'{module} imports {name}')
    assert not wrong, wrong


def test_schedule_is_pure_python():
    for module, path in _modules().items():
        if module.startswith('mmaction_multigrid.schedule'):
            third = {
                n.split('.')[0]
                for n, _ in _imports(path)
                if not n.startswith('mmaction_multigrid')
            }
            assert not third & {'torch', 'mmengine', 'mmaction', 'mmcv'}, (
                module, third)


def test_no_import_cycle():
    modules = _modules()
    graph = {
        module: {n
                 for n, at_top in _imports(path) if at_top and n in modules}
        for module, path in modules.items()
    }
    done, active = set(), []

    def visit(node):
        assert node not in active, ' -> '.join(active[active.index(node):] +
                                               [node])
        if node in done:
            return
        active.append(node)
        for nxt in graph[node]:
            visit(nxt)
        active.pop()
        done.add(node)

    for module in graph:
        visit(module)
    assert osp.isdir(PACKAGE / 'engine') and len(graph) > 30
