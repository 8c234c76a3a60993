"""A quick look at a split: three slices through each subject's lesion.

One row per subject: sagittal, coronal and axial slices through the lesion (its
centre of mass, or the nearest lesion voxel), the T1w image in grey and the mask
outlined in red. Run it on the synthetic sample or on real ATLAS data::

    atlas-ramp montage data/train --output montage.png --max-subjects 12

The slices are drawn by nilearn (``plot_anat`` and ``add_contours``), which
places them by world coordinates: left and right come from each image's affine,
not from the order of its voxels, and the ``L``/``R`` letters are nilearn's.
Images are shown in the neurological convention (the subject's left on the left).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ..bids import find_subjects

CONVENTION = "Neurological convention: the subject's left is on the image's left."


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
    from nilearn import plotting

    subjects = find_subjects(split_dir)[:max_subjects]
    if not subjects:
        raise ValueError(f"No subject found under {split_dir}.")
    width_inches, label_share, row_inches, title_inches = 8.0, 0.15, 2.2, 0.35
    height = row_inches * len(subjects) + title_inches
    figure = plt.figure(figsize=(width_inches, height), facecolor="black")
    row_share = row_inches / height
    for row, subject in enumerate(subjects):
        t1 = nib.load(str(subject.t1w_path))
        mask_image = None
        mask = np.zeros(t1.shape, dtype=bool)
        if subject.mask_path is not None:
            mask_image = nib.load(str(subject.mask_path))
            mask = np.asarray(mask_image.dataobj) > 0.5
        # The cut in millimetres: nilearn finds the slices from the affine.
        centre_mm = nib.affines.apply_affine(t1.affine, _lesion_centre(mask))
        bottom = 1 - title_inches / height - (row + 1) * row_share
        axes = figure.add_axes((label_share, bottom, 1 - label_share, row_share))
        display = plotting.plot_anat(
            t1,
            cut_coords=centre_mm,
            display_mode="ortho",
            figure=figure,
            axes=axes,
            draw_cross=False,
            annotate=True,
            black_bg=True,
            dim=0,
            colorbar=False,
        )
        if mask.any():
            display.add_contours(mask_image, levels=[0.5], colors="red", linewidths=0.8)
        voxel_ml = abs(np.linalg.det(t1.affine[:3, :3])) / 1000
        label = f"{subject.subject_id}\n{subject.cohort}\n"
        label += f"{mask.sum() * voxel_ml:.2f} mL" if mask_image else "no mask"
        figure.text(
            label_share - 0.01,
            bottom + row_share / 2,
            label,
            color="white",
            fontsize=7.5,
            ha="right",
            va="center",
        )
    figure.suptitle(
        f"{Path(split_dir)}: T1w, lesion mask in red. {CONVENTION}",
        color="white",
        fontsize=8,
        y=1 - 0.1 * title_inches / height,
        va="top",
    )
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=dpi, facecolor="black")
    plt.close(figure)
    return output


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``atlas-ramp montage``."""
    parser = argparse.ArgumentParser(
        prog="atlas-ramp montage",
        description="Render three slices through each subject's lesion as a PNG.",
    )
    parser.add_argument("split_dir", type=Path, help="split folder, e.g. data/train")
    parser.add_argument(
        "--output", type=Path, default=Path("montage.png"), help="PNG to write"
    )
    parser.add_argument(
        "--max-subjects", type=int, default=12, help="rows (default: 12)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command line: ``atlas-ramp montage SPLIT --output PNG``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    path = render_montage(args.split_dir, args.output, args.max_subjects)
    print(f"Montage written to {path}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
