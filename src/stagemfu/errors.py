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
