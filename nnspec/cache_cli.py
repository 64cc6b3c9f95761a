"""`nnspec cache info | clear`: what the disk cache of compiled steps holds,
and emptying it (backend/cache.py describes the layout).

    $ nnspec cache info
    cache      /home/me/.cache/nnspec
    version    v0.1.0-numba0.68.1-py311: 12 modules, 96 files, 4.1 MB
    other      v0.0.9-numba0.60.0-py311: 40 files, 2.0 MB (removed a day after its last use)
"""
from __future__ import annotations


def add_parser(sub) -> None:
    c = sub.add_parser("cache", help="show or empty the cache of compiled steps")
    c.add_argument("action", choices=("info", "clear"),
                   help="info: where it is and what it holds; clear: remove every entry")
    c.set_defaults(func=cmd_cache)


def cmd_cache(args) -> int:
    from .backend import cache
    if args.action == "clear":
        files, size = cache.clear()
        print(f"removed {files} files ({_mb(size)}) from {cache.root()}")
        return 0
    i = cache.info()
    print(f"cache      {i['path']}" + ("" if i["exists"] else " (not created yet)"))
    if i["problem"]:
        print(f"problem    {i['problem']}")
        return 1
    print(f"version    {i['version']}: {i['modules']} modules, {i['files']} files, "
          f"{_mb(i['bytes'])}")
    for o in i["other"]:
        print(f"other      {o['name']}: {o['files']} files, {_mb(o['bytes'])} "
              f"(removed a day after its last use)")
    return 0


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
