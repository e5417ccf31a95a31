"""What every command-line entry point shares: --help, --debug, one-line errors, exit codes."""

import os
import sys

from tfpretrain import config as config_lib

# Errors a user can fix from the message alone: no traceback unless --debug.
_USER_ERRORS = (ValueError, OSError, KeyError)  # OSError: missing files, unwritable or full disks


def run(main, config, argv=None, description=""):
    """Parses ``argv`` into ``config`` and calls ``main(config)``; returns the exit code.

    ``--help`` prints ``description`` and every key with its default; errors print one line
    (``error: ...``) and return 2; ``--debug`` shows the traceback instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if "--help" in argv or "-h" in argv:
        print(description.strip())
        print("\nOptions (--key=value; --config FILE reruns a saved config.json; --debug shows tracebacks):")
        print("\n".join(config_lib.help_text(config)))
        return 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        config_lib.parse_args(config, argv)
        main(config)
    except _USER_ERRORS + (RuntimeError,) as error:
        if debug:
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        return getattr(error, "exit_code", 2)
    return 0
