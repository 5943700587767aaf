"""What every `maest` subcommand shares: exit statuses and turning errors into one line.

Exit status: 0 all done, 1 some tracks (or items) failed and the others were written, 2 usage or set-up error (the
message names the file, option or value), 130 interrupted (Ctrl-C or SIGTERM; finished work is kept), 141 the reader
of the output went away (`maest tag ... | head`: what a shell reports for a filter ended by SIGPIPE; outputs written
with --out are complete), 70 an internal error (a bug: the traceback is printed). A crash is never 1, so scripts can
tell "some tracks failed" from "it broke".
"""

import os
import signal
import sys
import traceback
from contextlib import contextmanager

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_CRASH = 70  # EX_SOFTWARE in sysexits.h
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


def error(message: str) -> None:
    """Prints a user error as one line on stderr."""
    print(f"error: {message}", file=sys.stderr)


@contextmanager
def terminate_as_interrupt():
    """`kill` (SIGTERM) ends a command the way Ctrl-C does, so finished work is written before exiting."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_command(function, args, interrupted_message: str = "interrupted") -> int:
    """Runs a subcommand's function and maps what escapes it to the exit statuses above."""
    # Imported here, not at the top: `maest --help` must not pay for importing the package (torch, transformers).
    from maest.utils.errors import MAESTError, one_line

    try:
        with terminate_as_interrupt():
            return int(function(args) or 0)
    except KeyboardInterrupt:
        print(interrupted_message, file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Python would report the unflushed rest at exit as a second error: stdout goes to /dev/null instead.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except (MAESTError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exception:
        error(one_line(exception))
        return EXIT_USAGE
    except Exception:  # a bug: show it, and never exit 1 (that means "some tracks failed")
        traceback.print_exc()
        print("internal error: this is a bug in maest; please report it with the traceback above", file=sys.stderr)
        return EXIT_CRASH
