"""The one exception type the command line turns into a single error line (no traceback)."""


class UserError(Exception):
    """Bad input from the user: a missing file, a wrong size, an out-of-range label ..."""


class WriteError(UserError, OSError):
    """A file could not be written (disk full, no permission ...): the message says which, why, and what
    was kept. An OSError too, so library callers that handle OSError still do."""
