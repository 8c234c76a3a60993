"""Grids: every subject of a split on one voxel grid, in the orientation of MNI.

ATLAS images are registered to MNI152NLin2009aSym: one shape, one affine (the
voxel-to-millimetre map) for every subject. The kit relies on that: a voxel index
means the same place in every brain, ``X.affine`` holds for all subjects, the
baselines mirror the hemispheres by flipping the x axis. This module checks it
from the headers alone (cheap), and says what differs when it does not hold:

* all subjects of a split share one grid (shape, and affine within
  :data:`GRID_TOLERANCE`);
* that grid is in RAS orientation (x to the subject's Right, y Anterior, z
  Superior), as MNI152NLin2009aSym is;
* each mask is on its image's grid;
* training and test data share one grid (:func:`check_same_grid`).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from .bids import SPACE, DataError, Subject, read_header

#: The orientation of MNI152NLin2009aSym, that the kit assumes (the mirror
#: channel of the baselines, the montage): x to the Right, y Anterior, z Superior.
ORIENTATION = ("R", "A", "S")
#: Two grids are one when their shapes are equal and their affines differ by at
#: most this much in every entry (mm, or mm per voxel): far above the rounding of
#: a float32 header, far below any real misregistration.
GRID_TOLERANCE = 1e-3


def describe_grid(shape, affine) -> str:
    """A grid in words: shape, voxel size, orientation and origin."""
    affine = np.asarray(affine, dtype=float)
    sizes = "×".join(f"{v:g}" for v in np.round(nib.affines.voxel_sizes(affine), 3))
    codes = "".join(str(c) for c in nib.aff2axcodes(affine))
    origin = ", ".join(f"{v:g}" for v in np.round(affine[:3, 3], 2))
    shape_text = "×".join(str(n) for n in shape)
    return (
        f"{shape_text} voxels of {sizes} mm, orientation {codes}, origin ({origin}) mm"
    )


def same_grid(shape_a, affine_a, shape_b, affine_b) -> bool:
    """Whether two grids are one: equal shapes, affines within GRID_TOLERANCE."""
    return tuple(shape_a) == tuple(shape_b) and np.allclose(
        affine_a, affine_b, rtol=0, atol=GRID_TOLERANCE
    )


def _header_grid(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    image = read_header(path)
    if len(image.shape) != 3:
        raise DataError(
            f"{path} has shape {image.shape}; a 3D volume is expected (a 4D file "
            "with one volume can be squeezed: nibabel.funcs.squeeze_image)."
        )
    affine = np.asarray(image.affine, dtype=float)
    if not np.all(np.isfinite(affine)):
        raise DataError(f"{path} has a non-finite affine; fix its header (sform).")
    return tuple(int(n) for n in image.shape), affine


def check_split(subjects: list[Subject]) -> tuple[tuple[int, int, int], np.ndarray]:
    """Check the headers of a split: one grid, RAS orientation, masks on it.

    Only headers are read, so this is cheap even for hundreds of subjects. The
    reference grid is the one most subjects share (the first subject's on a tie),
    so a single odd subject is the one named.

    Returns
    -------
    shape : tuple of int
        The common volume shape.
    affine : ndarray of shape (4, 4)
        The common affine (of the reference subject).

    Raises
    ------
    DataError
        Naming the file whose grid differs (and the reference subject), a split
        not in RAS orientation, or a mask that is not on its image's grid.
    """
    grids = []  # [shape, affine, subjects on this grid]
    for subject in subjects:
        shape, affine = _header_grid(subject.t1w_path)
        for grid in grids:
            if same_grid(grid[0], grid[1], shape, affine):
                grid[2].append(subject)
                break
        else:
            grids.append([shape, affine, [subject]])
    shape, affine, members = max(grids, key=lambda grid: len(grid[2]))
    reference = members[0]
    if len(grids) > 1:
        odd = [s for grid in grids if grid[2] is not members for s in grid[2]]
        odd_shape, odd_affine, _ = next(g for g in grids if odd[0] in g[2])
        difference = np.abs(odd_affine - affine).max() if odd_shape == shape else None
        more = f" ({len(odd) - 1} other subject(s) differ too)" if len(odd) > 1 else ""
        raise DataError(
            f"{odd[0].t1w_path} is not on the grid of the split: it has "
            f"{describe_grid(odd_shape, odd_affine)}, but the reference subject "
            f"{reference.subject_id} ({reference.t1w_path}) and {len(members) - 1} "
            f"other(s) have {describe_grid(shape, affine)}"
            + (f"; the affines differ by up to {difference:g}" if difference else "")
            + f"{more}. All subjects of a split must share the MNI grid (one shape, "
            f"affines within {GRID_TOLERANCE:g}): resample this image and its mask "
            "onto the reference grid (nilearn.image.resample_to_img), or remove the "
            "subject."
        )
    codes = tuple(nib.aff2axcodes(affine))
    if codes != ORIENTATION:
        raise DataError(
            f"The images of this split (e.g. {reference.t1w_path}) are stored in "
            f"orientation {''.join(str(c) for c in codes)} (nibabel.aff2axcodes), but "
            f"the kit expects {''.join(ORIENTATION)}, the orientation of {SPACE}: "
            "reorient them (nibabel.as_closest_canonical) and their masks alike."
        )
    # All images share the reference grid now; each mask must be on it too.
    for subject in subjects:
        if subject.mask_path is None:
            continue
        mask_shape, mask_affine = _header_grid(subject.mask_path)
        if mask_shape != shape:
            raise DataError(
                f"{subject.mask_path} has shape {mask_shape} but its T1w image "
                f"{subject.t1w_path} has {shape}. The mask must be on the image's "
                "grid: rebuild or resample it (nearest neighbour)."
            )
        if not same_grid(mask_shape, mask_affine, shape, affine):
            raise DataError(
                f"{subject.mask_path} has a different affine than its T1w image "
                f"{subject.t1w_path} ({describe_grid(mask_shape, mask_affine)} vs "
                f"{describe_grid(shape, affine)}). The mask must be on the "
                "image's grid: rebuild or resample it (nearest neighbour)."
            )
    return shape, affine


def check_same_grid(first: tuple, second: tuple) -> None:
    """Refuse two splits (or a split and a model) on different grids.

    Parameters
    ----------
    first, second : (name, shape, affine)
        What to compare, with a name for the message (``data/train``...).

    Raises
    ------
    DataError
        Naming both grids.
    """
    (name_a, shape_a, affine_a), (name_b, shape_b, affine_b) = first, second
    if not same_grid(shape_a, affine_a, shape_b, affine_b):
        raise DataError(
            f"{name_a} and {name_b} are on different grids: {name_a} has "
            f"{describe_grid(shape_a, affine_a)}, {name_b} has "
            f"{describe_grid(shape_b, affine_b)}. Training and test data must share "
            "one grid: build both with the same options (e.g. the same "
            "`download_data.py --downsample`), or resample one onto the other."
        )
