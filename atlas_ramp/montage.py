"""A quick look at a split: three slices through each subject's lesion.

One row per subject: sagittal, coronal and axial slices through the centre of
mass of the lesion mask, the T1w image in grey and the mask outlined in red.
Run it on the synthetic sample or on real ATLAS data::

    python -m atlas_ramp.montage data/train --output montage.png --max-subjects 12

Images are shown in the neurological convention: the subject's left is on the
left of coronal and axial slices (``L`` and ``R`` mark the sides).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from .bids import find_subjects

CONVENTION = "Neurological convention: the subject's left is on the image's left."


def _read(path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(str(path))
    return np.asarray(image.dataobj, dtype=np.float32), image.affine


def _lesion_centre(mask: np.ndarray) -> np.ndarray:
    """Voxel nearest the lesion's centre of mass (the volume's centre if none)."""
    if not mask.any():
        return np.array(mask.shape) // 2
    centre = np.rint(ndimage.center_of_mass(mask)).astype(int)
    # For a ring-shaped lesion the centre of mass can fall outside it: move to
    # the nearest lesion voxel so the slices always cut the lesion.
    if not mask[tuple(centre)]:
        voxels = np.argwhere(mask)
        centre = voxels[np.argmin(((voxels - centre) ** 2).sum(axis=1))]
    return centre


def _brain_box(t1: np.ndarray, margin: int = 2) -> tuple:
    """Slices of the box around the non-zero voxels, with a margin."""
    nonzero = np.nonzero(t1 > 0)
    if not nonzero[0].size:
        return tuple(slice(0, n) for n in t1.shape)
    return tuple(
        slice(max(int(ix.min()) - margin, 0), min(int(ix.max()) + margin + 1, n))
        for ix, n in zip(nonzero, t1.shape, strict=True)
    )


def render_montage(split_dir, output, max_subjects: int = 12, dpi: int = 110) -> Path:
    """Render a PNG montage of a split's subjects (first ``max_subjects``).

    Parameters
    ----------
    split_dir : path
        A split (``data/train``) or any folder with ATLAS-named files.
    output : path
        PNG file to write.
    max_subjects : int
        Rows in the montage.
    dpi : int
        Resolution.

    Returns
    -------
    Path
        ``output``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subjects = find_subjects(split_dir)[:max_subjects]
    if not subjects:
        raise ValueError(f"No subject found under {split_dir}.")
    # Crop all panels to the first brain's box: subjects share the MNI grid.
    first, _ = _read(subjects[0].t1w_path)
    crop = _brain_box(first)
    crop_shape = [c.stop - c.start for c in crop]
    # Panel widths follow the slices' shapes, so all panels share one scale.
    widths = [crop_shape[1], crop_shape[0], crop_shape[0]]
    tallest = max(crop_shape[2], crop_shape[1])
    width_inches, label_inches, title_inches = 8.0, 1.2, 0.5
    scale = (width_inches - label_inches) / sum(widths)
    row_inches = tallest * scale + 0.05
    figure, axes = plt.subplots(
        len(subjects),
        3,
        figsize=(width_inches, row_inches * len(subjects) + title_inches),
        squeeze=False,
        facecolor="black",
        gridspec_kw={"width_ratios": widths},
    )
    for row, subject in zip(axes, subjects, strict=True):
        t1, affine = _read(subject.t1w_path)
        if subject.mask_path is not None:
            mask = _read(subject.mask_path)[0] > 0.5
        else:
            mask = np.zeros(t1.shape, dtype=bool)
        centre = _lesion_centre(mask)
        world = affine[:3, :3] @ centre + affine[:3, 3]
        voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000
        brain = t1[t1 > 0]
        low, high = np.percentile(brain, [0.5, 99.5]) if brain.size else (0, 1)
        t1, mask = t1[crop], mask[crop]
        i, j, k = (
            int(np.clip(c - b.start, 0, n - 1))
            for c, b, n in zip(centre, crop, crop_shape, strict=True)
        )
        # Slices are transposed so that their first axis runs horizontally;
        # origin="lower" puts superior/anterior up and +x (right) on the right.
        views = [
            (f"sagittal x = {world[0]:.0f} mm", t1[i, :, :], mask[i, :, :], False),
            (f"coronal y = {world[1]:.0f} mm", t1[:, j, :], mask[:, j, :], True),
            (f"axial z = {world[2]:.0f} mm", t1[:, :, k], mask[:, :, k], True),
        ]
        for axis, (title, image, outline, left_right) in zip(row, views, strict=True):
            axis.imshow(
                image.T,
                cmap="gray",
                vmin=low,
                vmax=high,
                origin="lower",
                interpolation="nearest",
            )
            if outline.any():
                axis.contour(
                    outline.T.astype(float), levels=[0.5], colors="red", linewidths=0.8
                )
            # Titles inside the panels, so rows of unequal heights line up.
            axis.text(
                0.5,
                image.shape[1] - 1,
                title,
                color="white",
                fontsize=6.5,
                ha="left",
                va="top",
            )
            if left_right:
                middle = image.shape[1] / 2
                axis.text(0.5, middle, "L", color="yellow", fontsize=7, ha="left")
                axis.text(
                    image.shape[0] - 1.5,
                    middle,
                    "R",
                    color="yellow",
                    fontsize=7,
                    ha="right",
                )
            axis.set_axis_off()
        volume = mask.sum() * voxel_ml
        label = f"{subject.subject_id}\n{subject.cohort}\n"
        label += f"{volume:.2f} mL" if subject.mask_path is not None else "no mask"
        row[0].text(
            -0.05,
            0.5,
            label,
            color="white",
            fontsize=7.5,
            transform=row[0].transAxes,
            ha="right",
            va="center",
        )
    figure.suptitle(
        f"{Path(split_dir)}: T1w, lesion mask in red. {CONVENTION}",
        color="white",
        fontsize=8,
    )
    figure.subplots_adjust(
        left=label_inches / width_inches,
        right=0.995,
        top=1 - title_inches / figure.get_figheight(),
        bottom=0.005,
        wspace=0.02,
        hspace=0.1,
    )
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=dpi, facecolor="black")
    plt.close(figure)
    return output


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m atlas_ramp.montage SPLIT --output PNG``."""
    parser = argparse.ArgumentParser(
        prog="python -m atlas_ramp.montage",
        description="Render three slices through each subject's lesion as a PNG.",
    )
    parser.add_argument("split_dir", type=Path, help="split folder, e.g. data/train")
    parser.add_argument(
        "--output", type=Path, default=Path("montage.png"), help="PNG to write"
    )
    parser.add_argument(
        "--max-subjects", type=int, default=12, help="rows (default: 12)"
    )
    args = parser.parse_args(argv)
    path = render_montage(args.split_dir, args.output, args.max_subjects)
    print(f"Montage written to {path}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
