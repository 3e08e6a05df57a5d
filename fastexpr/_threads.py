"""How many threads the CPU backends use, and what happens after ``fork``.

fastexpr decides the thread count itself and hands it to every backend explicitly (the C++
kernel's ``threads`` argument, ``numba.set_num_threads``, ``torch.set_num_threads``), so that
no library's global setting leaks into another's: numba's OpenMP layer, for one, sets the
process-wide OpenMP thread count to the number of cores when it starts.

The count is, first to last: ``measure(..., threads=n)``; then, for the cpu backend,
``OMP_NUM_THREADS`` (its first entry) or the cores this process may run on, for numba its own
setting (``NUMBA_NUM_THREADS``, ``numba.set_num_threads``), for torch its own
(``torch.set_num_threads``). GNU OpenMP cannot restart its worker threads in a
``fork``-ed child, so a process forked from one that had native threads running (an OpenMP or
numba pool, torch's) runs fastexpr on one thread: ``multiprocessing`` "fork" pools work, one
thread per worker.
"""
from __future__ import annotations

import contextlib
import operator
import os
import threading

from ._checks import is_integer

_local = threading.local()  # .threads: the count ``measure`` asked for in this thread
_forked_from_threads = False  # this process was forked from one that had native threads


def _native_threads() -> int:
    """Threads of this process (Linux: /proc/self/task); 2 when unknown, which is the safe answer."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 2


_parent_threads = 1


def _before_fork() -> None:
    global _parent_threads
    _parent_threads = _native_threads()


def _after_fork_in_child() -> None:
    global _forked_from_threads
    _forked_from_threads = _forked_from_threads or _parent_threads > 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def forked() -> bool:
    """True in a process forked from one with native threads running: parallel regions would hang."""
    return _forked_from_threads


def default_threads() -> int:
    """``OMP_NUM_THREADS`` (first entry) if it is a positive integer, else the usable cores."""
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


#: Most threads one call may ask for: far beyond any machine's cores, yet well inside what the
#: thread pools can start (torch's crashed at 100,000 and the extension's int takes < 2^31).
MAX_THREADS = 1024


def check(threads) -> int | None:
    """``threads`` as given to ``measure``: None, or an int from 1 to MAX_THREADS (else TypeError/ValueError)."""
    if threads is None:
        return None
    if not is_integer(threads):
        raise TypeError(f"threads must be a positive integer or None, got {type(threads).__name__}")
    threads = operator.index(threads)
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    if threads > MAX_THREADS:
        raise ValueError(f"threads must be at most {MAX_THREADS} (this machine has {default_threads()} usable cores), "
                         f"got {threads}")
    return threads


def requested() -> int | None:
    """1 in a forked child (see above), else ``measure``'s ``threads`` argument (None if not given)."""
    return 1 if _forked_from_threads else getattr(_local, "threads", None)


def current() -> int:
    """Threads the cpu backend uses now: :func:`requested`, else :func:`default_threads`. (numba
    and torch use their own setting unless a count was requested.)"""
    return requested() or default_threads()


@contextlib.contextmanager
def using(threads: int | None):
    """Inside the block (this thread only), :func:`current` is ``threads`` (None: the default)."""
    saved = getattr(_local, "threads", None)
    _local.threads = threads
    try:
        yield
    finally:
        _local.threads = saved
