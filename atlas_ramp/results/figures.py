"""Figures of a segmentation's errors, shared by the notebook and the report.

The colours say what kind of voxel it is, in a palette that stays distinct for
most colour-blind readers (Okabe and Ito's):

* **true positive** (lesion, predicted): yellow;
* **false positive** (predicted, not lesion): red-orange;
* **false negative** (lesion, missed): blue.

Slices are turned to the RAS orientation first (read from the affine with
nibabel), then drawn with the first array axis horizontal: the subject's left is
on the image's left, the *neurological* convention. Clinical viewers use the
*radiological* one, the mirror image; pass ``radiological=True`` to get it.

The report's figures (detection by lesion size, Dice against lesion volume, scores
per cohort) are here too, each drawing on axes it is given, so that the same code
serves one submission or several side by side.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

ERROR_COLOURS = {
    "true positive": "#F0E442",  # yellow
    "false positive": "#D55E00",  # red-orange
    "false negative": "#0072B2",  # blue
}
ERROR_CMAP = ListedColormap(list(ERROR_COLOURS.values()))
#: One colour per submission in the report's figures (Okabe-Ito, then more).
SUBMISSION_COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#999999"]


def convention_note(affine, radiological: bool = False) -> str:
    """A sentence saying how slices are oriented, for titles and captions."""
    codes = "".join(nib.aff2axcodes(affine))
    side = "right on the left" if radiological else "left on the left"
    name = "radiological" if radiological else "neurological"
    return (
        f"{name} convention (the subject's {side}; images stored {codes}, "
        "turned to RAS from their affine)"
    )


def largest_lesion_centre(mask, affine) -> np.ndarray:
    """World coordinates (mm) of a lesion voxel at the centre of the largest lesion.

    The voxel of the largest lesion (3D component, face connectivity) closest to
    that lesion's centre of mass, so that a slice through it always cuts the
    lesion; the volume's centre when the mask is empty.

    Parameters
    ----------
    mask : SparseMask
    affine : ndarray of shape (4, 4)
    """
    n_lesions, labels = mask.lesion_labels()
    voxels = np.column_stack(np.unravel_index(mask.indices, mask.shape))
    if n_lesions:
        voxels = voxels[labels == np.bincount(labels).argmax()]
        squared = ((voxels - voxels.mean(axis=0)) ** 2).sum(axis=1)
        centre = voxels[np.argmin(squared)]
    else:
        centre = np.array(mask.shape) // 2
    return nib.affines.apply_affine(affine, centre)


def axial_slices(volumes, z_mm: float, affine) -> list[np.ndarray]:
    """The axial slice at height ``z_mm`` of each volume, turned to RAS.

    In the returned 2D arrays the first axis runs from the subject's left to
    right, the second from posterior to anterior.
    """
    orientation = nib.orientations.io_orientation(affine)
    to_ras = nib.orientations.inv_ornt_aff(orientation, volumes[0].shape)
    voxel = nib.affines.apply_affine(np.linalg.inv(affine @ to_ras), [0, 0, z_mm])
    turned = [nib.orientations.apply_orientation(v, orientation) for v in volumes]
    k = int(np.clip(round(voxel[2]), 0, turned[0].shape[2] - 1))
    return [volume[:, :, k] for volume in turned]


def error_kinds(true: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """0 background, 1 true positive, 2 false positive, 3 false negative."""
    kind = np.zeros(true.shape, dtype=np.uint8)
    kind[true & predicted] = 1
    kind[~true & predicted] = 2
    kind[true & ~predicted] = 3
    return kind


def show_errors(
    ax, background, true, predicted, title, radiological: bool = False, sides=True
):
    """Draw one RAS slice: the image in grey, the errors in colour.

    Parameters
    ----------
    ax : matplotlib Axes
    background, true, predicted : 2D arrays
        From :func:`axial_slices` (first axis: left to right).
    title : str
    radiological : bool
        Mirror left and right (the subject's right on the left).
    sides : bool
        Mark the subject's left (L) and right (R) on the image.
    """
    kind = error_kinds(np.asarray(true, bool), np.asarray(predicted, bool))
    background = np.asarray(background, dtype=float)
    if radiological:
        background, kind = background[::-1], kind[::-1]
    ax.imshow(background.T, cmap="gray", origin="lower", interpolation="nearest")
    ax.imshow(
        np.ma.masked_equal(kind, 0).T,
        cmap=ERROR_CMAP,
        vmin=0.5,
        vmax=3.5,
        origin="lower",
        interpolation="nearest",
    )
    ax.set_title(title)
    ax.set_axis_off()
    if sides:
        left, right = ("R", "L") if radiological else ("L", "R")
        ax.text(0.02, 0.02, left, color="w", transform=ax.transAxes)
        ax.text(0.95, 0.02, right, color="w", transform=ax.transAxes)


def error_legend(fig, **kwargs):
    """The colour legend of :func:`show_errors`, below the figure."""
    handles = [Patch(color=c, label=k) for k, c in ERROR_COLOURS.items()]
    # "outside" places the legend below the axes, with constrained layout only.
    constrained = type(fig.get_layout_engine()).__name__.startswith("Constrained")
    where = "outside lower center" if constrained else "lower center"
    options = {"loc": where, "ncol": 3, "frameon": False, **kwargs}
    return fig.legend(handles=handles, **options)


def plot_worst_subjects(fig, cases, names, affine, radiological: bool = False):
    """One row per subject, one column per submission: errors on the lesion slice.

    Parameters
    ----------
    fig : matplotlib Figure
        Empty; axes are added to it.
    cases : list of WorstCase
        Of :class:`atlas_ramp.results.breakdown.WorstCase`.
    names : list of str
        The submissions, in column order.
    affine : ndarray of shape (4, 4)
    """
    shape = (1, len(cases)) if len(names) == 1 else (len(cases), len(names))
    axes = fig.subplots(*shape, squeeze=False)
    if len(names) == 1:  # one submission: the subjects side by side
        axes = axes.T
    for row, case in zip(axes, cases, strict=True):
        z_mm = largest_lesion_centre(case.truth, affine)[2]
        truth = case.truth.to_dense()
        for ax, name in zip(row, names, strict=True):
            predicted = case.predictions[name]
            image, true, pred = axial_slices(
                [case.image, truth, predicted.to_dense()], z_mm, affine
            )
            title = (
                f"{case.subject_id} ({case.cohort}), z = {z_mm:.0f} mm\n"
                f"{name}: Dice {case.dice[name]:.2f}, "
                f"{case.truth.volume_ml:.2g} mL true"
            )
            show_errors(ax, image, true, pred, title, radiological=radiological)
            ax.title.set_fontsize(9)
    error_legend(fig)
    fig.suptitle(
        "Worst subjects (lowest Dice): axial slice through the largest true lesion\n"
        + convention_note(affine, radiological),
        fontsize=10,
    )


def plot_detection_by_size(axes, detection, names):
    """Bars of recall and precision per lesion-size bin, one colour a submission.

    Parameters
    ----------
    axes : two matplotlib Axes
        Recall on the first, precision on the second.
    detection : pandas DataFrame
        :func:`atlas_ramp.results.breakdown.detection_table`: index (submission, bin).
    names : list of str
    """
    bins = list(dict.fromkeys(detection.index.get_level_values("size")))
    width = 0.8 / len(names)
    x = np.arange(len(bins))
    for offset, name in enumerate(names):
        table = detection.loc[name].reindex(bins)
        colour = SUBMISSION_COLOURS[offset % len(SUBMISSION_COLOURS)]
        for ax, column, count in (
            (axes[0], "recall", "true_lesions"),
            (axes[1], "precision", "predicted_lesions"),
        ):
            position = x + (offset - (len(names) - 1) / 2) * width
            values = table[column].to_numpy(dtype=float)
            ax.bar(position, np.nan_to_num(values), width, color=colour, label=name)
            for px, value, n in zip(position, values, table[count], strict=True):
                label = "n/a" if np.isnan(value) else f"{value:.0%}"
                ax.text(px, 0.01, f"{label}\nn={n}", ha="center", fontsize=7)
    for ax, title in (
        (axes[0], "Recall: share of true lesions found"),
        (axes[1], "Precision: share of predicted lesions that are real"),
    ):
        ax.set_xticks(x, [label.replace(" ", "\n", 1) for label in bins])
        ax.set(ylim=(0, 1.05), xlabel="lesion volume", ylabel="share", title=title)
        ax.yaxis.set_major_formatter("{x:.0%}")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, title="submission")


def plot_dice_vs_volume(ax, tables: dict):
    """Per-subject Dice against true lesion volume (log scale), one point a subject.

    Parameters
    ----------
    ax : matplotlib Axes
    tables : dict of str -> pandas DataFrame
        Per-subject tables (columns ``true_volume_ml`` and ``dice``).
    """
    hidden = 0
    for offset, (name, table) in enumerate(tables.items()):
        shown = table[table["true_volume_ml"] > 0]
        hidden = len(table) - len(shown)
        ax.scatter(
            shown["true_volume_ml"],
            shown["dice"],
            s=18,
            alpha=0.75,
            color=SUBMISSION_COLOURS[offset % len(SUBMISSION_COLOURS)],
            label=f"{name} (median Dice {table['dice'].median():.2f})",
        )
    ax.set(
        xscale="log",
        ylim=(-0.03, 1.03),
        xlabel="true lesion volume per subject (mL, log scale)",
        ylabel="Dice",
        title="Dice against lesion volume: one point per subject",
    )
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    for edge in (0.1, 1, 10):
        ax.axvline(edge, color="grey", lw=0.6, ls=":")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if hidden:
        ax.text(
            0.01, 0.97, f"{hidden} subject(s) without lesion not shown",
            transform=ax.transAxes, fontsize=7, va="top",
        )  # fmt: skip


def plot_cohorts(ax, cohorts, names):
    """Mean Dice per cohort (± standard deviation), one colour a submission.

    Parameters
    ----------
    ax : matplotlib Axes
    cohorts : pandas DataFrame
        :func:`atlas_ramp.results.breakdown.cohort_table`: index (submission, cohort).
    names : list of str
    """
    labels = sorted(set(cohorts.index.get_level_values("cohort")))
    width = 0.8 / len(names)
    x = np.arange(len(labels))
    for offset, name in enumerate(names):
        table = cohorts.loc[name].reindex(labels)
        ax.bar(
            x + (offset - (len(names) - 1) / 2) * width,
            table["dice_mean"].fillna(0),
            width,
            yerr=table["dice_sd"].fillna(0),
            capsize=2,
            color=SUBMISSION_COLOURS[offset % len(SUBMISSION_COLOURS)],
            label=name,
        )
    counts = cohorts.loc[names[0]].reindex(labels)["subjects"]
    ax.set_xticks(x, [f"{c}\n(n={n})" for c, n in zip(labels, counts, strict=True)])
    ax.set(
        ylim=(0, 1.05),
        xlabel="cohort (site)",
        ylabel="Dice (mean ± sd over subjects)",
        title="Dice per cohort",
    )
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, title="submission")
