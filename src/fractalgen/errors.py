"""The one exception type the command line turns into a single error line (no traceback)."""


class UserError(Exception):
    """Bad input from the user: a missing file, a wrong size, an out-of-range label ..."""
