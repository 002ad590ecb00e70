"""One error path for every command line: a user's mistake is one line and exit status 2, a bug a traceback.

Why: the project raises a ValueError (or a subclass: ConfigError, InputError, CheckpointError,
ImageDecodeError, ShardFormatError, PairError, SpaceError, SweepError, ...) or a FileNotFoundError
naming the culprit whenever an input is wrong, and a StorageError for storage it cannot reach or is
refused. A user should read that message, not the 20 lines of Python above it. Every CLI's `main`
is wrapped by `cli_main`:

- a user error (`is_user_error`) prints `error: <message>` (and, if the error has one, a `hint:`
  line) on stderr, credentials redacted, and exits with status 2 (`EXIT_USER_ERROR`);
- `--debug` on the command line, or `DUKD_DEBUG=1` in the environment, prints the traceback above it;
- anything else (a bug, a library failing) propagates with its traceback, as before.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from dukd_ray.storage import StorageError, redact_url

F = TypeVar("F", bound=Callable[..., Any])

EXIT_USER_ERROR = 2
DEBUG_FLAG = "--debug"
DEBUG_ENV = "DUKD_DEBUG"

# What a wrong command line or input raises: the project's convention (docs/architecture.md) is a
# ValueError (or subclass) naming the file/key/field, FileNotFoundError for what is missing, and
# StorageError for unreachable or refused storage; the other OSErrors here are paths of the wrong kind.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,  # also UnicodeDecodeError (a binary file where text was expected)
    StorageError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)

_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"]+")
_BARE_USERINFO = re.compile(r"[^\s/@'\"]+:[^\s/@'\"]+@")  # key:secret@bucket, a URL's scheme already cut


class UserError(ValueError):
    """A mistake in a command line or its inputs; the message names the flag or file and what was expected."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


def is_user_error(e: BaseException) -> bool:
    return isinstance(e, USER_ERRORS)


def redact_text(text: str) -> str:
    """`text` with every URL passed through `storage.redact_url` and any `key:secret@` left cut out."""
    text = _URL.sub(lambda m: redact_url(m.group()), text)
    return _BARE_USERINFO.sub("***@", text)


def describe(e: BaseException) -> str:
    """The one line (plus an optional `hint:` line) a user sees for `e`, credentials redacted."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:  # open(): "[Errno 2] ...: 'x'"
        message = f"{e.strerror}: {e.filename}"
    else:
        message = str(e) or type(e).__name__
    if isinstance(e, UnicodeDecodeError):
        message = f"not a text file ({message})"
    lines = [f"error: {_one_line(message)}"]
    hint = getattr(e, "hint", None)
    if hint:
        lines.append(f"hint: {_one_line(str(hint))}")
    return redact_text("\n".join(lines))


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def debug_requested(argv: Sequence[str] | None) -> bool:
    """`--debug` among the arguments (sys.argv when None), or DUKD_DEBUG set to a true value."""
    args = sys.argv[1:] if argv is None else argv
    env = os.environ.get(DEBUG_ENV, "").strip().lower()
    return DEBUG_FLAG in args or env not in ("", "0", "false", "no", "off")


def add_debug_arg(parser: Any) -> None:
    """The `--debug` flag every CLI accepts (`cli_main` reads it from the arguments themselves)."""
    parser.add_argument(
        DEBUG_FLAG,
        action="store_true",
        help=f"show the Python traceback of an error (also {DEBUG_ENV}=1); errors exit with status 2",
    )


def report(e: BaseException, debug: bool = False) -> None:
    """Print `e` as a user error on stderr: its traceback first when `debug`."""
    if debug:
        lines = traceback.format_exception(type(e), e, e.__traceback__)
        sys.stderr.write(redact_text("".join(lines)))
    print(describe(e), file=sys.stderr)


def cli_main(fn: F | None = None, *, returns_status: bool = True) -> Any:
    """Decorate a CLI's `main(..., argv=None)` so that a user error is one line and exit status 2.

    `returns_status`: the main returns an exit status (`sys.exit(main())`), and a user error returns 2;
    otherwise (a main that returns a result, e.g. a job's) a user error raises SystemExit(2).
    """

    def wrap(main: F) -> F:
        signature = inspect.signature(main)

        @functools.wraps(main)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return main(*args, **kwargs)
            except USER_ERRORS as e:
                argv = signature.bind_partial(*args, **kwargs).arguments.get("argv")
                report(e, debug=debug_requested(argv))
                if returns_status:
                    return EXIT_USER_ERROR
                raise SystemExit(EXIT_USER_ERROR) from None

        return wrapper  # type: ignore[return-value]

    return wrap(fn) if fn is not None else wrap
