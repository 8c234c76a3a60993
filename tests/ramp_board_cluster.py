"""A dask ``LocalCluster`` on 127.0.0.1, for ramp-engine's dask worker in the tests.

Runs in the server's environment: prints the scheduler's address, then serves
until its standard input closes, and shuts the cluster down.
"""

import sys

from dask.distributed import LocalCluster

if __name__ == "__main__":
    with LocalCluster(
        host="127.0.0.1",
        n_workers=1,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
    ) as cluster:
        print(cluster.scheduler_address, flush=True)
        sys.stdin.read()
