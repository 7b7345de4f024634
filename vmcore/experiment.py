"""`vmcore experiment seeding`: the project's main job. Cold vs profile-seeded launches of real
programs over vnodefs, and the same launches replayed through the vmcore model.

Owns (wiring layer): `add_experiment_parser(subparsers)` and `run_experiment(args)`
for vmcore.cli, `SeedingExperiment` (the run loop), `summarize_runs`, `format_table`, `plot`.
May import vnodefs and swapd (tests/test_architecture.py treats vmcore.experiment* as wiring), but
drives the real-program side ONLY through the `vnodefs run` command line (a subprocess of
`python -m vnodefs run ...`): `--json` for the figures, `--profile APP --var DIR --prefetch S` for
recording (first run of APP) and seeding (later runs).

Flow, in a work directory (default a fresh temp dir, removed at the end unless --keep):
  1. per real workload (vmcore.experiment_workloads: `sqlite`, `pyimport`, `manyfiles`) build SOURCE from the
     seed, then K cold and K seeded launches, interleaved (cold 1, seeded 1, cold 2, ...), each a
     fresh vnodefs mount (`vnodefs run` mounts and unmounts) with the host's page cache for SOURCE's
     files dropped first (posix_fadvise DONTNEED on every file: no root needed). Cold run 1 is the
     run that records the launch profile (`--profile APP`, no profile yet): an unseeded launch;
     cold runs 2..K are plain `vnodefs run`s; seeded runs are `--profile APP --prefetch S`.
  2. `model`: the vnodefs trace of each real workload's first cold run is expanded into page reads
     (trace order) and replayed through a lab Kernel(files=SOURCE, var=..., latency=...): one modeled
     task maps the same files (private, read-only) and touches the traced pages in trace order. Its
     first launch records the launch profile (vmcore.lab_profiles), the later cold launches run with
     seed="off", the seeded ones with seed="eager". Each launch is a fresh kernel (a reboot: nothing
     resident), so its own direct-mode mount's trace holds every model page-in. Results are keyed
     `model-sqlite`, `model-pyimport`.
  3. the table (stdout), JSON (--json) and a PNG, SVG or PDF plot (--plot).

JSON: {"experiment": "seeding", "config": {...}, "workloads": {NAME: {"cold": [RUN...], "seeded":
[RUN...], "info": {...}}}, "summary": {NAME: {"cold": {MEDIANS}, "seeded": {MEDIANS}, "ratios":
{"wall_s": cold/seeded, ...}, "major_faults_reduction": 1 - seeded/cold}}}; every RUN has wall_s,
major_faults, requests, bytes_read (and whatever `vnodefs run --json` gave), seeded runs `prefetch`
{used, wasted, late, ...} in pages.

Exit status: 0 done; 2 bad input (one line); 1 a run failed (its log's last lines are shown);
130 interrupted (the runs that finished are still reported: the table, and --json with
"interrupted": true; no plot). When the work dir is removed at the end (no --keep), the JSON holds
no path into it (trace paths are null). Teardown in every case: no mount, no temp dir left (try/finally; Ctrl-C sends
SIGTERM to the running `vnodefs run`, which unmounts; a mount still left whose source is under the
work dir is lazily unmounted).

Floor runs: each workload (and each model replay) also runs K times on a mount with no device
model (`--latency none`, host cache dropped, fresh mount): what the launch costs without disk
time. The summary gives `penalty_removed` = (cold - seeded) / (cold - floor) of the median wall
times, and device seek / rotation / busy time cold vs seeded (the command's and the prefetcher's
requests together: they share the mount's one device).

Caveats: wall time is the command's (from start to exit, as `vnodefs run` measures it; mounting
is not included). The prefetcher and the command share the mount's one modelled device and its
queue (vnodefs.devqueue), so seeding never makes disk time free.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from vmcore.errors import InvalidArgument, VMError
from vmcore.experiment_workloads import ALL_NAMES, MODEL, SIZES, WORKLOADS, child_env
from vnodefs.seeding import DEFAULT_STRATEGY

PROG = "vmcore experiment"
PAGE = 4096
RUN_KEYS = ("wall_s", "major_faults", "requests", "bytes_read")
#: device time per run (seconds): seek, rotational latency, busy (command + prefetcher)
DEVICE_KEYS = ("device_seek_s", "device_rotation_s", "device_busy_s")
PREFETCH_KEYS = ("used", "wasted", "late")
#: disk needed in the work dir, by size (database + library copy + traces, rounded up)
DISK_NEEDED = {"small": 90 << 20, "default": 360 << 20, "large": 1200 << 20}


class ExperimentError(VMError):
    """A run failed (the message names it and shows its log's tail)."""


# ---- helpers ------------------------------------------------------------------------------------------

def drop_host_cache(source: str) -> int:
    """posix_fadvise(DONTNEED) on every regular file under source; returns how many were dropped.
    (Unprivileged; drops clean pages only, which is all SOURCE has: nothing writes there.)"""
    n = 0
    for root, _dirs, files in os.walk(source):
        for f in files:
            p = os.path.join(root, f)
            try:
                fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                n += 1
            except OSError:
                pass
            finally:
                os.close(fd)
    return n


def our_mounts(work: str) -> list[str]:
    """Mount points of vnodefs mounts whose source lies under `work`."""
    out = []
    try:
        with open("/proc/mounts") as fh:
            for ln in fh:
                parts = ln.split()
                if len(parts) >= 3 and parts[0].startswith("vnodefs:") and parts[2].startswith("fuse"):
                    src = parts[0][len("vnodefs:"):].replace("\\040", " ")
                    if src == work or src.startswith(work.rstrip(os.sep) + os.sep):
                        out.append(parts[1].replace("\\040", " "))
    except OSError:
        pass
    return out


def _lazy_unmount(mnt: str) -> None:
    for args in (["fusermount3", "-u", mnt], ["fusermount3", "-u", "-z", mnt], ["umount", "-l", mnt]):
        with contextlib.suppress(OSError):
            if subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
                return


def vnodefs_has_profile(python: str = sys.executable) -> bool:
    """Does `vnodefs run` accept --profile (the real-program seeding of vnodefs.seeding)?"""
    try:
        out = subprocess.run([python, "-m", "vnodefs", "run", "--help"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--profile" in out


def _tail(path: str, n: int = 8) -> str:
    try:
        with open(path, errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return ""
    return "\n".join("    " + ln for ln in lines[-n:])


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _sum2(a, b):
    return None if a is None or b is None else a + b


def _ratio(a, b):
    if a is None or b is None:
        return None
    if b == 0:
        return None if a == 0 else float("inf")
    return a / b


# ---- progress -----------------------------------------------------------------------------------------

class Progress:
    """One line per run on stderr: `[#####...............]  5/20 sqlite seeded 2/3: ...` (the bar
    is vmcore.report's, the one vmcore replay's rich bar draws)."""

    def __init__(self, total: int, stream=None, quiet: bool = False):
        self.total, self.done, self.t0 = max(total, 1), 0, time.monotonic()
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet

    def say(self, text: str) -> None:
        if not self.quiet:
            el = time.monotonic() - self.t0
            self.stream.write(f"{PROG}: {el:6.1f}s  {text}\n")
            self.stream.flush()

    def run_done(self, text: str) -> None:
        from vmcore.report import bar_text

        self.done += 1
        done = min(self.done, self.total)
        self.say(f"{bar_text(done, self.total, 20)} {done:>2}/{self.total} {text}")


# ---- the experiment -----------------------------------------------------------------------------------

@contextlib.contextmanager
def _sigint_deferred():
    """Hold a SIGINT that arrives inside the block until it ends (then raise KeyboardInterrupt), so
    a child started in the block is always recorded before the interrupt unwinds (main thread
    only; elsewhere a no-op)."""
    got = []
    try:
        old = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if got:
        raise KeyboardInterrupt


class SeedingExperiment:
    def __init__(self, workloads, runs=3, latency="hdd", size="default", seed=1, work=None,
                 keep=False, cache="page", prefetch=None, sqlite_io="read", python=None,
                 progress: Progress | None = None, seeded_real: bool | None = None):
        self.names = list(workloads)
        self.runs = runs
        self.latency = latency
        self.size = size
        self.seed = seed
        self.cache = cache
        self.prefetch = prefetch or DEFAULT_STRATEGY
        self.sqlite_io = sqlite_io
        self.python = python or sys.executable
        self.keep = keep
        self.user_work = work
        self.work = None
        self.progress = progress or Progress(1)
        self.seeded_real = seeded_real
        self.results: dict[str, dict] = {}
        self.info: dict[str, dict] = {}
        self.notes: list[str] = []
        self._child: subprocess.Popen | None = None

    # -- setup / teardown --
    def _make_work(self) -> None:
        if self.user_work is not None:
            w = os.path.abspath(self.user_work)
            if os.path.exists(w) and (not os.path.isdir(w) or os.listdir(w)):
                raise InvalidArgument(f"--work {self.user_work}: not an empty directory")
            os.makedirs(w, exist_ok=True)
            self._made_work = not self.keep
            self.work = w
        else:
            self.work = tempfile.mkdtemp(prefix="vmcore-exp-")
            self._made_work = not self.keep
        need = DISK_NEEDED[self.size]
        st = os.statvfs(self.work)
        free = st.f_bavail * st.f_frsize
        if free < need:
            raise InvalidArgument(f"work dir {self.work}: {free >> 20} MiB free, size {self.size} needs "
                                  f"about {need >> 20} MiB")
        os.makedirs(os.path.join(self.work, "tmp"), exist_ok=True)

    def teardown(self) -> None:
        if self._child is not None and self._child.poll() is None:
            with contextlib.suppress(OSError):
                self._child.send_signal(signal.SIGTERM)  # vnodefs run forwards it, then unmounts
            try:
                self._child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._child.kill()
                self._child.wait()
        self._child = None
        if self.work is None:
            return
        for mnt in our_mounts(self.work):
            _lazy_unmount(mnt)
        if getattr(self, "_made_work", False):
            shutil.rmtree(self.work, ignore_errors=True)
            if os.path.exists(self.work):  # a busy mount point under it: one more try after unmount
                time.sleep(0.5)
                for mnt in our_mounts(self.work):
                    _lazy_unmount(mnt)
                shutil.rmtree(self.work, ignore_errors=True)

    # -- one real run through `vnodefs run` --
    def real_run(self, name: str, mode: str, i: int, record: bool = False) -> dict:
        wl = WORKLOADS[name]
        src = os.path.join(self.work, name, "src")
        tag = f"{name}-{mode}-{i}"
        runs_dir = os.path.join(self.work, name, "runs")
        os.makedirs(runs_dir, exist_ok=True)
        trace = os.path.join(runs_dir, tag + ".vtrace")
        out = os.path.join(runs_dir, tag + ".json")
        log = os.path.join(runs_dir, tag + ".log")
        latency = "none" if mode == "floor" else self.latency
        argv = [self.python, "-m", "vnodefs", "run", src, "--latency", latency, "--cache", self.cache,
                "--trace", trace, "--json", out, "--quiet"]
        if mode == "seeded" or record:
            argv += ["--profile", name, "--var", os.path.join(self.work, name, "var"),
                     "--prefetch", self.prefetch if mode == "seeded" else "off"]
        argv += ["--"] + wl.command(self.python, {"sqlite_io": self.sqlite_io})
        drop_host_cache(src)
        env = child_env()
        env["TMPDIR"] = os.path.join(self.work, "tmp")  # the run's mount point lives in the work dir
        with open(log, "w") as lf:
            lf.write(" ".join(argv) + "\n")
            lf.flush()
            with _sigint_deferred():  # a Ctrl-C now would orphan a child teardown cannot see
                self._child = subprocess.Popen(argv, stdout=lf, stderr=lf, stdin=subprocess.DEVNULL, env=env,
                                               cwd=runs_dir, start_new_session=True)
            rc = self._child.wait()
            self._child = None
        try:
            with open(out) as fh:
                res = json.load(fh)
        except (OSError, ValueError):
            raise ExperimentError(f"{tag}: vnodefs run exited {rc} without a JSON result; its log:\n"
                                  f"{_tail(log)}") from None
        if rc != 0 or res.get("exit_status") != 0:
            raise ExperimentError(f"{tag}: the workload exited {res.get('exit_status', rc)}; its log:\n{_tail(log)}")
        for k in RUN_KEYS:
            res.setdefault(k, 0)
        pf = res.get("prefetch")
        if isinstance(pf, dict) and isinstance(pf.get("landed_by_file"), dict):
            pf["landed_files"] = len(pf.pop("landed_by_file"))  # keep the JSON small
        res["mode"] = mode
        res["run"] = i
        res["recorded_profile"] = bool(record)
        res.update(device_figures(res))
        if mode == "seeded":
            pf = res.get("prefetch")
            if not isinstance(pf, dict) or not all(k in pf for k in PREFETCH_KEYS):
                raise ExperimentError(f"{tag}: vnodefs run --profile gave no prefetch used/wasted/late; "
                                      f"its log:\n{_tail(log)}")
        return res

    # -- one model launch --
    def model_run(self, name: str, mode: str, i: int, plan) -> dict:
        from vmcore import Kernel
        from vnodefs import trace as vtrace

        wl = WORKLOADS[name]
        src = os.path.join(self.work, name, "src")
        runs_dir = os.path.join(self.work, "model-" + name, "runs")
        os.makedirs(runs_dir, exist_ok=True)
        trace = os.path.join(runs_dir, f"model-{name}-{mode}-{i}.vtrace")
        var = os.path.join(self.work, "model-" + name, "var")
        files, seq, memory = plan
        drop_host_cache(src)
        old_tmp = tempfile.tempdir
        tempfile.tempdir = os.path.join(self.work, "tmp")  # the kernel's mount point too
        try:
            latency = "none" if mode == "floor" else self.latency
            with Kernel(memory=memory, files=src, var=var if mode != "floor" else var + "-floor", latency=latency,
                        trace=trace) as k:
                before = k.vm_stat()
                t0 = time.monotonic()
                t = k.task_create(executable=wl.executable, seed="eager" if mode == "seeded" else "off")
                bases = {f: t.vm_map_file(f, prot="r", shared=False) for f in files}
                for fi, page in seq:
                    t.read(bases[files[fi]] + page * PAGE, 1)
                wall = time.monotonic() - t0
                after = k.vm_stat()
                score = t.prefetch_score()
                recorded = getattr(t, "seed_mode", "off") == "off" and k.profiles.rec.recording(t)
                t.terminate()
        finally:
            tempfile.tempdir = old_tmp
        tr = vtrace.load(trace)
        reads = tr.records[tr.op_mask("read")]
        d = {key: int(after.get(key, 0) - before.get(key, 0)) for key in
             ("Hard faults", "Soft faults", "Pageins", "Pagein requests", "Zero fill pages")
             if key in after}
        from vnodefs.devstats import device_breakdown

        dev = device_breakdown(reads)
        res = {"mode": mode, "run": i, "wall_s": wall, "major_faults": d.get("Hard faults", 0),
               "requests": int(reads.size), "bytes_read": int(max(0, reads["result"].clip(min=0).sum())),
               "pages_touched": len(seq), "vm_stat_delta": d, "trace": trace,
               "recorded_profile": bool(recorded), "memory": memory,
               "device_seek_s": dev["seek_s"], "device_rotation_s": dev["rotation_s"],
               "device_busy_s": dev["busy_s"], "device_model": tr.header.get("device", {}).get("model", "none"),
               "layout": tr.header.get("layout", {}).get("kind", "none")}
        if mode == "seeded":
            res["prefetch"] = {k: int(v) for k, v in score.items()}
        return res

    def model_plan(self, name: str):
        """(files, [(file index, page)], memory) from the first cold run's vnodefs trace."""
        from vnodefs import trace as vtrace

        runs = self.results.get(name, {}).get("cold") or []
        if not runs:
            raise ExperimentError(f"model-{name}: no cold run of {name} to replay")
        tr = vtrace.load(runs[0]["trace"])
        pages = tr.expand_pages(("read",), page_size=PAGE)
        paths = tr.files or {}
        fids = sorted({int(f) for f in pages["file"].tolist()})
        files = [paths.get(f, f"file{f}") for f in fids]
        index = {f: j for j, f in enumerate(fids)}
        seq = [(index[int(f)], int(p)) for f, p in zip(pages["file"].tolist(), pages["page"].tolist())]
        distinct = len(set(seq))
        memory = max(64 << 20, ((distinct * PAGE * 2) + (16 << 20)) // (1 << 20) * (1 << 20))
        self.info["model-" + name] = {"replays": runs[0]["trace"], "files": len(files),
                                      "page_reads": len(seq), "distinct_pages": distinct,
                                      "memory": memory}
        return files, seq, memory

    # -- the loop --
    def total_runs(self) -> int:
        real = [n for n in self.names if n != MODEL]
        n = 3 * self.runs * len(real)
        if MODEL in self.names:
            n += 3 * self.runs * len(WORKLOADS)
            n += sum(1 for w in WORKLOADS if w not in real)  # a capture run each
        return n

    def run(self) -> dict:
        self._make_work()
        p = self.progress
        p.say(f"work dir {self.work} (size {self.size}: needs about {DISK_NEEDED[self.size] >> 20} MiB), "
              f"latency {self.latency}, cache {self.cache}, prefetch {self.prefetch}, {self.runs} cold + "
              f"{self.runs} seeded runs per workload")
        if self.seeded_real is None:
            self.seeded_real = vnodefs_has_profile(self.python)
        if not self.seeded_real:
            self.notes.append("this vnodefs has no `run --profile`: real seeded runs skipped")
            p.say("note: " + self.notes[-1])
        real = [n for n in WORKLOADS if n in self.names or MODEL in self.names]
        for name in real:
            src = os.path.join(self.work, name, "src")
            t0 = time.monotonic()
            info = WORKLOADS[name].build(src, self.size, self.seed)
            info["build_s"] = round(time.monotonic() - t0, 2)
            self.info[name] = info
            p.say(f"built {name}: {', '.join(f'{k} {v}' for k, v in info.items())}")
            reported = name in self.names
            res = self.results.setdefault(name, {"cold": [], "seeded": []})
            nruns = self.runs if reported else 1
            for i in range(1, nruns + 1):
                if reported:
                    r = self.real_run(name, "floor", i)
                    res.setdefault("floor", []).append(r)
                    p.run_done(self._line(name, "floor", i, nruns, r))
                r = self.real_run(name, "cold", i, record=(i == 1 and self.seeded_real))
                res["cold"].append(r)
                p.run_done(self._line(name, "cold", i, nruns, r))
                if reported and self.seeded_real:
                    r = self.real_run(name, "seeded", i)
                    res["seeded"].append(r)
                    p.run_done(self._line(name, "seeded", i, nruns, r))
            if not reported:
                self.results.pop(name)
                self.info[name]["capture_trace"] = res["cold"][0]["trace"]
                self._captured = getattr(self, "_captured", {})
                self._captured[name] = res
        if MODEL in self.names:
            for name in WORKLOADS:
                if name not in self.results:
                    self.results[name] = self._captured[name]
                    plan = self.model_plan(name)
                    self.results.pop(name)
                else:
                    plan = self.model_plan(name)
                key = f"model-{name}"
                res = self.results.setdefault(key, {"floor": [], "cold": [], "seeded": []})
                for i in range(1, self.runs + 1):
                    r = self.model_run(name, "floor", i, plan)
                    res["floor"].append(r)
                    p.run_done(self._line(key, "floor", i, self.runs, r))
                    r = self.model_run(name, "cold", i, plan)
                    res["cold"].append(r)
                    p.run_done(self._line(key, "cold", i, self.runs, r))
                    r = self.model_run(name, "seeded", i, plan)
                    res["seeded"].append(r)
                    p.run_done(self._line(key, "seeded", i, self.runs, r))
        return self.report()

    @staticmethod
    def _line(name, mode, i, n, r) -> str:
        s = (f"{name} {mode} {i}/{n}: {r['wall_s']:.2f} s, {r['major_faults']} major faults, "
             f"{r['requests']} requests, {r['bytes_read'] / (1 << 20):.1f} MiB")
        pf = r.get("prefetch")
        if pf and mode == "seeded":
            s += f", prefetch used {pf.get('used')} wasted {pf.get('wasted')} late {pf.get('late')}"
        return s

    def report(self) -> dict:
        dev = lay = None
        for modes in self.results.values():
            for r in modes.get("cold", []):
                dev, lay = r.get("device_model"), r.get("layout")
                break
            if dev:
                break
        return {
            "experiment": "seeding",
            "config": {"workloads": self.names, "runs": self.runs, "latency": self.latency, "size": self.size,
                       "seed": self.seed, "cache": self.cache, "prefetch": self.prefetch,
                       "sqlite_io": self.sqlite_io, "work": self.work if self.keep else None,
                       "python": self.python, "device_model": dev or self.latency, "layout": lay or "unknown"},
            "info": self.info,
            "notes": self.notes,
            "workloads": self.results,
            "summary": summarize_runs(self.results),
        }


def device_figures(res: dict) -> dict:
    """Device time of one real run: the command's and the prefetcher's requests together
    (`device_run` of a `vnodefs run --profile` result; the command's own otherwise, which is all
    there is without a prefetcher)."""
    d = res.get("device_run") or {}
    if d:
        return {"device_seek_s": d.get("seek_s", 0.0), "device_rotation_s": d.get("rotation_s", 0.0),
                "device_busy_s": d.get("busy_s", 0.0)}
    return {"device_seek_s": res.get("seek_s", 0.0) or 0.0, "device_rotation_s": res.get("rotation_s", 0.0) or 0.0,
            "device_busy_s": res.get("device_busy_s", 0.0) or 0.0}


def penalty_removed(floor, cold, seeded):
    """The share of the cold-start penalty that seeding removed, (cold - seeded) / (cold - floor);
    None when there is no penalty to remove (cold <= floor) or a figure is missing."""
    if floor is None or cold is None or seeded is None or cold <= floor:
        return None
    return (cold - seeded) / (cold - floor)


def summarize_runs(results: dict) -> dict:
    out = {}
    for name, modes in results.items():
        s = {}
        for mode in ("floor", "cold", "seeded"):
            runs = modes.get(mode) or []
            m = {k: _median([r.get(k) for r in runs]) for k in RUN_KEYS + DEVICE_KEYS}
            m["runs"] = len(runs)
            m["min"] = {k: min((r.get(k, 0) for r in runs), default=None) for k in RUN_KEYS}
            m["max"] = {k: max((r.get(k, 0) for r in runs), default=None) for k in RUN_KEYS}
            if mode == "seeded" and runs:
                m["prefetch"] = {k: _median([(r.get("prefetch") or {}).get(k) for r in runs])
                                 for k in PREFETCH_KEYS}
            s[mode] = m
        s["ratios"] = {k: _ratio(s["cold"][k], s["seeded"][k]) for k in RUN_KEYS}
        c, d = s["cold"]["major_faults"], s["seeded"]["major_faults"]
        s["major_faults_reduction"] = (1 - d / c) if c and d is not None else None
        s["floor_s"] = s["floor"]["wall_s"]
        s["penalty_removed"] = penalty_removed(s["floor_s"], s["cold"]["wall_s"], s["seeded"]["wall_s"])
        s["seek_s_cold"] = s["cold"]["device_seek_s"]
        s["seek_s_seeded"] = s["seeded"]["device_seek_s"]
        s["positioning_s_cold"] = _sum2(s["cold"]["device_seek_s"], s["cold"]["device_rotation_s"])
        s["positioning_s_seeded"] = _sum2(s["seeded"]["device_seek_s"], s["seeded"]["device_rotation_s"])
        s["device_busy_s_cold"] = s["cold"]["device_busy_s"]
        s["device_busy_s_seeded"] = s["seeded"]["device_busy_s"]
        out[name] = s
    return out


# ---- output -------------------------------------------------------------------------------------------

def _fmt(v, kind):
    if v is None:
        return "-"
    if kind == "s":
        return f"{v:.2f}"
    if kind == "mib":
        return f"{v / (1 << 20):.1f}"
    return f"{v:.0f}" if isinstance(v, float) else str(v)


def _cell(m, key, kind):
    if m["runs"] == 0:
        return "-"
    med = _fmt(m[key], kind)
    lo, hi = _fmt(m["min"][key], kind), _fmt(m["max"][key], kind)
    return med if (m["runs"] == 1 or lo == hi) else f"{med} ({lo}-{hi})"


def _x(r):
    if r is None:
        return "-"
    if r == float("inf"):
        return "inf"
    return f"{r:.1f}x"


def format_table(report: dict) -> str:
    summ = report["summary"]
    cfg = report["config"]
    head = ("workload", "mode", "n", "wall s", "major faults", "requests", "MiB read", "prefetch used/wasted/late")
    rows = []
    for name, s in summ.items():
        for mode in ("floor", "cold", "seeded"):
            m = s.get(mode)
            if not m or not m["runs"]:
                continue
            pf = m.get("prefetch")
            pfs = "/".join(_fmt(pf[k], "n") for k in PREFETCH_KEYS) if pf else "-"
            rows.append((name, mode, str(m["runs"]), _cell(m, "wall_s", "s"), _cell(m, "major_faults", "n"),
                         _cell(m, "requests", "n"), _cell(m, "bytes_read", "mib"), pfs))
    from vmcore.report import render_table

    out = [f"Seeding experiment: device {cfg['latency']} (layout {cfg.get('layout', 'unknown')}), size "
           f"{cfg['size']}, seed {cfg['seed']}, cache {cfg['cache']}, prefetch {cfg['prefetch']} (median, min-max "
           f"over runs; floor = the same launch on a mount with no device model)",
           render_table(head, rows, right=range(2, len(head)), rule=True)]
    out.append("")
    out.append("cold / seeded (medians):")
    for name, s in summ.items():
        r = s["ratios"]
        red = s["major_faults_reduction"]
        out.append(f"  {name:<15s} wall {_x(r['wall_s'])}, requests {_x(r['requests'])}, "
                   f"bytes {_x(r['bytes_read'])}, major faults {_x(r['major_faults'])}"
                   + (f" ({red * 100:.0f}% fewer)" if red is not None else ""))
        pen = s.get("penalty_removed")
        pen_s = (f"{pen * 100:.0f}%" if pen is not None else
                 "n/a (cold is not slower than the floor)" if s.get("floor_s") is not None else "n/a (no floor run)")
        out.append(f"  {'':<15s} cold-start penalty removed {pen_s}; device positioning (seek + rotation) "
                   f"cold {_fmt(s.get('positioning_s_cold'), 's')} s vs seeded {_fmt(s.get('positioning_s_seeded'), 's')} s"
                   f" (seek {_fmt(s.get('seek_s_cold'), 's')} vs {_fmt(s.get('seek_s_seeded'), 's')} s), device busy "
                   f"{_fmt(s.get('device_busy_s_cold'), 's')} vs {_fmt(s.get('device_busy_s_seeded'), 's')} s")
    out.append("(real runs: requests and major faults are the command's own; the prefetcher's reads "
               "are in each run's prefetch.requests, and device times count both. model runs: hard faults "
               "and all page-in reads; penalty removed = (cold - seeded) / (cold - floor) of the medians)")
    for n in report.get("notes", []):
        out.append(f"note: {n}")
    return "\n".join(out)


def plot(report: dict, path: str) -> None:
    """The plot (PNG, SVG or PDF by the extension of `path`): per workload, cold vs seeded wall time
    (s) and requests (medians, min-max bars, runs as dots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = report["workloads"]
    names = list(res)
    n = max(len(names), 1)
    fig, axes = plt.subplots(2, n, figsize=(3.8 * n + 0.6, 7.6), squeeze=False)
    colors = {"floor": "#9a9a9a", "cold": "#4878a8", "seeded": "#e08030"}
    for j, name in enumerate(names):
        for row, (key, label) in enumerate((("wall_s", "wall time (s)"),
                                            ("requests", "read requests reaching vnodefs\n"
                                                          "(real: the command's; model: all)"))):
            ax = axes[row][j]
            for x, mode in enumerate(("floor", "cold", "seeded")):
                vals = [r.get(key, 0) for r in res[name].get(mode, [])]
                if not vals:
                    continue
                med = statistics.median(vals)
                ax.bar(x, med, color=colors[mode], width=0.6,
                       yerr=[[med - min(vals)], [max(vals) - med]], capsize=4, label=mode)
                ax.scatter([x] * len(vals), vals, color="black", s=10, zorder=3)
                ax.annotate(f"{med:.2f} s" if key == "wall_s" else f"{med:.0f}", (x, max(vals)),
                            textcoords="offset points", xytext=(0, 6), ha="center", fontsize=9)
            ax.set_xticks([0, 1, 2], ["floor", "cold", "seeded"])
            ax.set_ylabel(label)
            ax.set_ylim(bottom=0, top=ax.get_ylim()[1] * 1.12)
            summ = report["summary"][name]
            s = summ["ratios"][key]
            extra = f"\ncold/seeded {_x(s)}" if s is not None else ""
            if key == "wall_s" and summ.get("penalty_removed") is not None:
                extra += f", penalty removed {summ['penalty_removed'] * 100:.0f}%"
            if key != "wall_s" and summ.get("positioning_s_cold") is not None:
                extra += (f"\nseek+rotation {summ['positioning_s_cold']:.2f} s cold, "
                          f"{summ['positioning_s_seeded'] or 0:.2f} s seeded")
            ax.set_title(f"{name}: {'wall time' if key == 'wall_s' else 'requests'}" + extra, fontsize=9)
            ax.grid(axis="y", alpha=0.3)
    cfg = report["config"]
    fig.suptitle(f"Floor, cold and profile-seeded launches (device {cfg['latency']}, layout "
                 f"{cfg.get('layout', 'unknown')}, cache {cfg['cache']}, prefetch {cfg['prefetch']}, size "
                 f"{cfg['size']}, {cfg['runs']} run(s) each;\nbars: median, whiskers: min-max, dots: runs; "
                 f"floor: no device model)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    from vnodefs.plots import plot_format

    fig.savefig(path, dpi=100, format=plot_format(path))
    plt.close(fig)


# ---- command line -------------------------------------------------------------------------------------

def add_experiment_parser(sub) -> None:
    p = sub.add_parser("experiment", help="run the project's experiments (seeding)",
                       description="Run one of the project's experiments.")
    esub = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", parser_class=type(p))
    s = esub.add_parser(
        "seeding", help="cold vs launch-profile-seeded runs of real programs over vnodefs, and the model",
        description="Make data and workloads from a seed, run K cold and K seeded launches of each "
                    "workload over fresh vnodefs mounts under a disk latency model, print a table "
                    "(median and min-max of wall time, major faults, requests, bytes read, prefetch "
                    "used/wasted/late, floor, penalty removed, device seek time) and optionally write "
                    "JSON and a PNG plot. Workloads: sqlite (Python's sqlite3, point lookups in a "
                    "database in the mount), pyimport (python -S -B importing a stdlib set copied into "
                    "the mount), manyfiles (python -S -B loading ~2000 small plugin modules), model (the "
                    "real workloads' cold traces replayed through vmcore, floor, cold and seeded). Each "
                    "workload also runs on a mount with no device model (the floor), and the report "
                    "gives the share of the cold-start penalty seeding removed, (cold - seeded) / (cold "
                    "- floor). Disk: about 360 MiB "
                    "(default size), 90 MiB (small), 1.2 GiB (large) in the work dir.",
        epilog="Example: vmcore experiment seeding --size small --runs 1 --json out.json --plot out.png")
    s.add_argument("--workload", action="append", metavar="NAME",
                   help=f"a workload to run ({', '.join(ALL_NAMES)}); repeat for several; default all")
    s.add_argument("--runs", type=int, default=3, metavar="K", help="cold and seeded runs per workload (default 3)")
    s.add_argument("--latency", default="hdd", metavar="MODEL",
                   help="vnodefs device model of the cold and seeded runs (the floor runs use none): "
                        "hdd (default), ssd, nvme, SEEK_US:MBPS, or none (see vnodefs mount --help)")
    s.add_argument("--json", metavar="FILE", help="write the runs and the summary as JSON to FILE, or to "
                   "stdout if FILE is - (the table then goes to stderr)")
    s.add_argument("--plot", metavar="FILE", help="write a plot (cold vs seeded wall time and requests) to FILE, "
                   "PNG, SVG or PDF by its extension (.png, .svg, .pdf; none: PNG)")
    s.add_argument("--size", default="default", metavar="SIZE",
                   help="small (CI: ~24 MiB database), default (~200 MiB) or large (~800 MiB)")
    s.add_argument("--work", metavar="DIR",
                   help="work directory (new or empty; default a temp dir removed at the end)")
    s.add_argument("--seed", type=int, default=1, help="seed of the data and the workloads (default 1)")
    s.add_argument("--keep", action="store_true", help="keep the work directory (data, traces, logs)")
    s.add_argument("--cache", default="page", choices=("page", "direct"),
                   help="vnodefs cache mode of the real runs (default page: prefetched pages land in "
                        "the kernel's page cache)")
    s.add_argument("--prefetch", default=DEFAULT_STRATEGY, metavar="STRATEGY",
                   help=f"vnodefs run --prefetch strategy of the seeded real runs: cache, read or fadvise "
                        f"(default {DEFAULT_STRATEGY}, as for vnodefs run --profile)")
    s.add_argument("--sqlite-io", default="read", choices=("read", "mmap"),
                   help="sqlite I/O: read (pread, default) or mmap (PRAGMA mmap_size: page faults)")
    s.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    s.set_defaults(func=run_experiment)
    p.set_defaults(func=lambda a: (p.print_help(), 0)[1])


def validate(args) -> list[str]:
    names = []
    for n in args.workload or list(ALL_NAMES):
        for part in n.split(","):
            part = part.strip()
            if part not in ALL_NAMES:
                raise InvalidArgument(f"unknown workload {part!r} (valid: {', '.join(ALL_NAMES)})")
            if part not in names:
                names.append(part)
    if args.runs < 1:
        raise InvalidArgument(f"--runs {args.runs}: need at least 1 run")
    if args.size not in SIZES:
        raise InvalidArgument(f"unknown size {args.size!r} (valid: {', '.join(SIZES)})")
    from vnodefs.latency import LatencyError, parse_latency

    try:
        parse_latency(args.latency)
    except LatencyError as e:
        raise InvalidArgument(f"--latency: {e}") from None
    if args.prefetch not in ("read", "fadvise", "cache"):
        raise InvalidArgument(f"unknown prefetch strategy {args.prefetch!r} (valid: read, fadvise, cache)")
    if args.plot is not None:
        from vnodefs.plots import plot_format

        try:
            plot_format(args.plot)
        except ValueError as e:
            raise InvalidArgument(f"--plot: {e}") from None
    for opt in ("json", "plot"):
        path = getattr(args, opt)
        if path is not None and not (opt == "json" and path == "-"):
            d = os.path.dirname(os.path.abspath(path)) or "."
            if not os.path.isdir(d) or not os.access(d, os.W_OK):
                raise InvalidArgument(f"--{opt} {path}: directory {d} is not writable")
    return names


def _finite(x):
    """The report with non-finite floats (a ratio over zero) as null: strict JSON."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, float) and (x != x or x in (float("inf"), float("-inf"))):
        return None
    return x


def _without_paths_under(x, top: str):
    """`x` with every string naming a path inside the directory `top` replaced by None."""
    prefix = os.path.join(os.path.abspath(top), "")
    if isinstance(x, dict):
        return {k: _without_paths_under(v, top) for k, v in x.items()}
    if isinstance(x, list):
        return [_without_paths_under(v, top) for v in x]
    if isinstance(x, str) and (x == prefix[:-1] or x.startswith(prefix)):
        return None
    return x


def run_experiment(args) -> int:
    names = validate(args)
    exp = SeedingExperiment(names, runs=args.runs, latency=args.latency, size=args.size, seed=args.seed,
                            work=args.work, keep=args.keep, cache=args.cache, prefetch=args.prefetch,
                            sqlite_io=args.sqlite_io, progress=None)
    exp.progress = Progress(exp.total_runs(), quiet=args.quiet)
    t0 = time.monotonic()
    interrupted = False
    try:
        rep = exp.run()
    except KeyboardInterrupt:  # keep what finished: a partial report, table and JSON
        interrupted = True
    finally:
        exp.teardown()
    if interrupted:
        rep = exp.report()
        rep["interrupted"] = True
        rep["notes"] = rep["notes"] + [f"interrupted: {exp.progress.done} of {exp.total_runs()} runs completed; "
                                       f"the table and JSON hold those runs only"]
    rep["elapsed_s"] = round(time.monotonic() - t0, 1)
    if getattr(exp, "_made_work", False) and exp.work:  # the work dir is gone: no path may point into it
        rep = _without_paths_under(rep, exp.work)
        rep["notes"] = rep["notes"] + [f"the work dir {exp.work} was removed at the end, so the runs' trace "
                                       f"paths are null (--keep keeps the traces)"]
    out = sys.stderr if args.json == "-" else sys.stdout  # stdout holds only the JSON then
    print(format_table(rep), file=out)
    print(f"elapsed {rep['elapsed_s']} s" + (f"; work dir kept: {exp.work}" if args.keep else ""), file=out)
    if args.json == "-":
        json.dump(_finite(rep), sys.stdout, indent=1)
        sys.stdout.write("\n")
    elif args.json:
        with open(args.json, "w") as fh:
            json.dump(_finite(rep), fh, indent=1)
        print(f"JSON: {args.json}", file=out)
    if args.plot and not interrupted:
        plot(rep, args.plot)
        print(f"plot: {args.plot}", file=out)
    if interrupted:
        print(f"{PROG}: interrupted after {exp.progress.done} of {exp.total_runs()} runs"
              + (f"; the partial results are in {args.json}" if args.json and args.json != "-" else "")
              + ("; no plot written" if args.plot else ""), file=sys.stderr)
        return 130
    return 0
