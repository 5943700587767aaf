"""The one base class of the errors a user can cause and fix (bad input, bad settings, missing files).

Library code raises these with a one-line message that names the problem (file, shape, value); the command line
(`maest.cli`) prints the message alone, without a traceback, and exits with status 2. Anything else that escapes a
command is a bug: the command line prints its traceback and exits with `EXIT_CRASH`.
"""


class MAESTError(Exception):
    """A user error: the message is one line that names the file, setting or value at fault."""


def one_line(exception: BaseException) -> str:
    """The message of an exception on one line (OSError's `[Errno 2] No such file or directory: 'x'` included)."""
    text = str(exception) or type(exception).__name__
    return " ".join(text.split())
