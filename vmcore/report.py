"""Terminal output of the three command-line tools: report tables and the progress bar, drawn by rich.

Owns how a report table looks (`table`, `render`) and the one progress bar (`ProgressBar`, with its
`[####....]` glyph, `bar_text`). vmcore's wiring layer, vnodefs and swapd all draw through this
module (a public helper of vmcore, as vmcore.types is), so rich's settings live in one place and
the three tools look alike.

Invariants:
* A rendered table is plain text whatever stdout is: no ANSI codes, ASCII only, the header names
  on the first line (right-aligned over right-aligned columns), an optional rule of dashes under
  it, one line per row, columns two spaces apart, trailing spaces stripped. It is laid out on a
  console as wide as the table needs, so nothing is wrapped or cut to a terminal's 80 columns:
  grep, awk and `cut` read it as they read a hand-aligned table.
* Cell text is taken literally: no rich markup (`[bold]`), emoji codes or highlighting is
  interpreted, so a path holding brackets or colons prints as it is.
* The bar draws on its own stream (stderr) and nowhere else; it never redirects stdout, so JSON on
  stdout is untouched. On a terminal rich's live display redraws it in place; on anything else
  (`--progress` into a pipe or a file) each redraw is `\\r` and the bar's plain text, no ANSI
  codes, and the bar's last state ends with a newline.

Called by vmcore.cli (the `vmcore replay` bar; its counters keep vm_stat's own format),
vmcore.experiment (the run lines, the seeding table), vmcore.experiment_sweep (bar and table),
vmcore.wired (the wired-memory report), vnodefs.locality, vnodefs.stream and vnodefs.demo (their
report tables), swapd.status and swapd.profiles_cli (`swapd status`, `swapd profiles list|show`).

Caveats: rich is imported on first use, inside these functions, so a tool that prints only JSON
does not pay for it and importing vmcore's model does not import rich.
"""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Iterable, Sequence

#: columns are this far apart (rich's cell padding on the right, plus the rule box's blank divider)
GAP = 2
#: the width a table is laid out in: wider than any table we print, so no cell is wrapped or cut
WIDTH = 100_000


def _rule_box():
    """A box that draws only a rule of dashes under the header (the column dividers are blanks)."""
    from rich.box import Box

    return Box("    \n"
               "    \n"
               " -  \n"
               "    \n"
               "    \n"
               "    \n"
               "    \n"
               "    \n", ascii=True)


def table(columns: Sequence[str], rows: Iterable[Sequence[object]] = (), *, right: Iterable[int] | None = None,
          rule: bool = False, header: bool = True):
    """A rich.table.Table of plain-text cells: `columns` are the header names, `rows` the rows
    (cells are str()-ed; None prints as `-`). Columns whose index is in `right` are right-aligned
    (by default every column after the first); `rule` draws dashes under the header; `header=False`
    leaves the header line out (a list aligned as a table). Cells never wrap; add rows later with
    `.add_row(...)`."""
    from rich.table import Table

    right = set(range(1, len(columns)) if right is None else right)
    ruled = rule and header
    # the rule's box draws a blank divider between columns; without a box the padding is the whole gap
    t = Table(box=_rule_box() if ruled else None, show_edge=False, pad_edge=False,
              padding=(0, GAP - 1 if ruled else GAP, 0, 0),
              show_header=header, header_style=None, expand=False, highlight=False)
    for i, name in enumerate(columns):
        t.add_column(name, justify="right" if i in right else "left", no_wrap=True, overflow="fold")
    for r in rows:
        t.add_row(*("-" if c is None else str(c) for c in r))
    return t


def _plain_console(file):
    from rich.console import Console

    return Console(file=file, width=WIDTH, color_system=None, force_terminal=False, force_jupyter=False,
                   force_interactive=False, legacy_windows=False, markup=False, emoji=False, highlight=False,
                   soft_wrap=False)


def render(renderable, indent: str = "") -> str:
    """The plain text of a rich renderable (a `table(...)`): no ANSI codes, each line after
    `indent`, trailing spaces stripped, no trailing newline."""
    buf = io.StringIO()
    _plain_console(buf).print(renderable)
    return "\n".join((indent + ln).rstrip() for ln in buf.getvalue().rstrip("\n").split("\n"))


def render_table(columns: Sequence[str], rows: Iterable[Sequence[object]], *, indent: str = "", **kw) -> str:
    """`render(table(columns, rows, **kw), indent)`: the table's lines, as one string."""
    return render(table(columns, rows, **kw), indent)


# ---- the progress bar ----------------------------------------------------------------------------------

def bar_text(done: float, total: float, width: int = 24) -> str:
    """`[##########..............]`: `width` cells, `#` for the done fraction (rounded down)."""
    frac = 0.0 if total <= 0 else min(max(done / total, 0.0), 1.0)
    n = int(width * frac)
    return "[" + "#" * n + "." * (width - n) + "]"


def scaled(x: float | None) -> str:
    """A count with an SI prefix and three significant digits: 999, 1.00k, 42.0k, 420k, 1.00M."""
    if x is None:
        return "?"
    for unit, d in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= d * 0.9995:
            v = x / d
            return f"{v:.2f}{unit}" if v < 9.995 else f"{v:.1f}{unit}" if v < 99.95 else f"{v:.0f}{unit}"
    return f"{x:.0f}" if float(x).is_integer() or abs(x) >= 100 else f"{x:.3g}"


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    m, sec = divmod(int(seconds + 0.5), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{sec:02d}"


def _column(width: int, unit: str, scale: bool):
    """The bar as one rich column: `label  42.0% [####......] 420k/1.00M accesses 1.20Maccesses/s
    ETA 0:00:03` (`note`, a task field, follows the counts). One column, so a terminal narrower than
    the bar cuts its end (with an ellipsis) instead of squeezing every part."""
    from rich.progress import ProgressColumn
    from rich.table import Column
    from rich.text import Text

    count = scaled if scale else (lambda v: "?" if v is None else f"{v:.0f}")

    class _Line(ProgressColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            return Text.assemble(
                f"{task.description} ", (f"{task.percentage:5.1f}%", "bold"), " ",
                (bar_text(task.completed, task.total or 0, width), "green"),
                f" {count(task.completed)}/{count(task.total)} {unit}{task.fields.get('note') or ''}"
                f" {scaled(speed)}{unit}/s ETA ", (_eta(task.time_remaining), "cyan"))

    return _Line(table_column=Column(no_wrap=True, overflow="ellipsis"))


class ProgressBar:
    """A one-line progress bar (rich.progress), e.g. `vmcore replay  42.0% [##########..............]
    420k/1.00M accesses 1.20Maccesses/s ETA 0:00:03`. Called as `bar(done, total[, note])`: draws
    on the first call, then at most every `interval` seconds, and the final state on close(),
    which ends the line; a later call starts a new bar. Does nothing when not `enabled`.

    On a terminal rich's live display redraws it (colours, the cursor hidden while it runs);
    elsewhere each redraw is `\\r` plus the bar's plain text. It never touches stdout."""

    def __init__(self, label: str, enabled: bool, stream=None, interval: float = 0.2, unit: str = "accesses",
                 width: int = 24, scale: bool = True):
        self.label, self.enabled, self.interval, self.unit = label, enabled, interval, unit
        self.width, self.scale = width, scale
        self.stream = stream if stream is not None else sys.stderr
        self._progress = self._task = None
        self._live = False
        self._last = 0.0

    def __call__(self, done: int, total: int, note: str = "") -> None:
        if not self.enabled:
            return
        first = self._progress is None
        if first:
            self._start(total)
        self._progress.update(self._task, completed=done, total=total, note=note)
        now = time.monotonic()
        if first or now - self._last >= self.interval:
            self._last = now
            self._draw(first)

    def _start(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import Progress as RichProgress

        isatty = getattr(self.stream, "isatty", None)
        self._live = bool(isatty and isatty())
        console = (Console(file=self.stream, highlight=False, markup=False, emoji=False) if self._live
                   else _plain_console(self.stream))
        self._progress = RichProgress(_column(self.width, self.unit, self.scale), console=console,
                                      auto_refresh=False, transient=False, redirect_stdout=False,
                                      redirect_stderr=False, speed_estimate_period=30.0)
        self._task = self._progress.add_task(self.label, total=total, note="")

    def line(self) -> str:
        """The bar's current state as plain text (empty before the first call)."""
        if self._progress is None:
            return ""
        return render(self._progress.make_tasks_table(self._progress.tasks))

    def _draw(self, first: bool) -> None:
        if self._live:
            self._progress.start() if first else self._progress.refresh()  # start() draws the first state
        else:
            self.stream.write("\r" + self.line())
            self.stream.flush()

    def close(self) -> None:
        if self._progress is None:
            return
        if self._live:
            self._progress.stop()  # draws the final state and ends the line
        else:
            self.stream.write("\r" + self.line() + "\n")
            self.stream.flush()
        self._progress = self._task = None
