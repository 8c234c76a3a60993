"""What the machine running the kit offers: how many CPU cores this process may use.

The sample builder and the small CNN both size their work by it. The count must
be portable: student laptops run macOS and Windows, where
``os.sched_getaffinity`` does not exist.
"""

from __future__ import annotations

import os


def available_cpus() -> int:
    """CPU cores this process may use, on Linux, macOS and Windows alike.

    ``os.process_cpu_count`` (Python 3.13+) and ``os.sched_getaffinity``
    (Linux) count the cores the process is allowed to run on (a container's or
    ``taskset``'s share); ``os.cpu_count`` (macOS, Windows before 3.13) counts
    the machine's.

    Returns
    -------
    int
        At least 1.
    """
    if hasattr(os, "process_cpu_count"):
        return max(1, os.process_cpu_count() or 1)
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)
