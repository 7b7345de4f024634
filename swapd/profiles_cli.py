"""`swapd profiles list|show|rm`: inspect and remove launch profiles in VAR/vm/app_profile.

Owns: `add_profiles_parser(subparsers)` (adds the `profiles` command to an argparse subparsers
object, e.g. swapd.cli's), `run_profiles(args) -> int` (runs it), and `main(argv)` so the command
also works alone: `python -m swapd.profiles_cli list`.

    swapd profiles list [--json] [--var DIR]
    swapd profiles show NAME [--uid UID] [--entries N] [--json] [--var DIR]
    swapd profiles rm NAME [--uid UID] [--var DIR]

`list` reads and verifies every file and never changes the tree (a damaged file is listed as
DAMAGED with its error, a file a load moved aside as QUARANTINED);
`show` reads and verifies the whole file (a damaged one: one line on stderr, exit 1, left in place
for inspection; the kernel's load is what moves damaged files aside). Exit status: 0 ok, 1 a profile
is missing or damaged or the tree is unusable, 2 bad usage (e.g. a name that would escape the tree).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from swapd.profiles import AppProfileStore, AppProfileTreeError, ProfileNotFound, tree_of
from vmcore.report import render_table
from vmcore.workingset import ANON, ProfileFormatError, ProfileNameError, validate_app_name

DEFAULT_VAR = "var"


def _common(p: argparse.ArgumentParser, json_opt: bool = True) -> None:
    p.add_argument("--var", default=DEFAULT_VAR, metavar="DIR",
                   help=f"the VAR directory; profiles live in DIR/vm/app_profile "
                        f"(default: {DEFAULT_VAR}; it must exist and be a directory)")
    if json_opt:
        p.add_argument("--json", action="store_true", help="print JSON on stdout instead of text")


def add_profiles_parser(subparsers) -> argparse.ArgumentParser:
    """Add `profiles` (list / show / rm) to an argparse subparsers object; returns its parser."""
    pp = subparsers.add_parser(
        "profiles", help="list, show or remove launch working-set profiles (app_profile)",
        description="Launch profiles record the pages an application touched in its first "
                    "seconds (working-set detection); the next launch is seeded from them. They "
                    "live in VAR/vm/app_profile/<uid>/<app>.aprof (format: "
                    "docs/app_profile-format.md).")
    sub = pp.add_subparsers(dest="profiles_command", metavar="{list,show,rm}")
    pl = sub.add_parser("list", help="one line per profile: app, uid, pages, launches, size, "
                                     "created, executable identity",
                        description="List every profile in the tree: each file is read and "
                                    "verified as a launch would (nothing is changed); a damaged "
                                    "file (header or payload) is listed as DAMAGED with its error, "
                                    "a damaged file a launch moved aside (<app>.aprof.corrupt-<time>) "
                                    "as QUARANTINED. --json: each profile has state ok, damaged or "
                                    "quarantined.")
    _common(pl)
    ps = sub.add_parser("show", help="a profile's header, pages per file and first entries",
                        description="Show one profile: its header, the number of pages per "
                                    "file, and its first entries in first-touch order; with "
                                    "--json every entry.")
    ps.add_argument("name", metavar="NAME", help="the application name")
    ps.add_argument("--uid", type=int, default=None,
                    help="the user id (default: the only uid that has NAME)")
    ps.add_argument("--entries", type=int, default=10, metavar="N",
                    help="entries to print in text mode (default: 10)")
    _common(ps)
    pr = sub.add_parser("rm", help="remove a profile",
                        description="Remove the profile NAME (of --uid, or of the only uid that "
                                    "has it); the next launch records a new one.")
    pr.add_argument("name", metavar="NAME", help="the application name")
    pr.add_argument("--uid", type=int, default=None,
                    help="the user id (default: the only uid that has NAME)")
    _common(pr, json_opt=False)
    pp.set_defaults(_profiles_parser=pp)
    return pp


def _fmt_size(n: int) -> str:
    for unit, mult in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= mult:
            return f"{n / mult:.1f}{unit}"
    return f"{n}B"


def _fmt_time(ns: int) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9))
    except (OverflowError, OSError, ValueError):
        return str(ns)


def _which_uid(store: AppProfileStore, name: str, uid: int | None) -> int:
    if uid is not None:
        return uid
    uids = store.uids_with(name)
    if not uids:
        raise ProfileNotFound(f"no profile named {name!r} in {store.root}")
    if len(uids) > 1:
        raise ProfileNotFound(f"profile {name!r} exists for uids {', '.join(map(str, uids))}; "
                              f"give --uid")
    return uids[0]


def run_profiles(args: argparse.Namespace) -> int:
    """Run `swapd profiles ...` from parsed arguments; returns the exit status."""
    cmd = getattr(args, "profiles_command", None)
    if cmd is None:
        args._profiles_parser.print_help()
        return 0
    var = args.var
    if not os.path.lexists(var):
        print(f"swapd: --var {var} does not exist (give the VAR directory that holds vm/app_profile)",
              file=sys.stderr)
        return 1
    if not os.path.isdir(var):
        print(f"swapd: --var {var} is not a directory (give the VAR directory that holds vm/app_profile)",
              file=sys.stderr)
        return 1
    store = AppProfileStore(var)
    try:
        if cmd == "list":
            return _list(store, args)
        if getattr(args, "uid", None) is not None and not 0 <= args.uid <= 0xFFFFFFFE:
            print(f"swapd: --uid {args.uid} is not a uid (0..4294967294)", file=sys.stderr)
            return 2
        validate_app_name(args.name)
        if cmd == "show":
            if args.entries < 0:
                print(f"swapd: --entries {args.entries} must not be negative", file=sys.stderr)
                return 2
            return _show(store, args)
        if cmd == "rm":
            uid = _which_uid(store, args.name, args.uid)
            if not store.remove(uid, args.name):
                print(f"swapd: no profile named {args.name!r} for uid {uid} in {store.root}",
                      file=sys.stderr)
                return 1
            print(f"removed {store.path_for(uid, args.name)}")
            return 0
    except ProfileNameError as e:
        print(f"swapd: {e}", file=sys.stderr)
        return 2
    except (ProfileNotFound, ProfileFormatError, AppProfileTreeError) as e:
        print(f"swapd: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # e.g. VAR/vm is a file: name the path, not the errno
        where = e.filename or store.root
        print(f"swapd: cannot read the profile tree at {where}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"swapd: unknown profiles command {cmd!r}", file=sys.stderr)  # pragma: no cover
    return 2


def _list(store: AppProfileStore, args) -> int:
    infos = store.list(verify=True, quarantined=True)
    if args.json:
        json.dump({"tree": store.root, "profiles": [i.as_dict() for i in infos]}, sys.stdout,
                  indent=1)
        sys.stdout.write("\n")
        return 0
    if not infos:
        print(f"no profiles in {store.root}")
        return 0
    rows = []
    for i in infos:
        size = _fmt_size(i.size)
        if i.state == "quarantined":
            rows.append((i.app, i.uid, "-", "-", "-", size, "-",
                         f"QUARANTINED: {i.error} ({os.path.basename(i.path)})"))
        elif i.error and i.identity is None:
            rows.append((i.app, i.uid, "-", "-", "-", size, "-", f"DAMAGED: {i.error}"))
        elif i.error:  # the header reads, the rest does not
            rows.append((i.app, i.uid, i.pages, i.files, i.launches, size, _fmt_time(i.created_ns),
                         f"DAMAGED: {i.error}"))
        else:
            ident = i.identity
            rows.append((i.app, i.uid, i.pages, i.files, i.launches, size, _fmt_time(i.created_ns),
                         f"{ident.path} ino={ident.inode} mtime_ns={ident.mtime_ns}"))
    print(render_table(("APP", "UID", "PAGES", "FILES", "LAUNCH", "SIZE", "CREATED", "IDENTITY"), rows,
                       right=range(1, 6)))
    return 0


def _show(store: AppProfileStore, args) -> int:
    uid = _which_uid(store, args.name, args.uid)
    prof = store.read(uid, args.name)
    path = store.path_for(uid, args.name)
    counts = prof.file_page_counts()
    ident = prof.identity
    header = {"app": prof.app, "uid": prof.uid, "path": path,
              "identity": {"path": ident.path, "inode": ident.inode, "mtime_ns": ident.mtime_ns},
              "launches": prof.launches, "window_s": prof.window_s, "page_size": prof.page_size,
              "created_ns": prof.created_ns, "pages": prof.npages,
              "file_pages": prof.nfile_pages, "anon_pages": prof.nanon_pages,
              "files": len(prof.files)}
    if args.json:
        e = prof.entries
        files = prof.files
        entries = []
        for i in sorted(range(e.size), key=lambda j: int(e["order"][j])):
            fi = int(e["file"][i])
            entries.append({"file": None if fi == ANON else files[fi], "page": int(e["page"][i]),
                            "count": int(e["count"][i]), "first_ns": int(e["first_ns"][i]),
                            "order": int(e["order"][i])})
        json.dump({"header": header, "file_pages": counts, "anon_pages": prof.nanon_pages,
                   "entries": entries}, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    print(f"profile   {prof.app} (uid {prof.uid})  {path}")
    print(f"identity  {ident.path}  inode {ident.inode}  mtime_ns {ident.mtime_ns}")
    print(f"recorded  {_fmt_time(prof.created_ns)}  window {prof.window_s:g} s  "
          f"launches {prof.launches}  page size {prof.page_size}")
    print(f"pages     {prof.npages} ({prof.nfile_pages} file pages in {len(prof.files)} files, "
          f"{prof.nanon_pages} anonymous)")
    if counts or prof.nanon_pages:
        print("pages per file:")
        per_file = [(p, counts[p]) for p in sorted(counts)]
        if prof.nanon_pages:
            per_file.append(("(anonymous)", prof.nanon_pages))
        print(render_table(("FILE", "PAGES"), per_file, header=False, indent="  "))
    n = min(args.entries, prof.npages)
    if n:
        print(f"first {n} of {prof.npages} entries (first-touch order):")
        timeline = [(k, f"{t / 1e6:.3f}", c, page,
                     f if f is not None else f"(anonymous, address {page * prof.page_size:#x})")
                    for k, (t, f, page, c) in enumerate(prof.timeline(n))]
        print(render_table(("ORDER", "T+ms", "COUNT", "PAGE", "FILE"), timeline, right=range(0, 4), indent="  "))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swapd", description="swapd launch profiles")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_profiles_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python -m swapd.profiles_cli list|show|rm ...` (the same as `swapd profiles ...`)."""
    parser = build_parser()
    args = parser.parse_args(["profiles", *(sys.argv[1:] if argv is None else argv)])
    return run_profiles(args)


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["add_profiles_parser", "run_profiles", "main", "tree_of"]
