"""The on-disk cache of decompressed volumes (and of mask indices).

Decoding a gzip-compressed NIfTI on the 1 mm ATLAS grid takes a fraction of a
second; cross-validation and training epochs read the same volumes many times. So
the first read of a volume also writes it, decompressed, to an on-disk cache
(``<data>/.cache/``, one ``.npy`` per volume). Later reads map the ``.npy``
into memory (copy-on-write), which is an order of magnitude faster. A cache
entry records the size and modification time of its source file and is rebuilt
when the source changes. If the cache folder cannot be written (read-only data
on a server), volumes are decoded every time, with a single warning; if its disk
fills, the warning names the folder and the size of an entry, no partial file is
left, and the cache is not written again by that process.

The cache stores float32, what ``X[i]`` returns, whatever the source's dtype: a
cache in the images' own int16 (lossless for the synthetic sample) would take half
the disk, but must be converted at every read, which makes warm reads 3-4 times
slower (``bench/bench_volumes.py``: 28-32 ms against 8-9 ms at 1 mm).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np

from ._io import atomic_path, atomic_write_text
from .bids import DataError

CACHE_DIR_NAME = ".cache"
_warned_read_only = set()
#: Cache folders whose disk filled up: not written again by this process.
_full_cache_dirs = set()


def default_cache_dir(split_dir: Path | str) -> Path:
    """``data/train`` → ``data/.cache/train``.

    The path is made absolute without resolving links: when ``data/train`` is a
    link to a shared (often read-only) drive, the cache stays in the student's
    own ``data/.cache``, not beside the link's target.
    """
    split_dir = Path(os.path.abspath(split_dir))
    return split_dir.parent / CACHE_DIR_NAME / split_dir.name


def _resolved(path: Path) -> str:
    # Keyed on the absolute path: a relative one means another file once the
    # working folder changes.
    return _resolved_absolute(os.path.abspath(path))


@functools.lru_cache(maxsize=4096)
def _resolved_absolute(path: str) -> str:
    # Resolved once per path: resolving costs a system call per folder of the
    # path, at every read of a cached volume.
    return os.path.realpath(path)


def _source_signature(path: Path) -> dict:
    stat = path.stat()
    return {
        "source": _resolved(path),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }


def _cache_stem(cache_dir: Path, path: Path) -> Path:
    # The file name keeps the BIDS name for humans; a hash of the absolute path
    # keeps two sources with the same name apart.
    digest = hashlib.sha1(_resolved(path).encode()).hexdigest()[:10]
    name = path.name.removesuffix(".gz").removesuffix(".nii")
    return cache_dir / f"{name}-{digest}"


def fresh_entry_files(cache_dir: Path | str, path: Path | str) -> list[Path]:
    """The files (metadata, array) of the cached volume of ``path``, if fresh.

    For code that links or copies cache entries (the course sandbox stages
    the test images' entries); empty when the entry is missing or stale.
    """
    stem = _cache_stem(Path(cache_dir), Path(path))
    meta, array = stem.with_suffix(".json"), stem.with_suffix(".npy")
    try:
        fresh = json.loads(meta.read_text()) == _source_signature(Path(path))
    except (OSError, ValueError):
        return []
    return [meta, array] if fresh and array.is_file() else []


def read_nifti(path: Path, dtype) -> np.ndarray:
    """Decode a NIfTI volume; any failure is a DataError naming the file."""
    try:
        image = nib.load(str(path))
        if image.get_data_dtype().kind == "c":
            raise DataError(
                f"{path} holds complex numbers ({image.get_data_dtype()}); a T1w "
                "image or a mask holds real numbers: save its magnitude instead."
            )
        volume = image.get_fdata(dtype=np.float32)
    except DataError:
        raise
    except Exception as error:  # truncated gzip, bad header, odd dtype...
        reason = " ".join(str(error).split()).rstrip(".")  # nibabel's has newlines
        raise DataError(
            f"Cannot read {path} ({type(error).__name__}: {reason}). The file is "
            "truncated or corrupted, or not a plain NIfTI volume; download or "
            "rebuild it (`python download_data.py --force`)."
        ) from error
    if volume.ndim != 3:
        raise DataError(f"{path} has shape {volume.shape}; a 3D volume is expected.")
    finite = np.isfinite(volume)
    if not finite.all():
        n_bad = int(volume.size - np.count_nonzero(finite))
        raise DataError(
            f"{path} has {n_bad} voxel(s) that are NaN or infinite (of "
            f"{volume.size}; after the header's scaling). Images must hold finite "
            "numbers: fix or rebuild the file, or remove the subject."
        )
    return np.asarray(volume, dtype=dtype)


def _save_npy(target: Path, array: np.ndarray) -> None:
    # Through an open stream: np.save would add ".npy" to the temporary name.
    with atomic_path(target) as temporary, open(temporary, "wb") as stream:
        np.save(stream, array)


class VolumeCache:
    """Decompressed copies of NIfTI volumes, invalidated when the source changes.

    Parameters
    ----------
    cache_dir : path or None
        Where to keep the ``.npy`` files; None disables caching.
    """

    def __init__(self, cache_dir: Path | str | None):
        self.cache_dir = None if cache_dir is None else Path(cache_dir)

    def _usable(self) -> bool:
        if self.cache_dir is None:
            return False
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            return os.access(self.cache_dir, os.W_OK)
        except OSError:
            return False

    def _warn_read_only(self):
        key = str(self.cache_dir)
        if key not in _warned_read_only:
            _warned_read_only.add(key)
            warnings.warn(
                f"Cannot write the volume cache {self.cache_dir}; volumes will be "
                "decoded from .nii.gz at every read (slower, same results).",
                stacklevel=3,
            )

    def _warn_disk_full(self, needed_bytes: int):
        _full_cache_dirs.add(str(self.cache_dir))
        try:
            free = f"{shutil.disk_usage(self.cache_dir).free / 1e6:.1f} MB free"
        except OSError:
            free = "free space unknown"
        warnings.warn(
            f"The disk holding the volume cache {self.cache_dir} is full ({free}): "
            f"a cache entry needs {needed_bytes / 1e6:.1f} MB (one per volume; a "
            "1 mm ATLAS volume takes 34.7 MB, all 955 ATLAS volumes about 33 GB). "
            "Nothing partial was left in the cache; volumes not cached yet are "
            "decoded from .nii.gz at every read from now on (slower, same results). "
            "Free some space (old .cache folders of other data can be deleted), "
            "then run again to use the cache.",
            stacklevel=4,
        )

    def load(self, path: Path, dtype=np.float32) -> np.ndarray:
        """Load a volume, from the cache when it is fresh.

        A cached volume comes as a private (copy-on-write) memory map: pages
        come straight from the OS page cache, with no copy; writing to the
        array changes this array only, never the cache file.
        """
        return self.cached(path, "", lambda: read_nifti(Path(path), dtype), mmap=True)

    def cached(self, path: Path, kind: str, compute, mmap: bool = False) -> np.ndarray:
        """An array derived from the file ``path``, computed once and cached.

        Parameters
        ----------
        path : path
            The source file; its size and modification time are the key.
        kind : str
            Suffix that tells this array from others of the same source
            (``""``: the volume itself; ``".idx"``: a mask's voxel indices).
        compute : callable
            Makes the array when the cache has none, or a stale one.
        mmap : bool
            Map a cached array rather than read it.
        """
        path = Path(path)
        if self.cache_dir is None:
            return compute()
        stem = _cache_stem(self.cache_dir, path)
        array_file = stem.with_suffix(f"{kind}.npy")
        meta_file = stem.with_suffix(f"{kind}.json")
        signature = _source_signature(path)
        try:
            if json.loads(meta_file.read_text()) == signature:
                return np.asarray(np.load(array_file, mmap_mode="c" if mmap else None))
        except (OSError, ValueError):
            pass  # missing, stale or damaged entry: rebuild it
        array = compute()
        self._write_entry(array_file, meta_file, array, signature)
        return array

    def _write_entry(self, array_file: Path, meta_file: Path, array, signature):
        """Write one cache entry: the array, then the metadata that vouches for it.

        No partial ``.npy`` is ever left: each file is written under a temporary
        name and renamed, and an array whose metadata cannot be written is
        removed. A failure is a warning and reading goes on uncached: a full disk
        (this folder is then not written again by this process, so that no read
        pays for a write that cannot succeed) or a read-only folder.
        """
        if str(self.cache_dir) in _full_cache_dirs:
            return
        if not self._usable():
            self._warn_read_only()
            return
        try:
            _save_npy(array_file, array)
            try:
                atomic_write_text(meta_file, json.dumps(signature))
            except BaseException:
                array_file.unlink(missing_ok=True)
                raise
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                self._warn_disk_full(array.nbytes)
            else:
                self._warn_read_only()
