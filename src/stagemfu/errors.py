"""The library's user-facing errors.

Every mistake a user can make (a missing file, a trace without the tables a number needs, a bad
option value) raises a subclass of :class:`StagemfuError` whose message is one line: the file,
what is wrong, and what to do. The command line turns it into exit status 2; nothing else in the
library prints or exits.
"""


class StagemfuError(Exception):
    """A problem with the user's input, explained in one line."""


class TraceError(StagemfuError):
    """A trace file is missing, unreadable, or lacks what the requested numbers need."""


class ExportError(StagemfuError):
    """An .nsys-rep/.qdrep report could not be converted to SQLite."""


class CategoryTableError(StagemfuError):
    """A user-supplied kernel category table is malformed."""


class ModelConfigError(StagemfuError):
    """A model name, config file or input shape cannot describe a model the analyzer knows."""


class MissingDependencyError(StagemfuError):
    """An optional dependency (an extra such as ``stagemfu[model]``) is needed but not installed."""


class CollectError(StagemfuError):
    """nsys cannot be found or run, or a collection's options do not fit together."""


class PeakError(StagemfuError):
    """No peak FLOP/s can be determined for the GPU and dtype without guessing."""


class FlopsFileError(StagemfuError):
    """A user-supplied FLOPs file (analyzer JSON or stage mapping) is malformed."""


class ReportFileError(StagemfuError):
    """A report JSON given to ``compare`` is unreadable or not a ``stagemfu.report/1`` document."""


class FlopsMismatchError(StagemfuError):
    """The FLOPs describe another shape of work than the trace holds (instance counts differ)."""


class OutputError(StagemfuError):
    """An output cannot be written: it would replace an input, or the disk or pipe refuses it."""


class CacheError(StagemfuError):
    """The cache of decompressed and exported traces cannot hold a trace (disk full, bad setting)."""
