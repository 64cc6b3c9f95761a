"""The disk cache of generated modules and their machine code.

    $NNSPEC_CACHE (default ~/.cache/nnspec)/          mode 0700, yours
        v<nnspec>-numba<numba>-py<XY>/                 one directory per version
            step_<graph>_<kind>_<sha256>.py            generated source
            loop_..._<sha256>.py
            __pycache__/<module>.<fn>-<line>.py<XY>.nbi / .nbc
                                                       Numba's index and machine code

A module's name ends in the sha256 of its own text, and its text starts with
a line naming what its machine code is linked with: the nnspec and Numba
versions and a hash of every nnspec source file it imports, followed through
their imports (the op modules whose kernels it calls, backend/optim.py, ...).
So the name changes whenever anything the machine code depends on changes:
the generator's output (layouts, offsets, constants of model.py are literals
in the text), a kernel, a version.  Numba checks only the module's own file,
so this is what keeps stale machine code from being reused.  Before a module
is imported its file is compared with its text: a file that does not match
its name (truncated, edited, planted) is deleted and written anew, with a
warning, and the text that runs is the one compared (no .pyc).

Numba's .nbi/.nbc files are pickles that Numba loads as they are; nothing in
them is checked.  What protects them, and the modules, is the directory:
nnspec creates it with mode 0700 and refuses one owned by another user or
writable by others (as ssh and pip do), since anyone who can write there runs
code as you.  An entry that fails to load is deleted and rebuilt with a
warning (`recovering_cache`).  The op modules' kernels are cached by Numba
beside their sources (or in NUMBA_CACHE_DIR), stamped with the file's content
and a hash of the compiled sources it imports (a reduction kernel calls
elementwise.py's helpers).

A directory nnspec cannot write (read-only, or a parent it cannot create)
still works: each process compiles into a temporary directory, and a warning
says so once.  Directories of other versions are removed a day after their
last use; `nnspec cache info` and `nnspec cache clear` show and empty it.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import inspect
import os
import re
import shutil
import stat
import sys
import tempfile
import time
import types
from pathlib import Path

from ..errors import NNSpecError

PRUNE_AFTER = 24 * 3600     # seconds a directory of another version is kept after its last use
_PACKAGE = Path(__file__).resolve().parent.parent

_dirs: dict[str, Path] = {}          # $NNSPEC_CACHE -> the directory this process uses
_file_digests: dict[Path, str] = {}
_warned: set[str] = set()


class CacheError(NNSpecError):
    """A cache directory nnspec will not use."""


def warn(message: str, once: str | None = None) -> None:
    """One line on stderr (once per process for a given `once` key)."""
    if once is not None:
        if once in _warned:
            return
        _warned.add(once)
    print(f"nnspec: {message}", file=sys.stderr, flush=True)


# ---- where ---------------------------------------------------------------------

def root() -> Path:
    """The cache root named by $NNSPEC_CACHE (or ~/.cache/nnspec); not checked."""
    return Path(os.environ.get("NNSPEC_CACHE") or Path.home() / ".cache" / "nnspec").absolute()


@functools.lru_cache(maxsize=None)
def version_tag() -> str:
    """The name of this version's directory (read without importing Numba).
    Machine code compiled at another LLVM optimisation level than Numba's
    default (NUMBA_OPT, which Numba's own cache index does not record) has a
    directory of its own, so an unoptimised step is never loaded by a run
    that expects an optimised one."""
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__
    try:
        numba = version("numba")
    except PackageNotFoundError:
        numba = "none"
    tag = f"v{__version__}-numba{numba}-py{sys.version_info[0]}{sys.version_info[1]}"
    opt = os.environ.get("NUMBA_OPT", "").strip().lower()
    if opt and opt != "3":
        tag += f"-O{''.join(c for c in opt if c.isalnum())[:8]}"
    return tag


def check_dir(path: Path) -> None:
    """Refuse a directory that someone else could write into: one owned by
    another user (but root), or writable by group or others.  Its files are imported
    and its pickles loaded, so whoever can write there runs code as you."""
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return
    if not stat.S_ISDIR(st.st_mode):
        raise CacheError(f"the cache {path} is not a directory: point NNSPEC_CACHE at a "
                         f"directory (or unset it to use ~/.cache/nnspec)")
    mode = stat.S_IMODE(st.st_mode)
    if hasattr(os, "geteuid") and st.st_uid not in (os.geteuid(), 0):     # root: as ssh
        raise CacheError(f"refusing to use the cache {path}: it belongs to another user "
                         f"(uid {st.st_uid}), who could plant code in it; set NNSPEC_CACHE "
                         f"to a directory of your own")
    if os.name == "posix" and mode & 0o022:
        raise CacheError(f"refusing to use the cache {path}: it is writable by others "
                         f"(mode {mode:04o}), who could plant code in it; run "
                         f"'chmod go-w {path}' or set NNSPEC_CACHE to a directory of your own")


def cache_dir() -> Path:
    """This version's cache directory, created (mode 0700) and checked.

    Raises CacheError for a directory someone else could write to (or a
    file).  Where the directory cannot be created or written, a temporary
    one of this process's serves instead (removed at exit), with a warning."""
    top = root()
    d = _dirs.get(str(top))
    if d is not None and d.is_dir():
        return d
    d = top / version_tag()
    check_dir(top)
    check_dir(d)
    try:
        _make_private(d)
        usable = os.access(d, os.W_OK | os.X_OK)
        why = "it is read-only"
    except OSError as e:
        usable, why = False, f"it cannot be created ({e.strerror or e})"
    if usable:
        check_dir(d)           # created by another process between the checks
        _touch(d)
        prune(top)
    else:
        warn(f"the cache {top} is not usable ({why}): compiled code is not kept, "
             f"so every run compiles again", once=f"unusable {top}")
        d = Path(tempfile.mkdtemp(prefix="nnspec-cache-"))
        atexit.register(shutil.rmtree, d, True)
    _dirs[str(top)] = d
    return d


def _make_private(d: Path) -> None:
    """mkdir -p, each directory it creates with mode 0700."""
    missing = []
    while not d.is_dir():
        missing.append(d)
        d = d.parent
    for p in reversed(missing):
        p.mkdir(mode=0o700, exist_ok=True)


def kept(d: Path) -> bool:
    """Whether `d` (from cache_dir) is kept between runs (not a temporary one)."""
    return d.parent == root()


def _touch(d: Path) -> None:
    """Mark the version's directory used (pruning goes by its time)."""
    try:
        os.utime(d)
    except OSError:
        pass


# ---- what: module names --------------------------------------------------------

def _module_file(name: str) -> Path | None:
    """The file of nnspec module `name` ("nnspec.ops.conv"), or None."""
    parts = name.split(".")[1:]
    base = _PACKAGE.joinpath(*parts)
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


_ABS = re.compile(r"^\s*(?:from|import)\s+(nnspec(?:\.\w+)*)", re.M)
_COMPILED = re.compile(r"@kernel|njit|intrinsic|cfunc|ExternalFunction|overload")
_REL = re.compile(r"^\s*from\s+(\.+)(\w+(?:\.\w+)*)?\s+import\s+(\([^)]*\)|[^\n]*)", re.M)


def _imports(path: Path, text: str) -> set[str]:
    """The nnspec modules a file imports (relative imports resolved)."""
    found = set(_ABS.findall(text))
    pkg = ["nnspec"] + list(path.relative_to(_PACKAGE).parent.parts)
    for dots, mod, names in _REL.findall(text):
        base = pkg[:len(pkg) - (len(dots) - 1)]
        if mod:
            found.add(".".join(base + [mod]))
        else:                  # from . import a, b
            found.update(".".join(base + [n]) for n in re.findall(r"\w+", names))
    return found


def _file_digest(path: Path) -> str:
    d = _file_digests.get(path)
    if d is None:
        d = _file_digests[path] = hashlib.sha256(path.read_bytes()).hexdigest()
    return d


def callee_hash(text: str) -> str:
    """A hash of the nnspec sources that code `text` imports, followed through
    their own imports: what its machine code is linked with."""
    return _closure_hash(frozenset(_ABS.findall(text)))


@functools.lru_cache(maxsize=None)
def _closure_hash(modules: frozenset) -> str:
    """Hashes only files that hold compiled code: errors.py, say, is imported
    everywhere, and changing a message must not recompile every kernel."""
    todo, seen = sorted(modules), {}
    while todo:
        f = _module_file(todo.pop())
        if f is None or f in seen:
            continue
        text = f.read_text()
        seen[f] = _file_digest(f) if _COMPILED.search(text) else None
        todo += sorted(_imports(f, text))
    h = hashlib.sha256()
    for f in sorted(f for f in seen if seen[f] is not None):
        h.update(f"{f.relative_to(_PACKAGE)} {seen[f]}\n".encode())
    return h.hexdigest()[:16]


def header(text: str) -> str:
    """The first line of a cached module: what else its machine code depends on."""
    from .. import __version__
    return f"# nnspec {__version__}, {version_tag()}, callees {callee_hash(text)}\n"


def digest_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


# ---- loading -------------------------------------------------------------------

def load(prefix: str, source) -> object:
    """Import generated `source` (text, or a function returning it) as the
    cached module `<prefix>_<sha256 of its text>`, writing it first when it is
    not there, and rewriting it when its file does not match its name."""
    body = source() if callable(source) else source
    text = header(body) + body
    name = f"{prefix}_{digest_of(text)}"
    modname = "nnspec_gen_" + re.sub(r"\W", "_", name)
    if modname in sys.modules:
        return sys.modules[modname]
    path = cache_dir() / f"{name}.py"
    _ensure(path, text)
    # run the text checked against the name, never a .pyc Python would prefer
    mod = types.ModuleType(modname)
    mod.__file__ = str(path)
    sys.modules[modname] = mod
    try:
        exec(compile(text, str(path), "exec"), vars(mod))
    except BaseException:
        del sys.modules[modname]
        raise
    _guard(mod)
    return mod


def _ensure(path: Path, text: str) -> None:
    try:
        have = path.read_bytes()
    except FileNotFoundError:
        have = None
    want = text.encode()
    if have == want:
        return
    if have is not None:
        warn(f"{path} does not match its name (truncated or changed): writing it again")
        remove_entry(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(want)
    os.replace(tmp, path)


@contextlib.contextmanager
def compiling(name: str):
    """Held around the first run of cached module `name`, while Numba
    compiles it (or loads it): another process that reaches the same module
    meanwhile (a second worker of a test run, an MPI rank, a second
    `nnspec train` of the spec) waits here, then loads what this one
    compiled from the disk cache instead of compiling it too.  An advisory
    lock (flock) on a file beside the module: the kernel releases it if
    the process dies.  Without a kept cache, or where locks are not
    supported, nothing waits."""
    d = cache_dir()
    fd = None
    if kept(d):
        try:
            import fcntl
            fd = os.open(d / f".{name}.lock", os.O_WRONLY | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except (ImportError, OSError):
            if fd is not None:
                os.close(fd)
            fd = None
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)            # closing releases the lock


def remove_entry(path: Path) -> None:
    """Delete a cached module and Numba's files for it."""
    path.unlink(missing_ok=True)
    pyc = path.parent / "__pycache__"
    for f in pyc.glob(f"{path.stem}.*") if pyc.is_dir() else ():
        f.unlink(missing_ok=True)


# ---- Numba's files ------------------------------------------------------------

def _guard(module) -> None:
    """Give the module's cached Numba functions a cache in this directory's
    __pycache__ (whatever NUMBA_CACHE_DIR says), and them and the kernels of
    the nnspec modules it imports (op modules, optim) caches that rebuild
    entries that fail to load."""
    for m, in_tree in [(module, True)] + [(v, False) for v in vars(module).values()
                                          if type(v) is type(module)
                                          and v.__name__.startswith("nnspec.")]:
        for v in list(vars(m).values()):
            if getattr(getattr(v, "py_func", None), "__module__", None) == m.__name__ \
                    and type(getattr(v, "_cache", None)).__name__ == "FunctionCache":
                v._cache = recovering_cache(v.py_func, in_tree)


def guard_own(module) -> None:
    """Give `module`'s own cached Numba functions the caches `_guard` gives
    them as a step module's imports, when the module is imported.  Every
    process must stamp an entry alike: a precompile worker, or a program run
    by the NumPy interpreter, that reached optim.sgd without a step module's
    guard stamped its entries with Numba's stamp alone, the next step's
    process found the stamp changed, emptied the index and compiled the SGD
    kernels again, and so on in turn (ResNet-50's warm first step: 17 s of
    compiling)."""
    for v in list(vars(module).values()):
        if getattr(getattr(v, "py_func", None), "__module__", None) == module.__name__ \
                and type(getattr(v, "_cache", None)).__name__ == "FunctionCache":
            v._cache = recovering_cache(v.py_func, False)


_classes: dict = {}


def recovering_cache(py_func, in_tree: bool = False):
    """A Numba FunctionCache for `py_func` whose entries, when they fail to
    load (truncated, empty, garbage), are deleted and compiled again with a
    warning, and which says so when it cannot save.  The entries of an nnspec
    module's kernels are stamped with the sources it imports too (a reduction
    kernel calls elementwise.py's index helpers).  `in_tree`: in the
    __pycache__ beside the source, whatever NUMBA_CACHE_DIR says."""
    if not _classes:
        from numba.core.caching import CompileResultCacheImpl, FunctionCache, InTreeCacheLocator

        class _RecoveringCache(FunctionCache):
            def __init__(self, py_func):
                super().__init__(py_func)
                # Numba stamps an entry with its own file's content; a kernel
                # of nnspec also calls kernels of the modules its file imports
                f = Path(inspect.getfile(py_func)).resolve()
                if f.is_relative_to(_PACKAGE):
                    module = ".".join(("nnspec",) + f.relative_to(_PACKAGE).with_suffix("").parts)
                    self._cache_file._source_stamp = (self._cache_file._source_stamp,
                                                      _closure_hash(frozenset([module])))

            def load_overload(self, sig, target_context):
                try:
                    return super().load_overload(sig, target_context)
                except Exception as e:       # noqa: BLE001 (any unreadable entry)
                    module = self._py_func.__module__.removeprefix("nnspec_gen_")
                    warn(f"the compiled code of {module} in {self._cache_path} could not be "
                         f"loaded ({type(e).__name__}: {str(e)[:80]}): compiling it again",
                         once=f"load {self._cache_path} {module}")
                    self.remove()
                    return None

            def save_overload(self, sig, data):
                try:
                    super().save_overload(sig, data)
                except OSError as e:
                    warn(f"could not save compiled code in {self._cache_path} ({e}): "
                         f"it will be compiled again next run", once=f"save {self._cache_path}")

            def remove(self):
                base = self._impl.filename_base
                try:
                    names = os.listdir(self._cache_path)
                except OSError:
                    return
                for f in names:
                    if f == base + ".nbi" or (f.startswith(base + ".") and f.endswith(".nbc")):
                        try:
                            os.unlink(os.path.join(self._cache_path, f))
                        except OSError:
                            pass

        class _InTreeLocator(InTreeCacheLocator):
            def ensure_cache_path(self):     # private again after the cache was removed
                _make_private(Path(self.get_cache_path()))
                super().ensure_cache_path()

        class _InTreeImpl(CompileResultCacheImpl):
            _locator_classes = [_InTreeLocator]

        class _InTreeCache(_RecoveringCache):
            _impl_class = _InTreeImpl

        _classes.update({False: _RecoveringCache, True: _InTreeCache})
    return _classes[in_tree](py_func)


# ---- housekeeping --------------------------------------------------------------

_VERSION_DIR = re.compile(r"^v[\w.+]+-numba[\w.+]+-py\d+(-O\w+)?$")
# what earlier versions kept directly under the root (the parser's grammar too)
_LEGACY = re.compile(r"^(step_|loop).*\.py$|^__pycache__$|^grammar-\w+\.lark\.cache$")


def _entries(top: Path):
    """nnspec's entries directly under the root: version directories and the
    flat layout of earlier versions."""
    try:
        names = sorted(os.listdir(top))
    except OSError:
        return []
    return [top / n for n in names if _VERSION_DIR.match(n) or _LEGACY.match(n)]


def prune(top: Path, now: float | None = None) -> list[Path]:
    """Remove other versions' entries not used for PRUNE_AFTER seconds."""
    now = time.time() if now is None else now
    mine = version_tag()
    gone = []
    for p in _entries(top):
        try:
            old = now - p.stat().st_mtime > PRUNE_AFTER
        except OSError:
            continue
        if p.name != mine and old:
            _remove(p)
            gone.append(p)
    return gone


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def _size(p: Path) -> tuple[int, int]:
    files = [p] if not p.is_dir() else [f for f in p.rglob("*") if f.is_file()]
    return len(files), sum(f.stat().st_size for f in files if f.exists())


def info() -> dict:
    """What the cache holds: its place, this version's modules and bytes, other versions'."""
    top = root()
    out = {"path": str(top), "version": version_tag(), "exists": top.is_dir(),
           "problem": None, "modules": 0, "files": 0, "bytes": 0, "other": []}
    try:
        check_dir(top)
    except CacheError as e:
        out["problem"] = str(e)
        return out
    for p in _entries(top):
        n, size = _size(p)
        if p.name == out["version"]:
            out["modules"] = len(list(p.glob("*.py")))
            out["files"], out["bytes"] = n, size
        else:
            out["other"].append({"name": p.name, "files": n, "bytes": size})
    return out


def clear() -> tuple[int, int]:
    """Remove every entry of every version; returns (files, bytes) removed."""
    top = root()
    check_dir(top)
    files = size = 0
    for p in _entries(top):
        n, s = _size(p)
        _remove(p)
        files, size = files + n, size + s
    _dirs.pop(str(top), None)
    return files, size
