"""Plots (PNG, SVG or PDF) of a locality report (vnodefs.locality.analyze): one readable figure.

Owns: `plot_locality(report, trace, path, ...)`, called by `vnodefs locality --plot FILE.png|.svg|.pdf`; `plot_format(path)`
(the format a --plot path asks for, also used by vmcore experiment).
Six panels, each with a title, axis labels and units: the LRU miss-ratio curve, the reuse (stack)
distance histogram, Denning's working-set size W(t, tau), the signed seek-distance histogram,
the run-length histogram, and every page access's file offset over request time, per file.

matplotlib is imported lazily inside the function with the Agg backend (no display needed), so
importing vnodefs (and starting the `vnodefs` command) stays fast; nothing else in vnodefs
imports this module at import time.

Caveats: the offset-over-time scatter draws at most `max_points` accesses (an even subsample,
stated in the panel title when it applies); colours name the 8 files with the most accesses,
the rest are grey.
"""

from __future__ import annotations

import os

import numpy as np

TOP_FILES = 8
#: the formats a --plot FILE may have, by its extension (no extension: png)
PLOT_FORMATS = ("png", "svg", "pdf")


def plot_format(path: str) -> str:
    """The image format of a plot file from its extension: png, svg or pdf (case-insensitive; no
    extension: png). ValueError (one line naming the file) for any other extension."""
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if not ext:
        return "png"
    if ext not in PLOT_FORMATS:
        raise ValueError(f"cannot write plot {path}: .{ext} is not a plot format (use .png, .svg or .pdf)")
    return ext


def _seek_bin_x(b: dict) -> float:
    """A position on a symmetric log axis for a signed seek bin: 0 at 0, +-(k+1) for [2^(k-1), 2^k)."""
    if b["sign"] == "0":
        return 0.0
    k = 1 if b["abs_lo"] == 0 else int(b["abs_lo"]).bit_length() + 1
    return float(k if b["sign"] == "+" else -k)


def plot_locality(rep: dict, trace, path: str, ops=None, page_size: int | None = None,
                  max_points: int = 100_000, dpi: int = 110) -> str:
    """Write the locality figure of `rep` (from analyze(trace, ...)) to `path` (PNG, SVG or PDF by
    its extension: plot_format); returns it.
    `trace` supplies the per-access offsets for the scatter (the same ops / page size as rep)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ops = tuple(ops or rep["ops"])
    ps = int(page_size or rep["page_size"])
    n = rep["page_accesses"]
    fig, axes = plt.subplots(2, 3, figsize=(17, 9.5), dpi=dpi)
    name = os.path.basename(rep["trace"] or "trace")
    fig.suptitle(f"Locality of {name}: {rep['requests']} requests ({', '.join(ops)}), {n} page accesses, "
                 f"footprint {rep['footprint_pages']} pages of {ps} B, sequential "
                 f"{100 * rep['sequential_fraction']:.1f}%, cache mode {rep['cache_mode']} "
                 f"(trace holds {rep['trace_holds']})", fontsize=11)

    # 1. MRC
    ax = axes[0, 0]
    mrc = rep["mrc"]
    if n:
        sizes = np.array(mrc["cache_pages"], dtype=float)
        ratio = np.array(mrc["miss_ratio"])
        top = max(rep["footprint_pages"], 1) * 2
        xs = np.append(np.maximum(sizes, 1), top)
        ys = np.append(ratio, ratio[-1])
        ax.step(xs, ys, where="post", color="C0", lw=1.8, label="LRU miss ratio")
        ax.axhline(mrc["cold_misses"] / n, color="grey", ls="--", lw=1, label="cold misses only")
        ax.axvline(max(rep["footprint_pages"], 1), color="C3", ls=":", lw=1, label="footprint")
        ax.set_xscale("log")
        ax.legend(fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_title("Miss-ratio curve (LRU, from stack distances)")
    ax.set_xlabel("cache size [pages] (log)")
    ax.set_ylabel("miss ratio [misses / page accesses]")
    ax.grid(alpha=0.3)

    # 2. reuse-distance histogram (log2 bins)
    ax = axes[0, 1]
    rd = rep["reuse_distance"]
    bins = rd["bins"]
    if bins:
        labels = [f"{b['lo']}" if b["hi"] - b["lo"] <= 1 else f"{b['lo']}-{b['hi'] - 1}" for b in bins]
        ax.bar(range(len(bins)), [b["count"] for b in bins], color="C1")
        ax.set_xticks(range(len(bins)))
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_title(f"Reuse (LRU stack) distance, log2 bins; {rd['cold']} cold accesses not shown")
    ax.set_xlabel("stack distance [distinct other pages]")
    ax.set_ylabel("page accesses [count]")
    ax.grid(alpha=0.3, axis="y")

    # 3. W(t, tau)
    ax = axes[0, 2]
    ws = rep["working_set"]
    for i, (tau, w) in enumerate(zip(ws["taus_s"], ws["w_pages"])):
        ax.plot(ws["t_s"], w, color=f"C{i}", lw=1.5, label=f"tau = {tau:g} s")
    ax.axhline(rep["footprint_pages"], color="grey", ls="--", lw=1, label="footprint")
    ax.set_title("Working-set size W(t, tau) (Denning)")
    ax.set_xlabel("request time t [s since first request]")
    ax.set_ylabel("distinct pages in (t - tau, t] [pages]")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)

    # 4. seek distance (signed, log bins)
    ax = axes[1, 0]
    sd = rep["seek_distance"]
    if sd["bins"]:
        xs = [_seek_bin_x(b) for b in sd["bins"]]
        cols = ["C2" if b["sign"] == "0" else "C0" if b["sign"] == "+" else "C3" for b in sd["bins"]]
        ax.bar(xs, [b["count"] for b in sd["bins"]], color=cols, width=0.8)
        ticks = sorted(set(xs))
        labs = []
        for x in ticks:
            k = int(abs(x))
            if k == 0:
                labs.append("0")
            elif k == 1:
                labs.append(("+" if x > 0 else "-") + "<1")
            else:
                labs.append(("+" if x > 0 else "-") + f"{1 << (k - 2)}")
        ax.set_xticks(ticks)
        ax.set_xticklabels(labs, rotation=60, ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.8)
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else ""))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_title("Seek distance per file (green: sequential, blue: forward, red: backward)")
    ax.set_xlabel("seek distance [pages, signed; bar = magnitudes from the label up to 2x]")
    ax.set_ylabel("requests [count, log]")
    ax.grid(alpha=0.3, axis="y")

    # 5. run lengths
    ax = axes[1, 1]
    rl = rep["run_length"]
    if rl["bins"]:
        labels = [f"{b['lo']}" if b["hi"] - b["lo"] <= 1 else f"{b['lo']}-{b['hi'] - 1}" for b in rl["bins"]]
        ax.bar(range(len(rl["bins"])), [b["count"] for b in rl["bins"]], color="C4")
        ax.set_xticks(range(len(rl["bins"])))
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_title(f"Sequential run lengths: {rl['runs']} runs, mean {rl['mean_pages']:.1f} pages")
    ax.set_xlabel("run length [pages], log2 bins")
    ax.set_ylabel("runs [count]")
    ax.grid(alpha=0.3, axis="y")

    # 6. offset over time per file
    ax = axes[1, 2]
    pages = trace.expand_pages(ops, page_size=ps)
    sub = ""
    if pages.size > max_points:
        pages = pages[np.linspace(0, pages.size - 1, max_points).astype(np.int64)]
        sub = f" (every {n // max_points}th access)"
    if pages.size:
        t0 = float(pages["t_ns"].min())
        fids, counts = np.unique(pages["file"], return_counts=True)
        top = fids[np.argsort(-counts, kind="stable")][:TOP_FILES]
        x = (pages["t_ns"] - t0) / 1e9
        y = pages["page"] * ps / 2**20
        rest = ~np.isin(pages["file"], top)
        if rest.any():
            ax.scatter(x[rest], y[rest], s=2, color="0.6", label="other files", rasterized=True)
        for i, f in enumerate(top.tolist()):
            m = pages["file"] == f
            label = trace.files.get(int(f), f"file {f}")
            if len(label) > 30:
                label = "..." + label[-27:]
            ax.scatter(x[m], y[m], s=2, color=f"C{i}", label=label, rasterized=True)
        ax.legend(fontsize=7, markerscale=4, loc="best")
    ax.set_title("File offset of each page access over time" + sub)
    ax.set_xlabel("request time [s since first request]")
    ax.set_ylabel("offset in file [MiB]")
    ax.grid(alpha=0.3)

    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, format=plot_format(path))
    plt.close(fig)
    return path
