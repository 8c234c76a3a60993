"""Benchmark: installing the encrypted ATLAS archive keeps memory flat.

Builds ATLAS-like encrypted archives of a few sizes (random, incompressible
payload under the real ATLAS names, tar + gzip + ``openssl enc -a`` format) in a
temporary folder, then installs each one in a fresh child process, so that the
peak resident memory (``ru_maxrss``) of every run is its own:

* ``stream file``: :func:`atlas_ramp.archive.install_atlas` from ``--archive``
  (SHA-256 of the file first, then one streaming pass: decrypt, gunzip, untar);
* ``stream http``: the same, downloaded from a local HTTP server (hashed as it
  arrives, then unpacked from the ``.part`` file);
* ``plain``: the naive script, for comparison: read the whole file, decode,
  decrypt, decompress in memory, then ``tarfile.extractall``;
* ``baseline``: a child that only imports the same modules.

Both streaming runs check the SHA-256 before extracting. Each run is repeated
``--repeat`` times; the table shows medians. Everything is deleted at the end.
Run::

    python bench/bench_archive.py                  # 100 and 600 MB; plain 100, 200
    python bench/bench_archive.py --sizes 100 --plain-sizes 50   # quicker
"""

from __future__ import annotations

import argparse
import binascii
import functools
import gzip
import hashlib
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from atlas_ramp import archive, bids
from atlas_ramp.testing.archives import encrypt_openssl_file

PASSWORD = "benchmark password"
IMAGE_BYTES = 6_000_000  # about one compressed 1 mm T1w image
MASK_BYTES = 100_000
MB = 1e6


# --------------------------------------------------------------------------
# Building the archives
# --------------------------------------------------------------------------


def _add(tar: tarfile.TarFile, name: str, content: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    tar.addfile(info, io.BytesIO(content))


def build_archive(folder: Path, target_mb: float, seed: int = 0) -> Path:
    """An encrypted ATLAS-like archive of about ``target_mb`` MB (base64 text).

    Random bytes stand in for the NIfTI files: the installer only reads names.
    """
    rng = np.random.default_rng(seed)
    payload_bytes = target_mb * MB * 3 / 4  # base64 adds a third
    # Real-sized images, or smaller ones in small archives: at least 40 subjects.
    n_subjects = max(40, int(payload_bytes // (IMAGE_BYTES + MASK_BYTES)))
    image_bytes = int(payload_bytes / n_subjects) - MASK_BYTES
    tar_gz = folder / f"atlas-{target_mb:g}MB.tar.gz"
    with tarfile.open(tar_gz, "w:gz", compresslevel=1) as tar:
        for index in range(n_subjects):
            labelled = index % 5 != 4  # one in five in Testing, unlabelled
            subject_id = "sub-" + bids.subject_label(1 + index % 7, index + 1)
            split = "Training" if labelled else "Testing"
            anat = bids.anat_dir(f"ATLAS_2/{split}", subject_id).as_posix()
            _add(tar, f"{anat}/{bids.t1w_name(subject_id)}", rng.bytes(image_bytes))
            if labelled:
                _add(tar, f"{anat}/{bids.mask_name(subject_id)}", rng.bytes(MASK_BYTES))
    encrypted = folder / f"atlas-{target_mb:g}MB.enc"
    encrypt_openssl_file(tar_gz, encrypted, PASSWORD)
    tar_gz.unlink()
    return encrypted


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------
# What each child process runs
# --------------------------------------------------------------------------


def plain_install(path: Path, output: Path) -> None:
    """The naive way: everything in memory at once."""
    text = path.read_bytes()
    binary = binascii.a2b_base64(text)  # skips the line breaks
    del text
    key, iv = archive.evp_bytes_to_key(PASSWORD.encode(), binary[8:16])
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(binary[16:]) + decryptor.finalize()
    del binary
    compressed = padded[: -padded[-1]]
    del padded
    tar_bytes = gzip.decompress(compressed)
    del compressed
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
        tar.extractall(output, filter="data")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # all threads
    return usage.ru_utime + usage.ru_stime


def run_child(mode: str, source: str, output: str, sha256: str) -> None:
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    if mode == "stream-file":
        archive.install_atlas(
            output,
            archive=source,
            password=PASSWORD,
            expected_sha256=sha256,
            progress=False,
        )
    elif mode == "stream-http":
        archive.install_atlas(
            output,
            url=source,
            password=PASSWORD,
            expected_sha256=sha256,
            progress=False,
        )
    elif mode == "plain":
        plain_install(Path(source), Path(output))
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        "wall_s": wall,
        # Less sensitive than wall time to other work on the machine.
        "cpu_s": _cpu_seconds() - cpu_start,
        "peak_rss_mb": usage.ru_maxrss * 1024 / MB,  # ru_maxrss is in KiB (Linux)
    }
    print(json.dumps(result))


def measure_once(mode: str, source: str, output: Path, sha256: str = "") -> dict:
    """Run one install in a fresh process; return its wall time and peak RSS."""
    result = subprocess.run(
        [sys.executable, __file__, "--child", mode, source, str(output), sha256],
        capture_output=True,
        text=True,
        env={**os.environ, "no_proxy": "127.0.0.1"},
    )
    if result.returncode:
        raise RuntimeError(f"{mode} failed:\n{result.stderr}")
    shutil.rmtree(output, ignore_errors=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(mode: str, source: str, output: Path, sha256: str = "", repeat=1) -> dict:
    """The medians of ``repeat`` runs of :func:`measure_once`."""
    runs = [measure_once(mode, source, output, sha256) for _ in range(repeat)]
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


# --------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[100, 600])
    parser.add_argument("--plain-sizes", type=float, nargs="+", default=[100, 200])
    parser.add_argument("--workdir", type=Path, default=None, help="temporary space")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measure")
    parser.add_argument("--child", nargs=4, metavar=("MODE", "SRC", "OUT", "SHA"))
    args = parser.parse_args(argv)
    if args.child:
        run_child(*args.child)
        return

    workdir = Path(tempfile.mkdtemp(prefix="bench-archive-", dir=args.workdir))
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(workdir))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rows = [("baseline (imports only)", 0.0, measure("none", "", workdir / "out"))]
    try:
        for size in sorted(set(args.sizes) | set(args.plain_sizes)):
            start = time.perf_counter()
            path = build_archive(workdir, size)
            sha256 = sha256_of(path)
            actual = path.stat().st_size / MB
            print(
                f"built {path.name}: {actual:.0f} MB in "
                f"{time.perf_counter() - start:.1f} s",
                file=sys.stderr,
            )
            if size in args.sizes:
                url = f"http://127.0.0.1:{server.server_address[1]}/{path.name}"
                rows.append(
                    (
                        "stream file",
                        actual,
                        measure(
                            "stream-file",
                            str(path),
                            workdir / "out",
                            sha256,
                            args.repeat,
                        ),
                    )
                )
                rows.append(
                    (
                        "stream http",
                        actual,
                        measure(
                            "stream-http", url, workdir / "out", sha256, args.repeat
                        ),
                    )
                )
            if size in args.plain_sizes:
                rows.append(
                    (
                        "plain (in memory)",
                        actual,
                        measure(
                            "plain", str(path), workdir / "out", repeat=args.repeat
                        ),
                    )
                )
            path.unlink()
    finally:
        server.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"\n{'mode':<24}{'archive MB':>11}{'wall s':>9}{'MB/s':>8}{'CPU s':>8}"
        f"{'peak RSS MB':>13}"
    )
    for mode, size, result in rows:
        speed = f"{size / result['wall_s']:.0f}" if size else "-"
        print(
            f"{mode:<24}{size:>11.0f}{result['wall_s']:>9.2f}{speed:>8}"
            f"{result['cpu_s']:>8.2f}{result['peak_rss_mb']:>13.0f}"
        )
    print(
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
        "(wall times stretch when the machine is busy, CPU times less so)"
    )


if __name__ == "__main__":
    main()
