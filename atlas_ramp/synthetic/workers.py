"""Worker processes: how many a build uses on this machine.

Subjects are independent, so a sample is built in parallel, one subject per
task. The count must be portable (student laptops run macOS and Windows) and
must not run the machine out of memory.
"""

from __future__ import annotations

import os

from ..machine import available_cpus

#: Memory one worker process may need at 1 mm (bytes): its own copy of the
#: template anatomy (where processes are spawned, as on macOS and Windows) and
#: one subject's working arrays. Measured at about 1.04 GB peak.
WORKER_MEMORY_1MM = 1.2e9


def physical_memory() -> int | None:
    """The machine's memory in bytes, or None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no os.sysconf on Windows
        return None


def default_jobs(n_subjects: int, downsample: int) -> int:
    """Worker processes :func:`build_sample` uses when ``n_jobs`` is not given.

    For full-size volumes (1 and 2 mm), one per usable core
    (:func:`available_cpus`), at most one per subject, and no more than half
    of the machine's memory holds (:data:`WORKER_MEMORY_1MM` each at 1 mm).
    A single process for a few subjects or coarse grids, where starting
    workers costs more than it saves.
    """
    if n_subjects < 8 or downsample > 2:
        return 1
    jobs = min(available_cpus(), n_subjects)
    memory = physical_memory()
    if memory:
        per_worker = WORKER_MEMORY_1MM / downsample**3
        jobs = min(jobs, int(memory / 2 // per_worker))
    return max(1, jobs)
