"""Chunked `vnodefs export` and its parquet format.

Owns: `export_file(stream, out, fmt, ...)` (the csv / libcachesim export of vnodefs.export, done
one chunk of records at a time from a vnodefs.stream.TraceStream, so memory stays bounded by the
chunk whatever the trace's length), `export_parquet(path, out_path, ...)` and `read_parquet`
(its inverse), `PARQUET_SCHEMA`, `open_for_command`, `run_export_parquet` (the command's parquet
branch) and `add_chunk_option` (--chunk-records).

Parquet (pyarrow): one row per page access, in request order, the columns of the csv export plus
the libcachesim object id: t_ns (int64, the request's CLOCK_MONOTONIC start), pid (int32, 0 =
the kernel), op (string, dictionary-encoded), file (uint32), path (string, dictionary-encoded,
relative to the mount root), page (int64, offset // page_size), obj_id (int64, file << 40 | page,
vnodefs.locality.page_keys). One row group per chunk of records; zstd compression. The file's
key-value metadata carries the trace's header (`vnodefs.header`, JSON) and the page size.
Read it with pandas.read_parquet, polars.read_parquet or DuckDB's read_parquet('FILE').

Invariants: export_file writes exactly what vnodefs.export.export writes for the loaded trace
(tests compare the bytes); read_parquet gives back exactly the exported rows. Output is written
to a temporary name beside the target and renamed when complete.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

import numpy as np

from vnodefs.stream import CHUNK_RECORDS, StreamProgress, TraceStream, _positive_int
from vnodefs.trace import OP_NAMES, PAGES_DTYPE

FILE_SHIFT = 40


def add_chunk_option(p) -> None:
    p.add_argument("--chunk-records", type=_positive_int("--chunk-records"), default=CHUNK_RECORDS, metavar="N",
                   help=f"records read per chunk: the trace is read in chunks, so memory stays bounded whatever "
                        f"its length (default {CHUNK_RECORDS})")


def open_for_command(cmd: str, path: str, chunk_records: int = CHUNK_RECORDS):
    """(TraceStream, None) or (None, exit status) after one clear line on stderr; a truncated
    trace is a one-line warning."""
    from vnodefs.locality import load_for_command

    ts, status = load_for_command(cmd, path, lambda p: TraceStream(p, chunk_records))
    if ts is None:
        return None, status
    if ts.truncated:
        print(f"vnodefs {cmd}: warning: {path}: trace is truncated (a crash?): exporting {ts.records} whole "
              f"records, dropped a partial record of {ts.tail_bytes} bytes", file=sys.stderr)
    return ts, None


def _chunks(ts: TraceStream, ops, page_size, progress):
    """(chunk Trace, its expand_pages rows) for each chunk of the stream."""
    ps = int(page_size or ts.page_size)
    if ps <= 0:
        raise ValueError(f"page size must be positive, not {ps}")
    for recs in ts:
        tr = ts.trace_of(recs)
        pages = tr.expand_pages(ops, page_size=ps)
        yield tr, pages, ps
        if progress is not None:
            progress(ts.read_records, ts.records)


def export_file(ts: TraceStream, out, fmt: str = "csv", ops=("read", "write"), page_size: int | None = None,
                progress=None) -> int:
    """vnodefs.export.export of the whole trace of `ts`, one chunk at a time; returns the rows."""
    from vnodefs.export import FORMATS, export

    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    if progress is None:
        progress = StreamProgress("vnodefs export", ts.records)
    n = 0
    t0 = None
    first = True
    for tr, pages, ps in _chunks(ts, ops, page_size, progress):
        if t0 is None and pages.size:
            t0 = int(pages["t_ns"][0])
        if not pages.size and not first:
            continue
        # export() splits the chunk into pages again: cheap next to the formatting
        n += export(tr, out, fmt, ops=ops, page_size=ps, header=first, t0_ns=t0)
        first = False
    if first:  # an empty trace: the header alone
        from vnodefs.trace import RECORD_DTYPE, Trace

        export(Trace(records=np.zeros(0, dtype=RECORD_DTYPE), files={}, header=ts.header, path=ts.path),
               out, fmt, ops=ops, page_size=page_size or ts.page_size)
    return n


def parquet_schema():
    import pyarrow as pa

    return pa.schema([("t_ns", pa.int64()), ("pid", pa.int32()), ("op", pa.dictionary(pa.int8(), pa.string())),
                      ("file", pa.uint32()), ("path", pa.dictionary(pa.int32(), pa.string())),
                      ("page", pa.int64()), ("obj_id", pa.int64())])


def _table(pages: np.ndarray, files: dict[int, str], schema):
    import pyarrow as pa

    opc = pages["op"]
    op_codes = np.unique(opc)
    op_names = [OP_NAMES.get(int(c), str(int(c))) for c in op_codes]
    op_idx = np.searchsorted(op_codes, opc).astype(np.int8)
    fids = pages["file"]
    uf = np.unique(fids)
    paths = [files.get(int(f), "").encode("utf-8", "surrogateescape").decode("utf-8", "replace") for f in uf]
    path_idx = np.searchsorted(uf, fids).astype(np.int32)
    key = (fids.astype(np.int64) << FILE_SHIFT) | pages["page"].astype(np.int64)
    cols = [pa.array(pages["t_ns"].astype(np.int64)), pa.array(pages["pid"].astype(np.int32)),
            pa.DictionaryArray.from_arrays(pa.array(op_idx), pa.array(op_names, pa.string())),
            pa.array(fids.astype(np.uint32)),
            pa.DictionaryArray.from_arrays(pa.array(path_idx), pa.array(paths, pa.string())),
            pa.array(pages["page"].astype(np.int64)), pa.array(key)]
    return pa.Table.from_arrays(cols, schema=schema)


def export_parquet(ts: TraceStream, out_path: str, ops=("read", "write"), page_size: int | None = None,
                   progress=None) -> int:
    """Write the page-split trace of `ts` to the parquet file `out_path` (see the module docstring),
    one row group per chunk; returns the rows written."""
    import pyarrow.parquet as pq

    schema = parquet_schema().with_metadata({"vnodefs.header": json.dumps(ts.header, sort_keys=True),
                                             "vnodefs.page_size": str(int(page_size or ts.page_size)),
                                             "vnodefs.trace": os.path.abspath(ts.path)})
    if progress is None:
        progress = StreamProgress("vnodefs export", ts.records)
    n = 0
    with pq.ParquetWriter(out_path, schema, compression="zstd") as w:
        for tr, pages, _ in _chunks(ts, ops, page_size, progress):
            if pages.size:
                w.write_table(_table(pages, tr.files, schema))
                n += int(pages.size)
    return n


def read_parquet(path: str) -> tuple[np.ndarray, dict[int, str]]:
    """Read a parquet export back: (rows as vnodefs.trace.PAGES_DTYPE, file id -> path)."""
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    names = set(t.column_names)
    need = {"t_ns", "pid", "op", "file", "path", "page", "obj_id"}
    if not need <= names:
        raise ValueError(f"{path} is not a vnodefs parquet export (columns must include {', '.join(sorted(need))})")
    from vnodefs.trace import OPS

    out = np.empty(t.num_rows, dtype=PAGES_DTYPE)
    out["t_ns"] = t.column("t_ns").to_numpy()
    out["pid"] = t.column("pid").to_numpy()
    ops = t.column("op").to_pylist()
    out["op"] = np.array([OPS[o] for o in ops], dtype=np.uint8) if ops else np.zeros(0, np.uint8)
    out["file"] = t.column("file").to_numpy()
    out["page"] = t.column("page").to_numpy()
    files = dict(zip(t.column("file").to_pylist(), t.column("path").to_pylist()))
    return out, files


def run_export_parquet(args, out_path: str | None) -> int:
    """`vnodefs export --format parquet` for parsed args (output already checked writable)."""
    if out_path is None:
        print("vnodefs export: --format parquet writes a file: give -o FILE.parquet", file=sys.stderr)
        return 2
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        print("vnodefs export: --format parquet needs pyarrow (pip install pyarrow)", file=sys.stderr)
        return 2
    ts, status = open_for_command("export", args.trace, args.chunk_records)
    if ts is None:
        return status
    tmp = os.path.join(os.path.dirname(os.path.abspath(out_path)), f".{os.path.basename(out_path)}.tmp-{os.getpid()}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            n = export_parquet(ts, tmp, ops=args.ops, page_size=args.page_size)
        os.replace(tmp, out_path)
    except ValueError as e:
        print(f"vnodefs export: {args.trace}: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"vnodefs export: cannot write {out_path}: {e.strerror or e}", file=sys.stderr)
        return 2
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"vnodefs export: {n} page accesses (parquet) written to {out_path}", file=sys.stderr)
    return 0
