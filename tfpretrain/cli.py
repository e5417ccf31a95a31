"""What every command-line entry point shares: --help, --debug, one-line errors, exit codes."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import Any

from tfpretrain import config as config_lib

# Errors a user can fix from the message alone: no traceback unless --debug.
_USER_ERRORS = (ValueError, OSError, KeyError)  # OSError: missing files, unwritable or full disks


def _is_io_error(error):
    """TensorFlow's own file errors (a full disk, a missing or unreadable file)."""
    errors = getattr(sys.modules.get("tensorflow"), "errors", None)
    io_errors = ("ResourceExhaustedError", "PermissionDeniedError", "NotFoundError",
                 "DataLossError")
    return errors is not None and isinstance(error, tuple(getattr(errors, n) for n in io_errors))


def run(main: Callable[[Any], object], config: Any, argv: list[str] | None = None,
        description: str = "") -> int:
    """Parses ``argv`` into ``config`` and calls ``main(config)``; returns the exit code.

    ``--help`` prints ``description`` and every key with its default; errors print one line
    (``error: ...``) and return 2 (SIGTERM: 143, Ctrl-C: 130); ``--debug`` shows the traceback
    instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a not in ("--debug", "--verbose")]  # --verbose: see _entry.py
    if "--help" in argv or "-h" in argv:
        print(description.strip())
        print("\nOptions (--key=value; --config FILE reruns a saved config.json; "
              "--debug shows tracebacks; --verbose shows TensorFlow's C++ logging):")
        print("\n".join(config_lib.help_text(config)))
        return 0
    try:
        config_lib.parse_args(config, argv)
        main(config)
    except KeyboardInterrupt:  # Ctrl-C outside the training loop, which handles its own
        if debug:
            raise
        print("\nerror: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001  (only the kinds below are turned into one line)
        if debug or not (isinstance(error, _USER_ERRORS + (RuntimeError,)) or _is_io_error(error)):
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", message)
        print(f"error: {message}", file=sys.stderr)
        return getattr(error, "exit_code", 2)
    return 0
