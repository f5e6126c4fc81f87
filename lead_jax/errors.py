"""Errors that mean "your input is bad", as opposed to a bug in lead_jax.

Binaries print these as one line on stderr and exit with status 2, without a traceback
(`experiments/_cli.py`); anything else is a bug and keeps its traceback.
"""


class InputError(ValueError):
  """Bad input: the message names the file and line, the array and row, or the id."""


class CorruptDataError(InputError):
  """Stored data fails its checksum, is truncated, or is otherwise unreadable."""
