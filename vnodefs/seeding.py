"""`vnodefs run --profile APP`: record a real program's launch profile, seed its later launches.

Owns: `run_seeded(...) -> (exit status, report dict)`, `format_report(report)`, `SeedingError`,
`exe_identity(command, source)`. Called by vnodefs.cli (`run --profile`); the seeding experiment
(vmcore.experiment) may call run_seeded directly.

Flow of one run:
  1. identity = the command's executable (shutil.which of argv[0]; `{mnt}` in it resolved against
     SOURCE): absolute path, inode, mtime (as XNU's app_profile). The profile lives in
     VAR/vm/app_profile/<uid>/APP.aprof (swapd.profiles.AppProfileStore: same format and rules as
     the model's profiles). A missing, stale or damaged profile (reported in one line, moved aside
     by the store) means this run is cold.
  2. Cold host: posix_fadvise(DONTNEED) on every file of SOURCE (vnodefs.prefetch.drop_host_cache),
     and a fresh mount, so the kernel's FUSE page cache is empty too.
  3. Seeded runs build a playlist from the profile (sorted, coalesced, holes cheaper to read than
     to seek over bridged: `--prefetch-gap`, default from the latency model) and prefetch it with
     the chosen strategy (vnodefs.prefetch): `cache` (the daemon, from mount time), `read` or
     `fadvise` (a helper thread of this process, from the command's start).
  4. The command runs (vnodefs.run.run_command) and is summarised on its own records only (the
     prefetcher's are reported apart).
  5. A cold run whose command exited 0 records the profile: the pages the command's process tree
     read through the mount (the mount is private to the run, so every non-prefetch request is
     the tree's; in page mode those are page-cache misses incl. kernel readahead, which on a fresh
     mount are first touches) within `--window` seconds of its start (default: the whole run).
     A seeded run records nothing unless `--record`: then it is merged into the stored profile
     (merge_profiles, `--min-count`).

Scores (pages): `cache` is exact from the trace: prefetched = pages of op-10 records, used =
prefetched pages the command read, wasted = prefetched - used, late = used pages whose first read
by the command started before their extent had landed. `read` / `fadvise`: late is exact (a
command miss on a playlist page before that page's prefetch call returned); used / wasted are
ESTIMATES (page-cache hits never reach vnodefs): touched ~ recorded profile pages + the pages the
command missed in this run; landed = playlist pages resident (mincore) after the prefetch.

"Requests that blocked the command" = its read/write requests not served entirely from the
prefetch cache; `blocked_s` = their summed durations (modelled latency included).
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np

from vnodefs.latency import LatencyError, parse_latency
from vnodefs.mount import MountError
from vnodefs.prefetch import (FLAG_PF_HIT, OP_PREFETCH, STRATEGIES, HostPrefetcher, auto_gap, drop_host_cache,
                              extent_pages, order_by_device, plan_extents, playlist_file)
from vnodefs.run import CommandNotFound, run_command
from vnodefs.trace import OPS, load


#: the prefetch strategy `vnodefs run --profile` and `vmcore experiment seeding` use unless told:
#: measured fastest (2000 small files under hdd: cold 11.6 s, cache 1.6 s, read 2.5 s, fadvise 2.4 s)
DEFAULT_STRATEGY = "cache"


class SeedingError(MountError):
    """Bad input of `vnodefs run --profile` (one line); nothing was mounted."""


def exe_identity(command: list[str], source: str):
    """AppIdentity of the command's executable (path as resolved by shutil.which, inode, mtime)."""
    from vmcore.workingset import AppIdentity

    if not command:
        raise SeedingError("no command given: put it after --, e.g. vnodefs run --profile APP SRC -- prog ARGS")
    exe = command[0].replace("{mnt}", os.path.realpath(source))
    found = shutil.which(exe)
    if found is None:
        raise CommandNotFound(f"command not found: {command[0]}")
    path = os.path.abspath(found)
    try:
        st = os.stat(path)
    except OSError as e:
        raise CommandNotFound(f"cannot stat {path}: {e.strerror}") from None
    return AppIdentity.of_stat(path, st)


def _validate(app, strategy, cache, trace, window, min_count, prefetch_max_mib, gap, latency):
    from vmcore.workingset import ProfileNameError, validate_app_name

    try:
        validate_app_name(app)
    except ProfileNameError as e:
        raise SeedingError(str(e)) from None
    if strategy not in STRATEGIES:
        raise SeedingError(f"unknown prefetch strategy {strategy!r}: use cache, read, fadvise or off")
    if strategy in ("read", "fadvise") and cache != "page":
        raise SeedingError(f"--prefetch {strategy} needs --cache page (it fills the kernel's page cache of "
                           f"the mount, which direct mode bypasses); use --prefetch cache in direct mode")
    if trace is None:
        raise SeedingError("--profile needs the trace (the profile and the scores come from it): drop --no-trace")
    if window is not None and not (window > 0 and window == window and window != float("inf")):
        raise SeedingError(f"--window {window!r} must be a positive number of seconds")
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise SeedingError(f"--min-count {min_count!r} must be a positive integer")
    if prefetch_max_mib is not None and not prefetch_max_mib > 0:
        raise SeedingError(f"--prefetch-max {prefetch_max_mib!r} must be a positive number of MiB")
    if gap != "auto":
        try:
            g = int(gap)
        except (TypeError, ValueError):
            raise SeedingError(f"--prefetch-gap {gap!r} must be a number of pages or auto") from None
        if g < 0:
            raise SeedingError(f"--prefetch-gap {gap!r} must be >= 0")
    try:
        return parse_latency(latency)
    except LatencyError as e:
        raise SeedingError(str(e)) from None


def _page_keys(tr, recs) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(file, page, start_ns, end_ns) per page spanned by successful requests in recs."""
    ps = tr.page_size
    n = np.minimum(np.maximum(recs["result"], 0), recs["length"])
    ok = n > 0
    r, n = recs[ok], n[ok]
    if r.size == 0:
        z = np.zeros(0, np.int64)
        return z, z, z, z
    first = r["offset"] // ps
    count = (r["offset"] + n - 1) // ps - first + 1
    idx = np.repeat(np.arange(r.size), count)
    within = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    return (r["file"][idx].astype(np.int64), first[idx] + within, r["start_ns"][idx],
            (r["start_ns"] + r["dur_ns"])[idx])


def _first_touch(tr, recs) -> dict:
    """{(path, page): earliest start_ns} of the pages spanned by recs."""
    f, p, t, _ = _page_keys(tr, recs)
    out: dict = {}
    if f.size == 0:
        return out
    order = np.lexsort((t, p, f))
    f, p, t = f[order], p[order], t[order]
    new = np.ones(f.size, bool)
    new[1:] = (f[1:] != f[:-1]) | (p[1:] != p[:-1])
    files = tr.files
    for fi, pg, tt in zip(f[new].tolist(), p[new].tolist(), t[new].tolist()):
        path = files.get(fi)
        if path:
            out[(path, pg)] = tt
    return out


def run_seeded(source: str, command: list[str], app: str, trace: str | None, var: str = "var",
               strategy: str = DEFAULT_STRATEGY, record: bool = False, window: float | None = None,
               min_count: int = 1, latency: str = "none", cache: str = "page", read_only: bool = False,
               xattr: bool = False, prefetch_max_mib: float | None = None, gap="auto",
               drop_cache: bool = True, log=lambda msg: None, layout: str = "auto",
               allow_other: bool = False, strict_metadata: bool = False,
               trace_metadata: bool = False, metadata_timeout: float | None = None,
               writeback_cache: bool = False) -> tuple[int, dict]:
    """One `vnodefs run --profile` (see the module docstring). Raises SeedingError / MountError /
    CommandNotFound (one line) on bad input; nothing is left mounted."""
    from swapd.profiles import AppProfileStore, AppProfileTreeError
    from vmcore.workingset import Profile

    spec = _validate(app, strategy, cache, trace, window, min_count, prefetch_max_mib, gap, latency)
    ident = exe_identity(command, source)
    if not os.path.isdir(source):
        raise SeedingError(f"source {source} is not a directory" if os.path.exists(source)
                           else f"source {source} does not exist")
    notices: list[str] = []

    def note(line):
        notices.append(line)
        log(f"vnodefs run: {line}")

    uid = os.getuid()
    store = AppProfileStore(var, report=note)
    try:
        prof = store.load(uid, app, ident)
        profile_path = store.path_for(uid, app)
    except (AppProfileTreeError, OSError) as e:
        raise SeedingError(f"profile store {var}: {e}") from None
    ps = os.sysconf("SC_PAGE_SIZE")
    if prof is not None and prof.page_size != ps:
        note(f"profile {profile_path} has page size {prof.page_size}, this host {ps}; ignored")
        prof = None
    seeded = prof is not None and strategy != "off"
    ran = strategy if seeded else "none"
    extents, plan = [], {}
    gap_pages = 0
    if seeded:
        gap_pages = auto_gap(spec.seek_us, spec.mbps, ps) if gap == "auto" else int(gap)
        max_bytes = None if prefetch_max_mib is None else int(prefetch_max_mib * (1 << 20))
        extents, plan = plan_extents(prof.pages_by_file(), os.path.realpath(source), ps, max_gap=gap_pages,
                                     max_bytes=max_bytes)
        plan["order"] = "file"
        if spec.active:  # one device: read the launch's blocks in device order, across files
            from vnodefs.layout import LayoutError, choose

            try:
                lay = choose(os.path.realpath(source), layout)
            except LayoutError as e:
                raise SeedingError(str(e)) from None
            extents, order = order_by_device(extents, os.path.realpath(source), lay)
            plan.update(order="device", layout=lay.kind, extents=order["extents"], bytes=order["bytes"])
        log(f"vnodefs run: seeding {app} from {profile_path} ({prof.npages} pages, {prof.launches} launch(es)): "
            f"{plan['extents']} requests, {plan['bytes'] / (1 << 20):.1f} MiB, strategy {strategy}")
    host = drop_host_cache(source) if drop_cache else {"files": 0, "failed": 0, "method": None,
                                                        "note": "host cache not dropped (--no-drop-cache)"}
    if host.get("note"):
        log(f"vnodefs run: {host['note']}")

    helper: dict = {}

    def on_start(mnt, t0_ns):
        if seeded and strategy in ("read", "fadvise") and extents:
            hp = HostPrefetcher(mnt, extents, strategy, page_size=ps)
            hp.start()
            hp.ready.wait(5)
            helper["hp"] = hp

    def after_exit(mnt):
        hp = helper.get("hp")
        if hp is not None:
            hp.join()

    def command_mask(tr):
        m = tr.records["op"] != OP_PREFETCH
        hp = helper.get("hp")
        if hp is not None and hp.tids:
            m &= ~np.isin(tr.records["pid"], np.array(sorted(hp.tids), dtype=np.int64))
        return m

    import contextlib

    with contextlib.ExitStack() as stack:
        extra = None
        if seeded and strategy == "cache" and extents:
            pl = stack.enter_context(playlist_file(extents))
            extra = {"prefetch": {"playlist": pl, "page_size": ps}}
        status, summary = run_command(source, command, trace, latency=latency, cache=cache, read_only=read_only,
                                      allow_other=allow_other, strict_metadata=strict_metadata,
                                      trace_metadata=trace_metadata, metadata_timeout=metadata_timeout,
                                      writeback_cache=writeback_cache, xattr=xattr, log=log, extra=extra, on_start=on_start,
                                      after_exit=after_exit, command_mask=command_mask, layout=layout)

    tr = load(trace)
    recs = tr.records
    cmask = command_mask(tr)
    t0 = summary["command_start_ns"]
    crw = recs[cmask & np.isin(recs["op"], np.array([OPS["read"], OPS["write"]], np.uint8))]
    hit = (crw["flags"] & FLAG_PF_HIT) != 0
    blocking = crw[~hit]
    creads = recs[cmask & (recs["op"] == OPS["read"])]
    touched = _first_touch(tr, creads)

    pf = {"strategy": ran, "used": 0, "wasted": 0, "late": 0, "prefetched": 0, "missed": 0,
          "pages_landed": 0, "requests": 0, "bytes": 0, "time_s": 0.0, "estimated": False,
          "gap_pages": gap_pages, "planned_requests": plan.get("extents", 0),
          "planned_bytes": plan.get("bytes", 0), "cache_hits": int(hit.sum())}
    if seeded and strategy == "cache":
        from vmcore.workingset import score_prefetch

        prec = recs[recs["op"] == OP_PREFETCH]
        f, p, _, t_end = _page_keys(tr, prec)
        landed = {}
        for fi, pg, te in zip(f.tolist(), p.tolist(), t_end.tolist()):
            path = tr.files.get(fi)
            if path:
                landed.setdefault((path, pg), te)
        sc = score_prefetch(landed, touched)
        pf.update(used=sc.used, wasted=sc.wasted, late=sc.late, missed=sc.missed, prefetched=sc.prefetched,
                  pages_landed=len(landed), requests=int(prec.size),
                  bytes=int(np.maximum(prec["result"], 0).sum()),
                  time_s=(float((prec["start_ns"] + prec["dur_ns"]).max() - prec["start_ns"].min()) / 1e9
                          if prec.size else 0.0))
    elif seeded and strategy in ("read", "fadvise") and "hp" in helper:
        hp = helper["hp"]
        want = extent_pages(extents, ps)
        prefetched = {(path, pg) for path, pages in want.items() for pg in pages}
        done_at = {}
        for path, off, ln, _a, b in hp.log:
            for pg in range(off // ps, (off + ln - 1) // ps + 1):
                done_at.setdefault((path, pg), b)
        late = sum(1 for k, t in touched.items() if k in prefetched and t < done_at.get(k, 1 << 62))
        est_touched = set(touched) | {(path, int(pg)) for path, pages in prof.pages_by_file().items()
                                      for pg in pages.tolist()}
        used = len(prefetched & est_touched)
        hrecs = recs[np.isin(recs["pid"], np.array(sorted(hp.tids), dtype=np.int64))] if hp.tids else recs[:0]
        hdata = hrecs[hrecs["op"] == OPS["read"]]
        pf.update(used=used, wasted=len(prefetched) - used, late=late, prefetched=len(prefetched),
                  missed=len(set(touched) - prefetched),
                  pages_landed=sum(len(v) for v in hp.landed.values()),
                  landed_by_file={k: len(v) for k, v in sorted(hp.landed.items())},
                  requests=len(hp.log), mount_requests=int(hdata.size),
                  bytes=int(np.maximum(hdata["result"], 0).sum()),
                  time_s=(hp.t_end_ns - hp.t_start_ns) / 1e9, estimated=True,
                  errors=hp.errors[:5])

    # ---- the profile ----
    action = "none"
    if prof is None or record:
        win_ns = int(window * 1e9) if window is not None else None
        keys = [(path, pg, t - t0) for (path, pg), t in touched.items()
                if win_ns is None or t - t0 <= win_ns]
        new = Profile.from_touches(ident, uid, app, ((path, pg, max(0, dt)) for path, pg, dt in keys),
                                   window_ns=win_ns if win_ns is not None else max(0, summary["command_end_ns"] - t0),
                                   page_size=ps, created_ns=time.time_ns())
        try:
            if prof is None and status != 0:
                action = f"not recorded (the command exited {status})"
            elif prof is None:
                store.save(new)
                action = "recorded"
            else:
                merged = store.save_merged(new, min_count=min_count)
                action = f"merged ({merged.launches} launches, {merged.npages} pages kept)"
        except (AppProfileTreeError, OSError, ValueError) as e:
            action = f"not saved: {e}"
            note(f"profile {profile_path} not saved: {e}")
        recorded_pages = new.npages
    else:
        recorded_pages = 0
    from vnodefs.devstats import DEVICE_OPS, device_breakdown

    dev = device_breakdown(recs[np.isin(recs["op"], np.array(DEVICE_OPS, np.uint8))])
    summary.update({
        "device_run": {k: dev[k] for k in ("requests", "requests_with_device", "seeks", "seek_s", "rotation_s",
                                           "transfer_s", "service_s", "queue_s", "busy_s")},
        "plan": {k: plan.get(k) for k in ("order", "layout", "extents", "bytes")} if plan else None,
        "blocking_requests": int(blocking.size),
        "blocked_s": float(blocking["dur_ns"].sum()) / 1e9,
        "prefetch": pf,
        "profile": {"app": app, "path": profile_path, "identity": {"path": ident.path, "inode": ident.inode,
                                                                 "mtime_ns": ident.mtime_ns},
                    "loaded_pages": prof.npages if prof is not None else 0,
                    "launches": prof.launches if prof is not None else 0,
                    "action": action, "recorded_pages": recorded_pages, "notices": notices},
        "host_cache": host,
        "seeded": seeded,
    })
    return status, summary


def format_report(s: dict) -> str:
    pf = s["prefetch"]
    pr = s["profile"]
    lines = [f"vnodefs run --profile {pr['app']}: {' '.join(s['command'])}: exit status {s['exit_status']}, "
             f"{s['wall_s']:.3f} s, {s['major_faults']} major faults"]
    host = s["host_cache"]
    lines.append(f"  cold start    fresh mount; host cache of SOURCE dropped for {host['files']} files"
                 + (f" ({host['note']})" if host.get("note") else ""))
    lines.append(f"  blocked       {s['blocking_requests']} requests blocked the command, {s['blocked_s']:.3f} s "
                 f"(of {s['requests']} read/write requests, {s['time_blocked_s']:.3f} s in requests)")
    lines.append(f"  I/O           {s['bytes_read'] / (1 << 20):.1f} MiB read by the command, "
                 f"{s['distinct_pages_read']} distinct pages")
    if pf["strategy"] == "none":
        lines.append("  prefetch      none (cold run" + (": no usable profile)" if not pr["loaded_pages"]
                                                        and not s.get("seeded") else ")"))
    else:
        est = " (used/wasted estimated: page-cache hits are invisible)" if pf["estimated"] else ""
        lines.append(f"  prefetch      strategy {pf['strategy']}: {pf['requests']} requests, "
                     f"{pf['bytes'] / (1 << 20):.1f} MiB in {pf['time_s']:.3f} s; {pf['pages_landed']} pages landed")
        lines.append(f"  pages         prefetched {pf['prefetched']}: used {pf['used']}, wasted {pf['wasted']}, "
                     f"late {pf['late']}; missed (read, not prefetched) {pf['missed']}{est}")
    d = s.get("device_run")
    if d and d.get("requests_with_device"):
        lines.append(f"  device        {s.get('device_model', '?')}, layout {s.get('layout', '?')}: busy "
                     f"{d['busy_s']:.3f} s for the command and the prefetcher ({d['requests_with_device']} "
                     f"requests, {d['seeks']} seeks: seek {d['seek_s']:.3f} s, rotation {d['rotation_s']:.3f} s, "
                     f"transfer {d['transfer_s']:.3f} s; queueing {d['queue_s']:.3f} s)")
    lines.append(f"  profile       {pr['path']}: {pr['action']}"
                 + (f", {pr['recorded_pages']} pages" if pr["action"] == "recorded" else ""))
    lines.append(f"  trace         {s['trace']}")
    return "\n".join(lines)
