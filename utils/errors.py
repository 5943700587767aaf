"""The one base class of the errors a user can cause and fix (bad input, bad settings, missing files), and the
wording helpers of their messages.

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


def settings_difference(expected: dict, found: dict, here: str = "now") -> str:
    """The settings that differ, one `key: FOUND there, EXPECTED <here>` each ("now": this run; or "in the index",
    "on the driver"), in key order; a weights digest shortened to 12 hex digits (the model's name may be the same)."""
    keys = sorted(set(expected) | set(found))
    return ", ".join(_setting_change(key, found.get(key), expected.get(key), here) for key in keys if expected.get(key) != found.get(key))


def _setting_change(key: str, there, expected, here: str) -> str:
    if key != "weights":
        return f"{key}: {there!r} there, {expected!r} {here}"
    if there is None:
        return f"weights: not recorded there (written by an older maest), sha256 {str(expected)[:12]} {here}"
    return f"weights: sha256 {str(there)[:12]} there, {str(expected)[:12]} {here} (the model's weights or config changed)"
