"""The console: which log lines a run prints, and rate-limited progress lines.

    logs.setup(verbose=False)    # what every binary does first (experiments/_cli.py)
    p = logs.Progress("translate a__to__b", total=8000, unit="rows")
    for block in ...:
      p.update(len(block))       # at most one line every EVERY_S seconds, and one at the end

Quiet (the default) prints lead_jax's own INFO lines — stage headers and summaries, and
progress lines with their rate and ETA — as `HH:MM:SS message`, and every WARNING or worse
from anyone in absl's usual format. INFO from other libraries (Orbax's handler registries
and save events, jax's backend probing) is dropped, and XLA's C++ logging is held at
WARNING (`TF_CPP_MIN_LOG_LEVEL=1` unless the environment sets it; jaxlib reads it when
imported). A lead_jax line logged with `extra=logs.DETAIL` (per-pair detail) is
verbose-only too. Verbose prints every INFO line in absl's format, as a plain absl binary.
"""

from __future__ import annotations

import functools
import logging as pylogging
import os
import time

from absl import logging

EVERY_S = 30.0  # seconds between two progress lines of one loop (and one at its end)
DETAIL = {"lead_jax_detail": True}  # `extra=` of an INFO line shown only when verbose
_PKG = os.path.dirname(os.path.realpath(__file__)) + os.sep
_ABSL_FORMAT: list = []  # the absl handler's own formatter, kept across `setup` calls


@functools.lru_cache(maxsize=1024)
def _ours(pathname: str) -> bool:
  return os.path.realpath(pathname).startswith(_PKG)


class _Quiet(pylogging.Filter):
  """Keeps WARNING and worse, and lead_jax's own INFO lines that are not `DETAIL`."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    if record.levelno >= pylogging.WARNING:
      return True
    return not getattr(record, "lead_jax_detail", False) and _ours(record.pathname)


class _Short(pylogging.Formatter):
  """`HH:MM:SS message` for INFO lines; absl's own format for warnings and errors."""

  def __init__(self, full: pylogging.Formatter):
    super().__init__()
    self.full = full

  def format(self, record: pylogging.LogRecord) -> str:
    if record.levelno >= pylogging.WARNING:
      return self.full.format(record)
    stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
    return f"{stamp} {record.getMessage()}"


def set_xla_logging(verbose: bool) -> None:
  """XLA's C++ log level: INFO when verbose, else WARNING; a level in the environment wins.

  jaxlib reads `TF_CPP_MIN_LOG_LEVEL` once, when it is first imported: call this before
  `import jax` (experiments/_cli.py does, at its own import).

  Args:
    verbose: let XLA's INFO lines through.
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "1")


def setup(verbose: bool) -> None:
  """Sets what the console shows: quiet (lead_jax and warnings) or verbose (every INFO).

  Calling it again replaces the earlier choice. XLA's level (`set_xla_logging`, called
  here too) only takes effect if jax is not imported yet.

  Args:
    verbose: show every library's INFO lines, in absl's format.
  """
  set_xla_logging(verbose)
  handler = logging.get_absl_handler()
  for f in [f for f in handler.filters if isinstance(f, _Quiet)]:
    handler.removeFilter(f)
  if not _ABSL_FORMAT:
    _ABSL_FORMAT.append(handler.python_handler.formatter)
  if verbose:
    handler.setFormatter(_ABSL_FORMAT[0])
  else:
    handler.addFilter(_Quiet())
    handler.setFormatter(_Short(_ABSL_FORMAT[0]))


def duration(seconds: float) -> str:
  """A short duration: `42s`, `3m05s`, `2h07m`.

  Args:
    seconds: the duration.

  Returns:
    The text.
  """
  s = max(0, round(seconds))
  if s < 60:
    return f"{s}s"
  if s < 3600:
    return f"{s // 60}m{s % 60:02d}s"
  return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
  """A loop's progress as log lines: `name: 1024/1500 rows, 412.3 rows/s, ETA 1s`.

  A line is logged (INFO) when `every_s` has passed since the last one, and always when the
  count reaches `total`; that last line gives the time taken instead of the ETA. The rate
  counts what this run did, from `start` (the count a resumed loop begins at).

  Args:
    name: what is counted, e.g. `retrieval closed_form` (the line's prefix).
    total: the count when done.
    unit: the counted things, plural (`rows`, `steps`, `stitches`).
    start: the count already done when the loop begins.
    every_s: seconds between two lines.
    clock: the time source (seconds; tests pass a fake one).

  Attributes:
    done: the count so far.
    lines: how many lines were logged.
  """

  def __init__(
      self,
      name: str,
      total: int,
      unit: str = "rows",
      *,
      start: int = 0,
      every_s: float = EVERY_S,
      clock=time.monotonic,
  ):
    self.name, self.total, self.unit, self.every_s, self.clock = name, total, unit, every_s, clock
    self.start = self.done = start
    self.t0 = self._last = clock()
    self.lines = 0

  def update(self, n: int = 1) -> None:
    """Counts `n` more; logs a line if one is due.

    Args:
      n: how many were done since the last call.
    """
    self.set(self.done + n)

  def set(self, done: int) -> None:
    """Sets the count; logs a line if one is due.

    Args:
      done: the count so far.
    """
    self.done = done
    now = self.clock()
    if done >= self.total or now - self._last >= self.every_s:
      self._last = now
      self.lines += 1
      logging.info("%s", self.line(now))

  def line(self, now: float | None = None) -> str:
    """The progress line as of `now` (default: the clock's time).

    Args:
      now: the time, in the clock's seconds.

    Returns:
      `name: done/total unit, rate unit/s, ETA …` (`, in …` once done).
    """
    elapsed = max((self.clock() if now is None else now) - self.t0, 1e-9)
    rate = (self.done - self.start) / elapsed
    head = f"{self.name}: {self.done}/{self.total} {self.unit}, {rate:.1f} {self.unit}/s"
    if self.done >= self.total:
      return f"{head}, in {duration(elapsed)}"
    eta = (self.total - self.done) / rate if rate > 0 else float("inf")
    return f"{head}, ETA {duration(eta) if eta != float('inf') else '?'}"
