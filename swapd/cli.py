"""`swapd` command line: inspect a swap pool directory and the launch-profile tree.

Owns: `main(argv) -> int` and the `swapd status [DIR] [--json]` command. Works from any process,
with or without a live pool on DIR (swapd.status). `swapd profiles list|show|rm` is defined in
swapd.profiles_cli and only hooked in here. Bad input: one line on stderr, exit status 2
(usage) or 1 (the directory cannot be read).
"""

from __future__ import annotations

import argparse
import json
import sys

from swapd.errors import SwapError
from swapd.status import format_status, read_status

DEFAULT_DIR = "var/vm"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swapd",
        description="The default and dynamic pager: anonymous memory of the vmcore model in sparse "
                    "swap files (swapfile0, swapfile1, ...) that grow and shrink at watermarks. "
                    "A pool lives inside the process that builds it (vmcore's Kernel(swap=DIR)); "
                    "this command inspects a pool directory from outside.")
    from swapd import __version__

    parser.add_argument("--version", action="version", version=f"swapd {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    st = sub.add_parser(
        "status", help="show a swap directory: files, sizes, allocated bytes, slots, watermarks",
        description="Show the swap files in DIR (logical size, allocated bytes, used and free "
                    "slots and clusters), the watermarks, files added and removed, and the "
                    "pageout / pagein counters of the live pool holding DIR's lock, or say that "
                    "no pool holds it.")
    st.add_argument("directory", nargs="?", default=DEFAULT_DIR, metavar="DIR",
                    help=f"the swap directory (default: {DEFAULT_DIR})")
    st.add_argument("--json", action="store_true", help="print the status as JSON on stdout instead of text")
    from swapd.profiles_cli import add_profiles_parser

    add_profiles_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # no command: usage on stderr, as for a usage error
        parser.print_help(sys.stderr)
        return 2
    if args.command == "profiles":
        from swapd.profiles_cli import run_profiles

        return run_profiles(args)
    if args.command == "status":
        try:
            st = read_status(args.directory)
        except (SwapError, OSError) as e:
            print(f"swapd: {e}", file=sys.stderr)
            return 1
        if args.json:
            json.dump(st, sys.stdout, indent=1)
            sys.stdout.write("\n")
        else:
            print(format_status(st))
        return 0
    parser.error(f"unknown command {args.command}")  # pragma: no cover
    return 2


if __name__ == "__main__":
    sys.exit(main())
