#!/usr/bin/env bash
# Set up everything this project needs on a fresh Debian 12 machine (run as root, or with sudo for
# the apt step): the FUSE 3 packages, fio, a virtual environment in .venv with the project and its
# test extras. Safe to run again; it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need=()
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
[ -e /usr/lib/x86_64-linux-gnu/libfuse3.so.3 ] || [ -e /usr/lib/aarch64-linux-gnu/libfuse3.so.3 ] \
    || ldconfig -p 2>/dev/null | grep -q 'libfuse3\.so\.3' || need+=(libfuse3-3)
command -v fio >/dev/null 2>&1 || need+=(fio)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${need[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ ! -e /dev/fuse ]; then
    $SUDO modprobe fuse 2>/dev/null || echo "setup: warning: /dev/fuse is missing; FUSE mounts will fail" >&2
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
# the parquet export (pyarrow) and the sweeps' Dask cluster (dask.distributed) must import
.venv/bin/python -c 'import pyarrow.parquet, dask.distributed' \
    || { echo "setup: pyarrow or dask.distributed did not install" >&2; exit 1; }
echo "setup: ready (.venv)" >&2
