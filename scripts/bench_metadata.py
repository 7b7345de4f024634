#!/usr/bin/env python3
"""Benchmark what real programs pay per operation through vnodefs, side by side with the host.

Every row runs the same work on the host directory and on a default `vnodefs mount` of it (page
mode, tracing on), warm (everything already read once through each), alternating host / vnodefs,
and prints the median of --reps runs, the ratio host time / vnodefs time (1.0 = host speed) and
the vnodefs daemon's CPU time per operation (psutil):

  small files     open + read + close of each of --files small files (1-12 KB)
  stat            os.stat of each of those files
  failed lookup   os.stat of names that do not exist (what PATH / import / git searches do)
  grep -r         `grep -r -l shadow` over the small files
  git log -p      `git log -p -n 400` on a generated --commits-commit repository (needs git)
  python import   a fresh `python3 -c "import numpy"` with numpy's package tree copied into the
                  directory (needs numpy)

This is a measurement, not a test: nothing is asserted. Progress goes to stderr.

    .venv/bin/python scripts/bench_metadata.py [--reps N] [--files N] [--commits N] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vnodefs.mount import mount  # noqa: E402


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def make_tree(root: str, nfiles: int) -> list[str]:
    rng = random.Random(5)
    words = ["shadow", "object", "pager", "vnode", "page", "fault", "map", "entry", "copy", "task"]
    rels = []
    for i in range(nfiles):
        d = os.path.join(root, "tree", f"d{i // 100:02d}")
        os.makedirs(d, exist_ok=True)
        rel = os.path.join("tree", f"d{i // 100:02d}", f"f{i:04d}.txt")
        n = rng.randrange(1000, 12000)
        text = " ".join(rng.choice(words) for _ in range(n // 6))
        with open(os.path.join(root, rel), "w") as fh:
            fh.write(text[:n])
        rels.append(rel)
    return rels


def make_repo(root: str, commits: int) -> str | None:
    if shutil.which("git") is None:
        return None
    repo = os.path.join(root, "repo")
    os.makedirs(repo)
    env = dict(os.environ, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@x", GIT_COMMITTER_NAME="b",
               GIT_COMMITTER_EMAIL="b@x")
    run = lambda *a: subprocess.run(["git", *a], cwd=repo, env=env, check=True, capture_output=True)  # noqa: E731
    run("init", "-q")
    rng = random.Random(9)
    files = [f"src/m{i:03d}.c" for i in range(60)]
    os.makedirs(os.path.join(repo, "src"))
    for f in files:
        with open(os.path.join(repo, f), "w") as fh:
            fh.write("\n".join(f"int v{j} = {j};" for j in range(200)) + "\n")
    run("add", "-A")
    run("commit", "-q", "-m", "initial")
    for c in range(commits):
        for f in rng.sample(files, 3):
            p = os.path.join(repo, f)
            with open(p) as fh:
                lines = fh.read().splitlines()
            lines[rng.randrange(len(lines))] = f"int changed{c} = {rng.randrange(10**6)};"
            with open(p, "w") as fh:
                fh.write("\n".join(lines) + "\n")
        run("commit", "-q", "-a", "-m", f"change {c}")
    run("gc", "-q")
    return "repo"


def copy_numpy(root: str) -> str | None:
    try:
        import numpy
    except ImportError:
        return None
    src = os.path.dirname(numpy.__file__)
    dst = os.path.join(root, "pkgs", "numpy")
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("tests", "__pycache__"))
    libs = os.path.join(os.path.dirname(src), "numpy.libs")
    if os.path.isdir(libs):
        shutil.copytree(libs, os.path.join(root, "pkgs", "numpy.libs"))
    return "pkgs"


def work(kind: str, base: str, ctx: dict) -> int:
    """Run one row's work under `base`; return its operation count."""
    rels = ctx["rels"]
    if kind == "small files":
        for r in rels:
            fd = os.open(os.path.join(base, r), os.O_RDONLY)
            os.read(fd, 65536)
            os.close(fd)
        return len(rels)
    if kind == "stat":
        for r in rels:
            os.stat(os.path.join(base, r))
        return len(rels)
    if kind == "failed lookup":
        for r in rels:
            try:
                os.stat(os.path.join(base, r + ".missing"))
            except FileNotFoundError:
                pass
        return len(rels)
    if kind == "grep -r":
        subprocess.run(["grep", "-r", "-l", "shadow", os.path.join(base, "tree")], stdout=subprocess.DEVNULL,
                       check=True)
        return 1
    if kind == "git log -p":
        subprocess.run(["git", "-C", os.path.join(base, ctx["repo"]), "log", "-p", "-n", "400"],
                       stdout=subprocess.DEVNULL, check=True,
                       env=dict(os.environ, GIT_CONFIG_NOSYSTEM="1", HOME=base))
        return 1
    if kind == "python import":
        subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import numpy",
                        os.path.join(base, ctx["pkgs"])], check=True,
                       env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
        return 1
    raise ValueError(kind)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--reps", type=int, default=5, help="runs per row and side (median reported)")
    ap.add_argument("--files", type=int, default=2000, help="small files in the tree (default 2000)")
    ap.add_argument("--commits", type=int, default=1200, help="commits of the generated repository")
    ap.add_argument("--dir", default=None, help="where to build the data (default: a temp dir)")
    ap.add_argument("--mount-option", action="append", default=[], metavar="K=V",
                    help="extra vnodefs.mount.mount() keyword (e.g. cache=direct); repeatable")
    args = ap.parse_args(argv)
    top = tempfile.mkdtemp(prefix="vnodefs-bench-meta-", dir=args.dir)
    m = None
    try:
        src, mnt = os.path.join(top, "src"), os.path.join(top, "mnt")
        os.makedirs(src)
        os.makedirs(mnt)
        log(f"making {args.files} small files")
        ctx = {"rels": make_tree(src, args.files)}
        log(f"making a {args.commits}-commit git repository")
        ctx["repo"] = make_repo(src, args.commits)
        ctx["pkgs"] = copy_numpy(src)
        kw = dict(kv.split("=", 1) for kv in args.mount_option)
        m = mount(src, mnt, trace=os.path.join(top, "t.vtrace"), **kw)
        daemon = psutil.Process(m.pid)
        rows = ["small files", "stat", "failed lookup", "grep -r"]
        rows += ["git log -p"] if ctx["repo"] else []
        rows += ["python import"] if ctx["pkgs"] else []
        print(f"vnodefs vs host, warm, median of {args.reps} ({m.cache} mode, tracing on)")
        print(f"{'row':<15} {'host':>11} {'vnodefs':>11} {'ratio':>6} {'daemon CPU/op':>14}")
        for kind in rows:
            for base in (src, mnt):
                work(kind, base, ctx)  # warm
            host, vfs, cpu = [], [], []
            for _ in range(args.reps):
                t = time.perf_counter()
                n = work(kind, src, ctx)
                host.append(time.perf_counter() - t)
                c0 = sum(daemon.cpu_times()[:2])
                t = time.perf_counter()
                work(kind, mnt, ctx)
                vfs.append(time.perf_counter() - t)
                cpu.append((sum(daemon.cpu_times()[:2]) - c0) / n)
            h, v = statistics.median(host), statistics.median(vfs)
            unit = "us/op" if n > 1 else "s"
            fh, fv = (h / n * 1e6, v / n * 1e6) if n > 1 else (h, v)
            c = statistics.median(cpu)
            print(f"{kind:<15} {fh:>8.2f} {unit[:2]:<2} {fv:>8.2f} {unit[:2]:<2} {h / v:>5.2f}x "
                  f"{c * 1e6:>9.1f} us" if n > 1 else
                  f"{kind:<15} {fh:>9.3f} s {fv:>9.3f} s {h / v:>5.2f}x {c * 1e3:>9.1f} ms", flush=True)
    finally:
        if m is not None:
            m.umount()
        shutil.rmtree(top, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
