"""The real workloads of `vmcore experiment seeding`: data and programs made from a seed.

Owns (wiring layer): `WORKLOADS` (name -> Workload), `SIZES`, and for each real
workload the code that builds its SOURCE directory (the files that will be mounted with vnodefs)
and the command line that runs it against a mount. Called by vmcore.experiment only.

The programs are not this project's: CPython's own `sqlite3` (the SQLite library) and CPython's
import system over a copy of its standard library. What we write is a small driver script per
workload, stored in SOURCE/bin/ (so it is read through the mount too, and it names the modeled
task's "executable" for the model-side run).

  * `sqlite`: SOURCE/sqlite/app.db, one table `items(id INTEGER PRIMARY KEY, k INTEGER, payload
    BLOB)` with an index on k (k is a seeded permutation of the ids, so the index order is not the
    table order) and a seeded list of lookup keys in SOURCE/bin/sqlite_app.py. The driver opens the
    database read-only and immutable (no journal, no locks, nothing written into the mount), sets
    `PRAGMA mmap_size` when asked (mmap I/O: page faults on the file) or reads with pread, and does
    one point lookup `SELECT ... WHERE k = ?` per key: each touches a scattered index leaf and a
    scattered table leaf. It checks every row it finds and exits 3 if one is wrong or missing.
  * `pyimport`: SOURCE/lib/ holds a copy of a set of standard-library packages and modules (pure
    Python, with their .pyc compiled beside them, plus a few extension modules from lib-dynload,
    which the dynamic loader maps from the mount). The driver, run as `python -S -B`, puts
    {mnt}/lib first on sys.path, imports the set, and exits 4 unless every imported module of the
    set (and every module loaded from any copied file) has its `__file__` inside the mount.

  * `manyfiles`: SOURCE/plugins/ holds 40 packages of small generated modules (1-12 KB of source
    each, 2000 at the default size) with their bytecode; the driver, run as `python -S -B`, imports
    them all in a seeded order (a runtime loading its plugins, as a compiler loads headers): about
    2000 files read, each a few KB. Sources and bytecode are written in shuffled orders, so the
    order on disk is neither the directory order nor the import order. It exits 5 unless every
    module came from the mount.

Sizes (`small` for CI, `default`, `large`): the database size and the number of lookups, and the
number of manyfiles modules (400, 2000, 4000); the pyimport set is the same at every size (it is a
launch: its size is the program's).

Invariants: the same seed and size give byte-identical databases and key lists (so a profile
recorded on one run applies to the next); nothing under SOURCE is written while a workload runs.
Caveats: building the default database (~200 MiB) takes ~10 s of CPU; the library copy ~40 MiB.
"""

from __future__ import annotations

import compileall
import os
import random
import shutil
import sqlite3
import sys
import sysconfig
from dataclasses import dataclass

MIB = 1 << 20

#: size name -> (sqlite database bytes, number of point lookups)
SIZES: dict[str, tuple[int, int]] = {
    "small": (24 * MIB, 250),
    "default": (200 * MIB, 600),
    "large": (800 * MIB, 1500),
}

ROW_PAYLOAD = 400  # bytes per row: ~9 rows per 4 KiB table page

# ---- sqlite -------------------------------------------------------------------------------------------

SQLITE_DRIVER = r'''"""sqlite workload driver (written by vmcore experiment): point lookups on an indexed table."""
import sqlite3, sys
KEYS = {keys!r}
db, io = sys.argv[1], sys.argv[2]
con = sqlite3.connect(f"file:{{db}}?mode=ro&immutable=1", uri=True)
con.execute(f"PRAGMA mmap_size = {{(1 << 31) - 1 if io == 'mmap' else 0}}")
bad = 0
acc = 0
for k in KEYS:
    row = con.execute("SELECT id, k, payload FROM items WHERE k = ?", (k,)).fetchone()
    if (row is None or row[1] != k or len(row[2]) != {plen}
            or int.from_bytes(row[2][:8], "little") != row[0]):
        bad += 1
        continue
    acc = (acc * 31 + row[0]) & 0xFFFFFFFF
con.close()
if bad:
    print(f"sqlite_app: {{bad}} of {{len(KEYS)}} lookups failed", file=sys.stderr)
    sys.exit(3)
print(f"sqlite_app: {{len(KEYS)}} lookups ok, checksum {{acc:08x}}")
'''


def build_sqlite(source: str, size: str, seed: int) -> dict:
    """SOURCE/sqlite/app.db + SOURCE/bin/sqlite_app.py; returns facts about them."""
    db_bytes, nlookups = SIZES[size]
    rows = max(1000, db_bytes // (ROW_PAYLOAD + 60))
    os.makedirs(os.path.join(source, "sqlite"), exist_ok=True)
    os.makedirs(os.path.join(source, "bin"), exist_ok=True)
    path = os.path.join(source, "sqlite", "app.db")
    rnd = random.Random(seed)
    perm = list(range(1, rows + 1))
    rnd.shuffle(perm)
    tmp = path + ".tmp"
    if os.path.exists(tmp):
        os.unlink(tmp)
    con = sqlite3.connect(tmp)
    try:
        con.execute("PRAGMA page_size = 4096")
        con.execute("PRAGMA journal_mode = OFF")
        con.execute("PRAGMA synchronous = OFF")
        con.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, k INTEGER NOT NULL, payload BLOB NOT NULL)")
        batch = 20000
        for lo in range(0, rows, batch):
            hi = min(rows, lo + batch)
            blob = rnd.randbytes((hi - lo) * ROW_PAYLOAD)
            # payload: the row id (8 bytes, checked by the driver) + seeded random bytes
            con.executemany("INSERT INTO items VALUES (?, ?, ?)",
                            ((i + 1, perm[i], (i + 1).to_bytes(8, "little")
                              + blob[(i - lo) * ROW_PAYLOAD + 8:(i - lo + 1) * ROW_PAYLOAD])
                             for i in range(lo, hi)))
        con.execute("CREATE INDEX items_k ON items(k)")
        con.commit()
    finally:
        con.close()
    os.replace(tmp, path)
    keys = rnd.sample(range(1, rows + 1), min(nlookups, rows))
    driver = SQLITE_DRIVER.format(keys=keys, plen=ROW_PAYLOAD)
    with open(os.path.join(source, "bin", "sqlite_app.py"), "w") as fh:
        fh.write(driver)
    return {"db": "sqlite/app.db", "db_bytes": os.path.getsize(path), "rows": rows, "lookups": len(keys)}


# ---- pyimport -----------------------------------------------------------------------------------------

#: standard-library packages and modules copied into SOURCE/lib and imported by the driver
PY_PACKAGES = ("json", "email", "http", "xml", "unittest", "asyncio", "logging", "urllib",
               "concurrent", "collections", "sqlite3", "html", "wsgiref", "xmlrpc",
               "ctypes", "multiprocessing", "dbm", "zoneinfo", "tomllib")
PY_MODULES = ("_pydecimal", "argparse", "calendar", "configparser", "csv", "dataclasses", "datetime",
              "difflib", "fractions", "ftplib", "gettext", "gzip", "imaplib", "inspect", "ipaddress",
              "mailbox", "optparse", "pathlib", "pickle", "pickletools", "plistlib", "pprint",
              "pydoc", "random", "shlex", "shutil", "smtplib", "socket", "ssl", "statistics",
              "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "tokenize",
              "traceback", "typing", "uuid", "zipfile", "decimal", "locale", "selectors", "bisect",
              "heapq", "queue", "base64", "hashlib", "hmac", "secrets", "getopt", "glob", "fnmatch",
              "copy", "struct", "numbers", "contextlib", "weakref", "platform", "sysconfig",
              "ast", "dis", "opcode", "bz2", "lzma", "quopri", "netrc",
              "poplib", "sched", "signal", "socketserver", "stringprep", "timeit", "trace", "tracemalloc",
              "webbrowser", "mimetypes", "colorsys", "filecmp", "fileinput", "graphlib", "pstats",
              "cProfile", "profile", "shelve", "codeop", "code", "cmd", "bdb", "pdb", "doctest")
#: extension modules (lib-dynload) copied too: the dynamic loader mmaps them from the mount
PY_EXTENSIONS = ("_json", "_asyncio", "_elementtree", "pyexpat", "_datetime", "unicodedata", "_socket",
                 "select", "math", "_decimal", "_pickle", "array", "binascii", "_struct", "_csv",
                 "_ctypes", "_bz2", "_lzma", "_hashlib", "_ssl", "_zoneinfo", "_random", "_bisect",
                 "_heapq", "_queue", "_uuid", "_contextvars", "_statistics", "_multiprocessing",
                 "_posixsubprocess", "_sqlite3", "zlib", "fcntl", "_blake2", "_sha512", "_md5",
                 "_sha1", "_sha256", "_sha3", "_lsprof", "_opcode", "_typing", "resource", "grp")

PY_DRIVER = r'''"""pyimport workload driver (written by vmcore experiment): imports a set of stdlib modules
from the mount and fails loudly unless they really came from there."""
import os, sys
before = set(sys.modules)
lib = os.path.join(sys.argv[1], "lib")
sys.path[:0] = [lib]
NAMES = {names!r}
prefix = os.path.realpath(lib) + os.sep
bad = [n + " was loaded before the path was set" for n in NAMES if n in before]
loaded = []
for name in NAMES:
    __import__(name)
    loaded.append(sys.modules[name])
bad += [m.__name__ + " from " + str(getattr(m, "__file__", None)) for m in loaded
        if not os.path.realpath(str(getattr(m, "__file__", None) or "?")).startswith(prefix)]
copied = set({copied!r})
for name, m in list(sys.modules.items()):
    top = name.split(".")[0]
    f = getattr(m, "__file__", None)
    if name not in before and top in copied and f and not os.path.realpath(f).startswith(prefix):
        bad.append(name + " from " + f)
if bad:
    print("pyimport_app: NOT imported from the mount: " + ", ".join(bad[:10]), file=sys.stderr)
    sys.exit(4)
n = sum(1 for m in list(sys.modules.values())
        if os.path.realpath(str(getattr(m, "__file__", None) or "?")).startswith(prefix))
print(f"pyimport_app: {{len(NAMES)}} imports ok, {{n}} modules loaded from {{lib}}")
'''


def _copy_tree(src: str, dst: str) -> None:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "test", "tests", "idle_test",
                                                            "*.exe"), dirs_exist_ok=True)


def build_pyimport(source: str, size: str, seed: int) -> dict:
    """SOURCE/lib/ (copied stdlib subset + compiled .pyc) and SOURCE/bin/pyimport_app.py."""
    stdlib = sysconfig.get_paths()["stdlib"]
    dynload = os.path.join(stdlib, "lib-dynload")
    lib = os.path.join(source, "lib")
    os.makedirs(lib, exist_ok=True)
    os.makedirs(os.path.join(source, "bin"), exist_ok=True)
    names: list[str] = []
    copied: list[str] = []
    for pkg in PY_PACKAGES:
        src = os.path.join(stdlib, pkg)
        if os.path.isdir(src):
            _copy_tree(src, os.path.join(lib, pkg))
            names.append(pkg)
            copied.append(pkg)
    for mod in PY_MODULES:
        src = os.path.join(stdlib, mod + ".py")
        if os.path.isfile(src):
            shutil.copy2(src, os.path.join(lib, mod + ".py"))
            names.append(mod)
            copied.append(mod)
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    exts = []
    for ext in PY_EXTENSIONS:
        if ext in sys.builtin_module_names:
            continue
        src = os.path.join(dynload, ext + suffix)
        if os.path.isfile(src):
            shutil.copy2(src, os.path.join(lib, ext + suffix))
            exts.append(ext)
            copied.append(ext)
    # submodules that make the launch realistic (the packages' __init__ alone import little)
    names += [n for n in ("json.decoder", "email.message", "email.parser", "email.mime.text",
                          "http.client", "http.server", "xml.etree.ElementTree", "xml.dom.minidom",
                          "unittest.mock", "asyncio.subprocess", "logging.handlers", "urllib.request",
                          "concurrent.futures", "sqlite3.dbapi2", "wsgiref.simple_server",
                          "xmlrpc.client", "ctypes.util", "multiprocessing.pool", "zoneinfo")
              if n.split(".")[0] in copied]
    # import order: seeded shuffle of the top-level names (a different seed is a different app)
    rnd = random.Random(seed)
    rnd.shuffle(names)
    # bytecode beside the sources (an installed application has it); the driver runs with -B
    compileall.compile_dir(lib, quiet=2, workers=1, legacy=False)
    with open(os.path.join(source, "bin", "pyimport_app.py"), "w") as fh:
        fh.write(PY_DRIVER.format(names=names, copied=sorted(copied)))
    nfiles = nbytes = 0
    for root, _dirs, files in os.walk(lib):
        for f in files:
            nfiles += 1
            nbytes += os.path.getsize(os.path.join(root, f))
    return {"lib": "lib", "imports": len(names), "extensions": len(exts), "files": nfiles, "bytes": nbytes}


# ---- manyfiles ----------------------------------------------------------------------------------------

#: size name -> number of plugin modules of the manyfiles launch
MANYFILES_COUNT = {"small": 400, "default": 2000, "large": 4000}
MANYFILES_PACKAGES = 40

MANY_DRIVER = r'''"""manyfiles workload driver (written by vmcore experiment): a runtime whose launch loads
its {n} small plugin modules (compiled bytecode) from the mount, in its own dependency order."""
import importlib, os, sys
root = os.path.join(sys.argv[1], "plugins")
sys.path[:0] = [root]
ORDER = {order!r}
prefix = os.path.realpath(root) + os.sep
bad = []
acc = 0
for name in ORDER:
    m = importlib.import_module(name)
    f = os.path.realpath(str(getattr(m, "__file__", None) or "?"))
    if not f.startswith(prefix) or getattr(m, "NAME", None) != name:
        bad.append(name)
        continue
    acc = (acc * 31 + m.VALUE) & 0xFFFFFFFF
if bad:
    print("manyfiles_app: NOT loaded from the mount (or wrong module): " + ", ".join(bad[:10]), file=sys.stderr)
    sys.exit(5)
print(f"manyfiles_app: {{len(ORDER)}} modules ok, checksum {{acc:08x}}")
'''


def _plugin_source(rnd: random.Random, name: str, deps: list[str]) -> str:
    """A small module (1-12 KB of source): a constant, a table, a few functions, imports of deps."""
    lines = [f'"""plugin {name} (generated)."""']
    lines += [f"import {d}" for d in deps]
    lines.append(f"NAME = {name!r}")
    lines.append(f"VALUE = {rnd.randrange(1 << 30)}")
    target = rnd.randint(1000, 12000)
    k = 0
    while sum(len(x) + 1 for x in lines) < target:
        if k % 3 == 0:
            vals = ", ".join(str(rnd.randrange(1 << 20)) for _ in range(rnd.randint(8, 40)))
            lines.append(f"TABLE_{k} = ({vals},)")
        else:
            a, b = rnd.randrange(1, 97), rnd.randrange(1, 89)
            lines.append(f"def f_{k}(x, y={b}):\n    \"\"\"step {k} of {name}.\"\"\"\n"
                         f"    return (x * {a} + y) % {rnd.randrange(1000, 100000)}")
        k += 1
    return "\n".join(lines) + "\n"


def build_manyfiles(source: str, size: str, seed: int) -> dict:
    """SOURCE/plugins/pNN/mMMMM.py (+ __pycache__ bytecode, written in a shuffled order so the
    on-disk order differs from the import order) and SOURCE/bin/manyfiles_app.py."""
    import importlib.util
    import py_compile

    n = MANYFILES_COUNT[size]
    rnd = random.Random(seed * 7919 + 11)
    root = os.path.join(source, "plugins")
    os.makedirs(os.path.join(source, "bin"), exist_ok=True)
    names = [f"p{i % MANYFILES_PACKAGES:02d}.m{i:04d}" for i in range(n)]
    order = names[:]
    rnd.shuffle(order)  # the launch's import order
    pos = {nm: i for i, nm in enumerate(order)}
    files = []
    for pkg in sorted({nm.split(".")[0] for nm in names}):
        d = os.path.join(root, pkg)
        os.makedirs(d, exist_ok=True)
        files.append((os.path.join(d, "__init__.py"), f'"""plugin package {pkg}."""\n'))
    for nm in names:
        earlier = [o for o in order[:pos[nm]][-50:]]  # deps already loaded by then: no extra I/O order
        deps = rnd.sample(earlier, min(len(earlier), rnd.randint(0, 3)))
        pkg, mod = nm.split(".")
        files.append((os.path.join(root, pkg, mod + ".py"), _plugin_source(rnd, nm, deps)))
    rnd.shuffle(files)  # creation order != directory order != import order
    for path, text in files:
        with open(path, "w") as fh:
            fh.write(text)
    compile_order = [p for p, _t in files]
    rnd.shuffle(compile_order)
    for path in compile_order:  # bytecode beside the sources, in yet another order
        py_compile.compile(path, cfile=importlib.util.cache_from_source(path), doraise=True)
    with open(os.path.join(source, "bin", "manyfiles_app.py"), "w") as fh:
        fh.write(MANY_DRIVER.format(n=n, order=order))
    os.sync()  # allocate the files' blocks now, so their extents are real
    nfiles = nbytes = 0
    for dirpath, _dirs, fs in os.walk(root):
        for f in fs:
            nfiles += 1
            nbytes += os.path.getsize(os.path.join(dirpath, f))
    return {"plugins": n, "packages": MANYFILES_PACKAGES, "files": nfiles, "bytes": nbytes}


# ---- the table ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    build: object  # (source, size, seed) -> dict
    executable: str  # the driver, relative to SOURCE (the modeled task's executable too)

    def command(self, python: str, options: dict) -> list[str]:
        """The command line for `vnodefs run ... -- COMMAND` ({mnt} is the mount point)."""
        if self.name == "sqlite":
            return [python, "-S", "-B", "{mnt}/" + self.executable, "{mnt}/sqlite/app.db",
                    options.get("sqlite_io", "mmap")]
        return [python, "-S", "-B", "{mnt}/" + self.executable, "{mnt}"]


WORKLOADS: dict[str, Workload] = {
    "sqlite": Workload("sqlite", "Python's sqlite3: point lookups on an indexed table in the mount",
                       build_sqlite, "bin/sqlite_app.py"),
    "pyimport": Workload("pyimport", "python -S -B importing a stdlib set from {mnt}/lib",
                         build_pyimport, "bin/pyimport_app.py"),
    "manyfiles": Workload("manyfiles", "python -S -B loading ~2000 small plugin modules from {mnt}/plugins",
                          build_manyfiles, "bin/manyfiles_app.py"),
}

#: the model-side run (replays the real workloads' cold traces through vmcore)
MODEL = "model"
ALL_NAMES = tuple(WORKLOADS) + (MODEL,)


def child_env() -> dict:
    """The environment of the workload commands: no user site, no bytecode writes, no inherited
    PYTHONPATH / PYTHONHOME / PYTHONSTARTUP that could import from elsewhere."""
    env = dict(os.environ)
    for k in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH"):
        env.pop(k, None)
    env["PYTHONNOUSERSITE"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env
