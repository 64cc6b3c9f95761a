"""Reading spec files (`.nn` or YAML), following imports, and lowering."""
from __future__ import annotations

from pathlib import Path

from ..errors import Loc, SpecError
from . import ast
from .parser import parse

YAML_SUFFIXES = (".yaml", ".yml")


def read_module(text: str, file: str) -> ast.Module:
    if file.endswith(YAML_SUFFIXES):
        from .yaml_spec import parse_yaml
        return parse_yaml(text, file)
    return parse(text, file)


def load_module(path_or_text, file: str | None = None):
    """Parse a spec and everything it imports.  Returns (main module, modules),
    where modules maps (importing file, import path) to the imported module."""
    text, file = _source(path_or_text, file)
    main = read_module(text, file)
    modules: dict = {}
    _resolve(main, modules, [file])
    return main, modules


def _source(path_or_text, file):
    if isinstance(path_or_text, Path) or (
            isinstance(path_or_text, str) and "\n" not in path_or_text
            and path_or_text.endswith((".nn",) + YAML_SUFFIXES)):
        p = Path(path_or_text)
        try:
            return p.read_text(), str(file or path_or_text)
        except OSError as e:
            raise SpecError(f"cannot read {p}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise SpecError(f"{p} is not a text file") from None
    return str(path_or_text), file or "<spec>"


def _resolve(module: ast.Module, modules: dict, stack: list):
    for item in module.items:
        if not isinstance(item, ast.Import):
            continue
        base = Path(module.file).parent if not module.file.startswith("<") else Path(".")
        target = (base / item.path)
        key = str(target)
        if key in stack:
            raise SpecError(f"import cycle: {' -> '.join(stack + [key])}", item.loc)
        if not target.exists():
            raise SpecError(f"cannot import '{item.path}': no such file", item.loc,
                            f"imports are relative to {base}/")
        try:
            sub = read_module(target.read_text(), key)
        except UnicodeDecodeError:
            raise SpecError(f"cannot import '{item.path}': not a text file", item.loc) from None
        modules[(module.file, item.path)] = sub
        _resolve(sub, modules, stack + [key])


def load_graph(path_or_text, *, set: dict | None = None, dtype: str = "float32",
               file: str | None = None):
    """Spec (path or text) -> IR Graph."""
    from .lower import Lowerer
    main, modules = load_module(path_or_text, file)
    return Lowerer(modules, main, dtype).lower(set)


def check_file(path) -> list:
    """All errors of one spec file, as SpecError objects (empty when valid)."""
    try:
        main, modules = load_module(Path(path))
        has_net = any(isinstance(i, ast.Network) for i in main.items)
        if has_net:
            from .lower import Lowerer
            Lowerer(modules, main).lower()
        else:   # a library of blocks: parse and resolve imports only
            from .lower import Lowerer
            Lowerer(modules, main).collect(main)
    except SpecError as e:
        if e.loc is None:
            e.loc = Loc(str(path), 1, 1, "")
        return [e]
    return []
