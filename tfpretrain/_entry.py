"""Process set-up for the command-line entry points, before TensorFlow loads.

``python -m recipes.<name>``, ``python -m tfpretrain.<tool>``, ``python -m benchmarks.<name>``
and ``python benchmarks/<name>.py`` import this module first (``tfpretrain/__init__.py`` does). A
library import (``import tfpretrain`` in the user's own code, or ``python -c``) changes nothing.
Three things:

**Transparent huge pages for malloc.** TensorFlow's CPU allocator is the C library's ``malloc``,
and a training step allocates and frees its large activations every step; the memory glibc maps
for them is faulted in by the kernel 4 KiB at a time, again and again. On a 2-core AMD EPYC a
MiniLM-L6 step at 128 tokens spent a third of its CPU time in the kernel on those page faults
(22.6 million minor faults in 20 steps); with glibc's ``glibc.malloc.hugetlb=1`` tunable malloc
asks for 2 MiB transparent huge pages (``madvise``) and the same steps ran 1.5 times as fast
(4.0 → 6.2 examples/s; benchmarks/finetune_speed.py, docs/performance.md). Tunables are read
when the process starts, so an entry point re-executes itself (same PID, arguments and
streams) with ``GLIBC_TUNABLES`` extended, on Linux with glibc 2.35 or later when the kernel's
transparent huge pages are not ``never``. ``TFPRETRAIN_HUGE_PAGES=0`` turns this off; a
``GLIBC_TUNABLES`` that already names ``glibc.malloc.hugetlb`` is left as it is. Child
processes inherit the setting.

**A memory pool for TensorFlow's CPU tensors.** Huge pages make each fault cheaper; a pool
removes most of them. With ``TF_CPU_ALLOCATOR_USE_BFC=true`` TensorFlow's CPU device allocates
through its best-fit-with-coalescing allocator (the one GPUs use), which keeps the memory it has
grown to and reuses it step after step instead of handing it back to ``malloc``. On the same
2-core AMD EPYC, fine-tuning MiniLM-L6 on SST-2 sentences ran at 1.1-1.6 times the examples/s
with a third of the system time and a quarter of the page faults (docs/performance.md). An entry
point sets it before TensorFlow loads unless the environment already names it
(``TF_CPU_ALLOCATOR_USE_BFC=false`` turns it off); child processes inherit it.

**Quiet C++ logging.** TensorFlow 2.21 logs through Abseil before anything calls
``absl::InitializeLog()``, so every message (oneDNN notices, "Could not find cuda drivers",
"failed call to cuInit", CPU-instruction notices) goes to stderr and ``TF_CPP_MIN_LOG_LEVEL`` does
not apply to them. Two copies of Abseil log: the one in ``libtensorflow_framework`` (exported, so
its minimum level can be set) and one linked privately into the Python extension, which logs only
while it loads. So an entry point

1. sets the exported copy's minimum level before TensorFlow is imported (its later lines too:
   "failed call to cuInit" on machines without a GPU, "oneDNN supports DT_INT64 only on ..."),
2. imports TensorFlow with file descriptor 2 pointed at /dev/null (the private copy's lines).

The level: ``TF_CPP_MIN_LOG_LEVEL`` when the user sets it (0 shows everything), else 0 with
``--verbose``, else 3 (only fatal errors; TensorFlow's errors reach the user as Python
exceptions anyway, and at level 2 notices logged as errors remain).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import platform
import sys

# absl::SetMinLogLevel(absl::LogSeverityAtLeast) in the Abseil release TensorFlow 2.21 links
# (tests/test_recipes.py checks that the installed TensorFlow still exports it).
_SET_MIN_LOG_LEVEL = "_ZN4absl12lts_2025081414SetMinLogLevelENS0_18LogSeverityAtLeastE"
_FATAL = 3
_ENTRY_PACKAGES = ("recipes.", "tfpretrain.", "benchmarks.")
_SCRIPT_FOLDERS = ("recipes", "benchmarks")
_PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_HUGETLB = "glibc.malloc.hugetlb"
_CPU_POOL = "TF_CPU_ALLOCATOR_USE_BFC"


def is_entry_point(argv: list[str] | None = None) -> bool:
    """Whether this process was started as ``python -m <one of our packages>.<module>`` or as a
    script in this project's ``recipes/`` or ``benchmarks/`` folder."""
    argv = list(getattr(sys, "orig_argv", []) if argv is None else argv)
    options = iter(argv[1:])
    for option in options:  # the interpreter's options, up to -m, -c or a script
        if option == "-m":
            return next(options, "").startswith(_ENTRY_PACKAGES)
        if option in ("-W", "-X"):
            next(options, None)
        elif option == "-c":
            return False
        elif not option.startswith("-"):  # a script: ours when in <project>/benchmarks or recipes
            folder = os.path.dirname(os.path.abspath(option))
            return (os.path.basename(folder) in _SCRIPT_FOLDERS
                    and os.path.dirname(folder) == _PROJECT)
    return False


def huge_pages_environment(environ: dict[str, str], libc: tuple[str, str],
                           thp_mode: str) -> dict[str, str] | None:
    """The environment to re-execute this entry point with so that malloc uses transparent
    huge pages, or None to run as it is. ``libc``: ``platform.libc_ver()``; ``thp_mode``: the
    kernel's transparent huge page mode (``always``, ``madvise``, ``never``; "" if unknown)."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if environ.get("TFPRETRAIN_HUGE_PAGES", "").strip() == "0" or _HUGETLB in tunables:
        return None
    name, version = libc
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:  # not "2.36"-like (also no libc found: "")
        return None
    if name != "glibc" or (major, minor) < (2, 35) or thp_mode not in ("always", "madvise"):
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, (tunables, f"{_HUGETLB}=1")))}


def kernel_thp_mode(path: str = "/sys/kernel/mm/transparent_hugepage/enabled") -> str:
    """The bracketed mode in ``path`` (``always [madvise] never`` → ``madvise``); "" if none."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return ""
    return text.partition("[")[2].partition("]")[0]


def use_huge_pages() -> None:
    """Re-executes this process with malloc on transparent huge pages where that applies (see
    the module docstring); returns only when it does not apply."""
    environ = huge_pages_environment(dict(os.environ), platform.libc_ver(), kernel_thp_mode())
    argv = list(getattr(sys, "orig_argv", []))
    if environ is None or not argv:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable] + argv[1:], environ)


def pool_cpu_memory(environ=os.environ) -> None:
    """Asks TensorFlow for its pooling CPU allocator (see the module docstring) unless
    ``environ`` already says; read when TensorFlow creates its CPU device, so before that."""
    environ.setdefault(_CPU_POOL, "true")


def chosen_level(argv: list[str]) -> int:
    """The C++ log level of this run: TF_CPP_MIN_LOG_LEVEL, else 0 with --verbose, else 3."""
    given = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "")
    if given.strip().isdigit():
        return min(int(given), _FATAL)
    return 0 if "--verbose" in argv else _FATAL


def set_min_log_level(level: int) -> bool:
    """Sets the minimum severity of TensorFlow's Abseil logging; False where it cannot."""
    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.origin:
        return False
    library = os.path.join(os.path.dirname(spec.origin), "libtensorflow_framework.so.2")
    try:
        # RTLD_LOCAL (the default): a global load clashes with OpenSSL in Python's hashlib.
        setter = getattr(ctypes.CDLL(library), _SET_MIN_LOG_LEVEL)
    except (OSError, AttributeError):  # another platform or another Abseil release
        return False
    setter.argtypes, setter.restype = [ctypes.c_int], None
    setter(level)
    return True


def quiet_tensorflow(argv: list[str]) -> None:
    """Steps 1-2 above (nothing to do when the chosen level is 0 or TensorFlow is loaded)."""
    level = chosen_level(argv)
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = str(level)  # TensorFlow's own logging, child processes
    if level == 0 or "tensorflow" in sys.modules:
        return
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    sys.stderr.flush()
    os.dup2(devnull, 2)
    try:
        set_min_log_level(level)
        import tensorflow  # noqa: F401
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


if is_entry_point():  # on import: tfpretrain/__init__.py imports this module first
    use_huge_pages()
    pool_cpu_memory()
    quiet_tensorflow(sys.argv)
