"""Reading spec files (`.nn` or YAML), following imports, and lowering.

A spec is untrusted input, and so are the paths it imports.  A file is read
only when it is a regular file (never a directory, a device or a FIFO) of at
most `limits.MAX_FILE_BYTES`, and an import only when it resolves (symbolic
links followed) to a file under one of the *roots*: the main spec's folder,
and the library folders (`lib=`, `--lib DIR`, else `$NNSPEC_PATH`).
`import "/etc/passwd"` or `import "../../.ssh/id_rsa"` is an error that
quotes the import line, never the file.
"""
from __future__ import annotations

import functools
import os
import stat
from pathlib import Path

from ..errors import Loc, SpecError, trimmed
from . import ast, limits
from .parser import parse

YAML_SUFFIXES = (".yaml", ".yml")
SPEC_SUFFIXES = (".nn",) + YAML_SUFFIXES


@functools.lru_cache(maxsize=64)
def read_module(text: str, file: str) -> ast.Module:
    """The AST of `text`, the source of `file`.  Cached: the AST is never
    changed once built, and a spec is often read again (an imported library
    by each spec, a command's spec by `lower` then `compile`)."""
    if file.endswith(YAML_SUFFIXES):
        from .yaml_spec import parse_yaml
        return parse_yaml(text, file)
    return parse(text, file)


def search_path(lib=()) -> list[str]:
    """The library folders: `lib` (``--lib DIR``), then those in ``$NNSPEC_PATH``."""
    env = [d for d in os.environ.get("NNSPEC_PATH", "").split(os.pathsep) if d]
    return [str(d) for d in lib] + env


def is_spec_text(spec) -> bool:
    """The Python API's rule: a `str` holding a newline or a `{` is spec text;
    any other str, and any `Path`, is a path."""
    return isinstance(spec, str) and ("\n" in spec or "{" in spec)


def spec_source(spec) -> tuple[str, str]:
    """(text, file name) of a spec given as a path or as text (`is_spec_text`)."""
    if is_spec_text(spec):
        if len(spec.encode()) > limits.MAX_FILE_BYTES:
            raise SpecError(f"the spec text is {len(spec.encode()):,} bytes; a spec is at "
                            f"most {limits.MAX_FILE_BYTES:,}",
                            Loc("<spec>", 1, 1), limits.hint("MAX_FILE_BYTES"))
        return spec, "<spec>"
    return read_spec_path(spec), str(spec)


def read_spec_path(path) -> str:
    """The text of the spec file `path`: an existing regular file ending in
    .nn, .yaml or .yml.  Anything else is a `SpecError` "cannot read PATH: why"."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        raise SpecError(f"cannot read {path}: {_reason(e)}") from None
    if stat.S_ISDIR(st.st_mode):
        raise SpecError(f"cannot read {path}: it is a directory",
                        hint="name a .nn, .yaml or .yml file")
    if p.suffix == ".nnc":
        raise SpecError(f"cannot read {path}: a compiled network (.nnc) is not a spec",
                        hint="load it with nnspec.load(path)")
    if p.suffix not in SPEC_SUFFIXES:
        raise SpecError(f"cannot read {path}: not a spec (a spec file ends in .nn, .yaml "
                        f"or .yml)")
    try:
        return read_text(p)
    except _Unreadable as e:
        raise SpecError(f"cannot read {path}: {e.reason}", hint=e.hint) from None


class _Unreadable(Exception):
    def __init__(self, reason: str, hint: str | None = None):
        super().__init__(reason)
        self.reason, self.hint = reason, hint


def _reason(e: OSError) -> str:
    return (e.strerror or str(e)).lower() if e.strerror else str(e)


def read_text(p: Path) -> str:
    """A regular file's text, at most `limits.MAX_FILE_BYTES`; `_Unreadable` if not.
    The type is checked on the open file (a FIFO opened without O_NONBLOCK
    would block), and no more than the limit is read (a file may grow)."""
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise _Unreadable(_reason(e)) from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _Unreadable("not a regular file")
        data = f.read(limits.MAX_FILE_BYTES + 1)
    if len(data) > limits.MAX_FILE_BYTES:
        raise _Unreadable(f"larger than {limits.MAX_FILE_BYTES:,} bytes, the most a spec "
                          f"file may hold", limits.hint("MAX_FILE_BYTES"))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Unreadable("not a text file (not UTF-8)") from None


def load_module(spec, *, lib=None):
    """Parse a spec (a path, or text: `is_spec_text`) and everything it
    imports.  Returns (main module, modules), where modules maps (importing
    file, import path) to the imported module.  `lib`: the library folders
    imports may also come from (default: ``$NNSPEC_PATH``)."""
    text, file = spec_source(spec)
    return load_text(text, file, lib=lib)


def load_text(text: str, file: str, *, lib=None):
    """`load_module` for the text of `file` (a path, or "<spec>")."""
    main = read_module(text, file)
    base = Path(file).parent if not file.startswith("<") else Path(".")
    imports = _Imports(base, search_path() if lib is None else [str(d) for d in lib])
    imports.resolve(main, [imports.key(Path(file))] if not file.startswith("<") else [])
    return main, imports.modules


class _Imports:
    def __init__(self, base: Path, lib: list[str]):
        self.lib = [Path(d) for d in lib]
        self.roots = [p.resolve() for p in [base, *self.lib]]
        self.modules: dict = {}            # (importing file, import path) -> module
        self.parsed: dict = {}             # resolved path -> module (each file read once)

    @staticmethod
    def key(p: Path) -> Path:
        return p.resolve()

    def resolve(self, module: ast.Module, stack: list):
        for item in module.items:
            if not isinstance(item, ast.Import):
                continue
            target = self.find(item, module)
            key = self.key(target)
            if key in stack:
                names = [str(p) for p in stack + [key]]
                raise SpecError(f"import cycle: {' -> '.join(names)}", item.loc)
            sub = self.parsed.get(key)
            if sub is None:
                try:
                    text = read_text(target)
                except _Unreadable as e:
                    raise SpecError(f"cannot import '{trimmed(item.path)}': {e.reason}", item.loc,
                                    e.hint) from None
                if not str(target).endswith(SPEC_SUFFIXES):
                    raise SpecError(f"cannot import '{trimmed(item.path)}': not a spec (a spec file "
                                    f"ends in .nn, .yaml or .yml)", item.loc)
                sub = self.parsed[key] = read_module(text, str(target))
                self.resolve(sub, stack + [key])
            self.modules[(module.file, item.path)] = sub

    def find(self, item: ast.Import, module: ast.Module) -> Path:
        """The file `import "path"` names: relative to the importing file's
        folder, else to each library folder; it must lie under a root."""
        here = Path(module.file).parent if not module.file.startswith("<") else Path(".")
        rel = Path(item.path)
        candidates = [rel] if rel.is_absolute() else [here / rel] + [d / rel for d in self.lib]
        outside = None
        for c in candidates:
            try:
                real = c.resolve()
                exists = real.exists()
            except (OSError, RuntimeError, ValueError):    # a symlink loop, a NUL byte
                continue
            if not exists:
                continue
            if not any(r == real or r in real.parents for r in self.roots):
                outside = outside or real
                continue
            if real.is_dir():
                raise SpecError(f"cannot import '{trimmed(item.path)}': it is a directory", item.loc,
                                "import a .nn, .yaml or .yml file")
            return c
        where = ", ".join(f"{r}/" for r in self.roots)
        if outside is not None:
            raise SpecError(f"cannot import '{trimmed(item.path)}': it is outside the spec's folder "
                            f"and the library folders", item.loc,
                            f"imports resolve under {where}; name a library folder with "
                            f"--lib DIR or NNSPEC_PATH")
        raise SpecError(f"cannot import '{trimmed(item.path)}': no such file", item.loc,
                        f"imports are relative to {here}/ or a library folder "
                        f"(--lib DIR, NNSPEC_PATH)")


def load_graph(spec, *, set: dict | None = None, dtype: str = "float32", lib=None):
    """Spec (path or text) -> IR Graph."""
    return lower_module(*load_module(spec, lib=lib), set=set, dtype=dtype)


def lower_module(main, modules, *, set: dict | None = None, dtype: str = "float32"):
    from .lower import Lowerer
    return Lowerer(modules, main, dtype).lower(set)


def check_file(path, lib=None) -> list:
    """All errors of one spec file, as SpecError objects (empty when valid).
    A file with a network is lowered; a library of blocks (no network) is
    parsed and its imports resolved; a file with neither is an error."""
    try:
        main, modules = load_module(Path(path), lib=lib)
    except SpecError as e:
        return [_located(e, path)]
    return check_modules(main, modules)


def check_modules(main, modules) -> list:
    """`check_file` for a spec already read (`load_module`)."""
    from .lower import Lowerer
    low = Lowerer(modules, main)
    try:
        if any(isinstance(i, ast.Network) for i in main.items):
            low.lower()
        else:
            low.library()
    except SpecError as e:
        return [_located(e, main.file)]
    return []


def _located(e: SpecError, path) -> SpecError:
    if e.loc is None:
        e.loc = Loc(str(path), 1, 1, "")
    return e
