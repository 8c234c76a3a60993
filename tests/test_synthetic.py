"""Tests of the synthetic ATLAS-like sample (atlas_ramp.synthetic, montage)."""

import csv
import json
import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nilearn.datasets import load_mni152_template
from scipy import ndimage
from scipy.spatial.transform import Rotation

from atlas_ramp import bids, synthetic
from atlas_ramp.bids import DataError
from atlas_ramp.download import main as download_main
from atlas_ramp.results.montage import main as montage_main
from atlas_ramp.results.montage import render_montage
from atlas_ramp.testing.release import write_atlas_release

SHAPE_4MM = (50, 59, 48)  # ceil((197, 233, 189) / 4)
TINY = dict(n_train=2, n_test=1, n_cohorts=1, seed=0, downsample=6, progress=False)


def read_tsv(path: Path) -> list[dict]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream, delimiter="\t"))


def split_files(split_dir: Path) -> dict[str, bytes]:
    """Relative path -> content of every file of a split."""
    return {
        str(p.relative_to(split_dir)): p.read_bytes()
        for p in sorted(split_dir.rglob("*"))
        if p.is_file()
    }


def hidden_leftovers(folder: Path) -> list[Path]:
    """Temporary files or folders of the generator (other tests may add .cache)."""
    return [p for p in folder.rglob(".*") if ".partial" in p.name or ".old-" in p.name]


# --------------------------------------------------------------------------
# Layout, names, metadata
# --------------------------------------------------------------------------


def test_layout_and_names_are_atlas(small_sample):
    pattern = re.compile(
        r"^(train|test|generalizability)/R(\d{3})/sub-r(\d{3})s(\d{3})/ses-1/anat/"
        r"sub-r\3s\4_ses-1_space-MNI152NLin2009aSym_"
        r"(T1w|label-L_desc-T1lesion_mask)\.nii\.gz$"
    )
    counts = {"train": 0, "test": 0, "generalizability": 0}
    for split in counts:
        split_dir = small_sample / split
        assert (split_dir / "dataset_description.json").is_file()
        assert (split_dir / "participants.tsv").is_file()
        for path in split_dir.rglob("*.nii.gz"):
            relative = str(path.relative_to(small_sample))
            match = pattern.match(relative)
            assert match, relative
            assert match[2] == match[3]  # folder cohort == subject's cohort
        for subject in bids.find_subjects(split_dir):
            anat = bids.anat_dir(split_dir, subject.subject_id)
            assert subject.t1w_path == anat / bids.t1w_name(subject.subject_id)
            assert subject.mask_path == anat / bids.mask_name(subject.subject_id)
            assert sorted(p.name for p in anat.iterdir()) == sorted(
                [subject.t1w_path.name, subject.mask_path.name]
            )
            counts[split] += 1
    assert counts == {"train": 12, "test": 6, "generalizability": 16}
    assert hidden_leftovers(small_sample) == []
    marker = json.loads((small_sample / ".complete").read_text())
    assert marker["generator"] == synthetic.GENERATOR_NAME
    assert (marker["n_train"], marker["n_test"], marker["downsample"]) == (12, 6, 4)
    assert marker["n_generalizability"] == 16


def test_split_is_cohort_stratified_and_disjoint(small_sample):
    train = {s.subject_id: s.cohort for s in bids.find_subjects(small_sample / "train")}
    test = {s.subject_id: s.cohort for s in bids.find_subjects(small_sample / "test")}
    assert not set(train) & set(test)
    assert set(test.values()) <= set(train.values())
    assert len(set(test.values())) >= 2  # spread over cohorts
    # Subject numbers run within each cohort, train and test together.
    for cohort in set(train.values()):
        numbers = sorted(
            int(s[-3:]) for s, c in {**train, **test}.items() if c == cohort
        )
        assert numbers == list(range(1, len(numbers) + 1))


def test_participants_tsv_matches_the_masks(small_sample):
    for split in ("train", "test", "generalizability"):
        rows = read_tsv(small_sample / split / "participants.tsv")
        subjects = bids.find_subjects(small_sample / split)
        assert [row["participant_id"] for row in rows] == [
            s.subject_id for s in subjects
        ]
        assert list(rows[0]) == list(synthetic.PARTICIPANT_COLUMNS)
        for row, subject in zip(rows, subjects, strict=True):
            assert row["cohort"] == subject.cohort
            assert row["hemisphere"] in {"left", "right", "bilateral"}
            assert row["location"] in synthetic.LOCATIONS
            assert int(row["days_post_stroke"]) > 0
            mask_image = nib.load(subject.mask_path)
            mask = np.asarray(mask_image.dataobj) > 0
            voxel_ml = abs(np.linalg.det(mask_image.affine[:3, :3])) / 1000
            assert float(row["lesion_volume_ml"]) == pytest.approx(
                mask.sum() * voxel_ml, abs=1e-3
            )
            _, n_components = ndimage.label(mask)
            assert int(row["n_lesions"]) == n_components
            x_mm = (
                mask_image.affine @ np.c_[np.argwhere(mask), np.ones(mask.sum())].T
            )[0]
            # Supratentorial lesions stay in their hemisphere (x < 0 is left).
            if row["location"] != "cerebellum_brainstem" and n_components == 1:
                side = -1 if row["hemisphere"] == "left" else 1
                assert np.mean(side * x_mm > 0) > 0.9


def test_dataset_description(small_sample):
    for split in ("train", "test", "generalizability"):
        description = json.loads(
            (small_sample / split / "dataset_description.json").read_text()
        )
        assert description["DatasetType"] == "derivative"
        assert description["BIDSVersion"]
        assert split in description["Name"]
        generated_by = description["GeneratedBy"][0]
        assert generated_by["Name"] == synthetic.GENERATOR_NAME
        assert generated_by["Seed"] == 0
        assert generated_by["Downsample"] == 4
        assert "MNI152" in generated_by["Description"]
        assert "nilearn" in generated_by["Description"]
        assert "SYNTHETIC" in description["Notes"]


def test_images_and_masks(small_sample):
    expected_affine = synthetic.downsampled_affine(
        load_mni152_template(resolution=1).affine, 4
    )
    for subject in bids.find_subjects(small_sample / "train")[:6]:
        t1_image, mask_image = nib.load(subject.t1w_path), nib.load(subject.mask_path)
        assert t1_image.shape == mask_image.shape == SHAPE_4MM
        assert np.allclose(t1_image.affine, expected_affine)
        assert np.allclose(mask_image.affine, expected_affine)
        assert t1_image.get_data_dtype() == np.int16
        assert mask_image.get_data_dtype() == np.uint8
        t1 = t1_image.get_fdata()
        mask = np.asarray(mask_image.dataobj)
        assert set(np.unique(mask)) == {0, 1}
        assert (t1[mask == 1] > 0).all(), "lesion voxels outside the brain"


def test_lesions_are_darker_than_white_matter():
    anatomy = synthetic.load_anatomy(4)
    white = anatomy.white_matter > 0.9
    for index in range(6):
        subject = synthetic.make_subject(
            synthetic.subject_seed(3, index), None, anatomy
        )
        lesion = subject.mask.astype(bool)
        near = ndimage.binary_dilation(lesion, iterations=3) & ~lesion & white
        reference = subject.t1[near] if near.sum() >= 5 else subject.t1[white]
        assert np.median(subject.t1[lesion]) < 0.75 * np.median(reference)


def test_downsampled_affine_keeps_the_field_of_view_corner():
    affine = load_mni152_template(resolution=1).affine
    for factor in (1, 2, 4, 6):
        coarse = synthetic.downsampled_affine(affine, factor)
        fine_corner = affine @ [-0.5, -0.5, -0.5, 1]
        coarse_corner = coarse @ [-0.5, -0.5, -0.5, 1]
        assert np.allclose(fine_corner, coarse_corner)
        assert np.allclose(np.diag(coarse)[:3], factor * np.diag(affine)[:3])


# --------------------------------------------------------------------------
# Subject plans and cohorts
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n_train, n_test, n_cohorts",
    [(40, 16, 6), (12, 6, 3), (2, 1, 1), (5, 0, 2), (7, 7, 7), (30, 1, 4), (3, 20, 5)],
)
def test_plan_subjects_counts_are_exact(n_train, n_test, n_cohorts):
    records = synthetic.plan_subjects(n_train, n_test, n_cohorts, seed=1)
    assert sum(r.split == "train" for r in records) == n_train
    assert sum(r.split == "test" for r in records) == n_test
    assert {r.cohort for r in records} == {f"R{c:03d}" for c in range(1, n_cohorts + 1)}
    assert [r.index for r in records] == list(range(n_train + n_test))
    assert records == synthetic.plan_subjects(n_train, n_test, n_cohorts, seed=1)


@settings(max_examples=60, deadline=None)
@given(
    n_train=st.integers(1, 60),
    n_test=st.integers(0, 30),
    n_cohorts=st.integers(1, 12),
    seed=st.integers(0, 2**16),
)
def test_plan_subjects_any_counts(n_train, n_test, n_cohorts, seed):
    n_cohorts = min(n_cohorts, n_train + n_test)
    records = synthetic.plan_subjects(n_train, n_test, n_cohorts, seed)
    assert sum(r.split == "test" for r in records) == n_test
    assert len({r.subject_id for r in records}) == n_train + n_test
    assert all(bids.cohort_of(r.subject_id) == r.cohort for r in records)


def test_cohorts_have_unequal_sizes_and_two_are_blurred():
    records = synthetic.plan_subjects(40, 16, 6, seed=0)
    sizes = [sum(r.cohort == f"R{c:03d}" for r in records) for c in range(1, 7)]
    assert len(set(sizes)) > 2 and min(sizes) >= 2
    profiles = synthetic.make_cohort_profiles(6, seed=0)
    assert [p.name for p in profiles] == [f"R{c:03d}" for c in range(1, 7)]
    blurred = [p.blur_fwhm_mm for p in profiles if p.blur_fwhm_mm > 0]
    assert len(blurred) == 2 and all(1 <= b <= 2 for b in blurred)
    assert len({p.intensity_scale for p in profiles}) == 6


def test_lesion_statistics_follow_atlas():
    """Plans of 1000 subjects: counts, locations and volumes like ATLAS."""
    rng = np.random.default_rng(2024)
    plans = [synthetic.sample_lesion_plan(rng) for _ in range(1000)]
    check_atlas_statistics(plans)


def test_generalizability_lesion_statistics_follow_atlas():
    """The same statistics for 1000 generalizability subjects (their streams)."""
    plans = []
    for index in range(1000):
        seed = synthetic.subject_seed(0, index, generalizability=True)
        plan_rng = synthetic.streams.child_rng(seed, synthetic.streams.PLAN)
        plans.append(synthetic.sample_lesion_plan(plan_rng))
    check_atlas_statistics(plans)


def check_atlas_statistics(plans):
    single = np.mean([len(p) == 1 for p in plans])
    assert 0.55 <= single <= 0.7
    for location, share in zip(
        synthetic.LOCATIONS, synthetic.LOCATION_SHARES, strict=True
    ):
        observed = np.mean([p[0].location == location for p in plans])
        assert abs(observed - share) < 0.05, location
    left = np.mean([p[0].hemisphere == "left" for p in plans])
    assert 0.45 <= left <= 0.55
    for plan in plans:  # the first lesion is the largest
        assert plan[0].volume_ml == max(lesion.volume_ml for lesion in plan)
    totals = np.array([sum(lesion.volume_ml for lesion in p) for p in plans])
    assert 2 <= np.median(totals) <= 10
    assert totals.min() < 1
    assert totals.max() > 100


@pytest.mark.parametrize("generalizability", [False, True])
def test_rendered_lesions_follow_their_plan(generalizability):
    """Drawn lesions have the planned class, side and (about) the volume."""
    anatomy = synthetic.load_anatomy(4)
    variation = synthetic.UNSEEN_VARIATION if generalizability else None
    ratios = []
    for index in range(24):
        seed = synthetic.subject_seed(7, index, generalizability=generalizability)
        subject = synthetic.make_subject(seed, None, anatomy, variation=variation)
        plan_rng = synthetic.streams.child_rng(seed, synthetic.streams.PLAN)
        plan = synthetic.sample_lesion_plan(plan_rng)
        drawn = subject.info["lesions"]
        assert [(d["location"], d["hemisphere"]) for d in drawn] == [
            (p.location, p.hemisphere) for p in plan
        ]
        assert subject.mask.any()
        assert subject.info["lesion_volume_ml"] == pytest.approx(
            subject.mask.sum() * anatomy.voxel_volume_ml
        )
        for lesion, planned in zip(drawn, plan, strict=True):
            if planned.volume_ml > 1:  # many voxels: the volume can be hit
                ratios.append(lesion["volume_ml"] / planned.volume_ml)
    assert 0.9 < np.median(ratios) < 1.1
    assert min(ratios) > 0.5


def test_subject_is_the_same_on_every_grid():
    seed = synthetic.subject_seed(0, 5)
    info = {
        factor: synthetic.make_subject(seed, downsample=factor).info
        for factor in (4, 6)
    }
    for coarse, fine in zip(info[6]["lesions"], info[4]["lesions"], strict=True):
        assert coarse["location"] == fine["location"]
        distance = np.linalg.norm(np.subtract(coarse["centre_mm"], fine["centre_mm"]))
        assert distance < 8


def test_coarse_grids_keep_every_lesion():
    factor = 6  # 216 µL voxels: the smallest lesions are a fraction of one
    anatomy = synthetic.load_anatomy(factor)
    assert anatomy.shape == tuple(int(np.ceil(n / factor)) for n in (197, 233, 189))
    for index in range(12):
        subject = synthetic.make_subject(
            synthetic.subject_seed(1, index), None, anatomy
        )
        assert all(lesion["volume_ml"] > 0 for lesion in subject.info["lesions"])


@pytest.mark.parametrize("bad", [0, 9, 2.5, -1])
def test_bad_downsample_is_refused(bad):
    with pytest.raises(ValueError, match="downsample"):
        synthetic.load_anatomy(bad)


# --------------------------------------------------------------------------
# Determinism, skipping, rebuilding, interruptions
# --------------------------------------------------------------------------


def test_subjects_are_deterministic():
    anatomy = synthetic.load_anatomy(4)
    profile = synthetic.make_cohort_profiles(3, seed=0)[1]
    first = synthetic.make_subject(synthetic.subject_seed(0, 2), profile, anatomy)
    again = synthetic.make_subject(synthetic.subject_seed(0, 2), profile, anatomy)
    other = synthetic.make_subject(synthetic.subject_seed(1, 2), profile, anatomy)
    assert np.array_equal(first.t1, again.t1)
    assert np.array_equal(first.mask, again.mask)
    assert first.info == again.info
    assert not np.array_equal(first.t1, other.t1)
    assert not np.array_equal(first.mask, other.mask)


def test_builds_are_byte_identical(tmp_path):
    one = synthetic.build_sample(tmp_path / "one", **TINY)
    two = synthetic.build_sample(tmp_path / "two", **TINY, n_jobs=2)
    three = synthetic.build_sample(tmp_path / "three", **{**TINY, "seed": 1})
    for split in ("train", "test"):
        assert split_files(one / split) == split_files(two / split)
        assert split_files(one / split) != split_files(three / split)


def test_complete_sample_is_skipped_and_force_rebuilds(tmp_path, capsys):
    output = synthetic.build_sample(tmp_path / "data", **TINY)
    image = next((output / "train").rglob("*_T1w.nii.gz"))
    stamp = image.stat().st_mtime_ns
    capsys.readouterr()

    synthetic.build_sample(output, **TINY)
    assert "complete" in capsys.readouterr().out
    assert image.stat().st_mtime_ns == stamp

    synthetic.build_sample(output, **TINY, force=True)
    assert image.stat().st_mtime_ns != stamp
    assert hidden_leftovers(output) == []

    synthetic.build_sample(output, **{**TINY, "n_train": 3})
    assert "other parameters" in capsys.readouterr().out
    assert len(read_tsv(output / "train" / "participants.tsv")) == 3
    assert json.loads((output / ".complete").read_text())["n_train"] == 3


def test_missing_files_trigger_a_rebuild(tmp_path, capsys):
    output = synthetic.build_sample(tmp_path / "data", **TINY)
    next((output / "test").rglob("*_T1w.nii.gz")).unlink()
    capsys.readouterr()
    synthetic.build_sample(output, **TINY)
    assert "missing" in capsys.readouterr().out
    assert len(list((output / "test").rglob("*_T1w.nii.gz"))) == 1


def fail_after(monkeypatch, n_subjects: int):
    """Make the subject writer raise once ``n_subjects`` were written."""
    real_writer = synthetic.write_subject
    calls = []

    def writer(*args, **kwargs):
        if len(calls) >= n_subjects:
            raise KeyboardInterrupt("simulated interruption")
        calls.append(args)
        return real_writer(*args, **kwargs)

    monkeypatch.setattr(synthetic.sample, "write_subject", writer)


def test_interrupted_first_build_leaves_nothing(tmp_path, monkeypatch):
    fail_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        synthetic.build_sample(tmp_path / "data", **TINY, n_jobs=1)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == []


def test_interrupted_rebuild_keeps_the_previous_sample(tmp_path, monkeypatch):
    output = synthetic.build_sample(tmp_path / "data", **TINY)
    before = {split: split_files(output / split) for split in ("train", "test")}
    marker = (output / ".complete").read_text()

    fail_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        synthetic.build_sample(output, **{**TINY, "seed": 5}, force=True, n_jobs=1)

    assert {split: split_files(output / split) for split in before} == before
    assert (output / ".complete").read_text() == marker
    assert hidden_leftovers(output) == []
    monkeypatch.undo()
    synthetic.build_sample(output, **TINY)  # still complete: skipped
    assert {split: split_files(output / split) for split in before} == before


def test_nifti_is_never_half_written(tmp_path, monkeypatch):
    """A failure while writing a file leaves no file under its final name."""
    subject = synthetic.make_subject(0, downsample=6)

    def broken_compress(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(synthetic.files.gzip, "compress", broken_compress)
    with pytest.raises(OSError, match="disk full"):
        synthetic.write_subject(tmp_path, "sub-r001s001", subject)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_foreign_data_is_not_overwritten(tmp_path):
    output = tmp_path / "data"
    precious = output / "train" / "R001" / "real.nii.gz"
    precious.parent.mkdir(parents=True)
    precious.write_bytes(b"real ATLAS data")
    with pytest.raises(DataError, match="--force"):
        synthetic.build_sample(output, **TINY)
    assert precious.read_bytes() == b"real ATLAS data"
    synthetic.build_sample(output, **TINY, force=True)
    assert not precious.exists()


# --------------------------------------------------------------------------
# The generalizability split
# --------------------------------------------------------------------------


def test_generalizability_cohorts_never_appear_in_train_or_test(small_sample):
    seen = {
        s.cohort
        for split in ("train", "test")
        for s in bids.find_subjects(small_sample / split)
    }
    unseen = bids.find_subjects(small_sample / "generalizability")
    assert len(unseen) == 16
    assert all(s.mask_path is not None for s in unseen)  # labelled
    cohorts = {s.cohort for s in unseen}
    assert not cohorts & seen
    assert len(cohorts) == 4
    # New cohort numbers, after the training ones (R001-R003 here).
    assert min(int(c[1:]) for c in cohorts) == max(int(c[1:]) for c in seen) + 1
    rows = read_tsv(small_sample / "generalizability" / "participants.tsv")
    assert {row["cohort"] for row in rows} == cohorts


def test_unseen_scanner_profiles_are_outside_the_training_ranges():
    ranges = synthetic.scanners.TRAINING_RANGES
    numeric = [name for name in ranges if name != "blur_fwhm_mm"]
    max_share = ranges["intensity_offset"][1] / ranges["intensity_scale"][0]
    for seed in range(30):
        # The documented ranges do hold the training cohorts...
        for profile in synthetic.make_cohort_profiles(12, seed):
            for name in numeric:
                low, high = ranges[name]
                assert low <= getattr(profile, name) <= high, (name, profile)
            blur = profile.blur_fwhm_mm
            assert blur == 0 or ranges["blur_fwhm_mm"][0] <= blur <= 2.0
            assert profile.intensity_offset / profile.intensity_scale <= max_share
        # ...and no unseen cohort is inside any of them.
        unseen = synthetic.make_unseen_cohort_profiles(11, seed, first_number=13)
        assert [p.name for p in unseen] == [f"R{n:03d}" for n in range(13, 24)]
        for profile in unseen:
            for name in numeric:
                if name == "intensity_offset":
                    continue  # an offset relative to the scale, below
                low, high = ranges[name]
                value = getattr(profile, name)
                assert not low <= value <= high, (name, profile)
            assert profile.intensity_offset / profile.intensity_scale >= 0.2
        blurs = [p.blur_fwhm_mm for p in unseen]
        assert blurs[::2] and all(b > ranges["blur_fwhm_mm"][1] for b in blurs[::2])
        assert all(b == 0 for b in blurs[1::2])


def test_unseen_subjects_vary_outside_the_training_ranges():
    training, unseen = synthetic.SubjectVariation(), synthetic.UNSEEN_VARIATION
    for name in ("deformation_mm", "lesion_core", "lesion_rim_mm"):
        assert getattr(unseen, name)[0] > getattr(training, name)[1], name
    assert unseen.perivascular_spaces[0] >= training.perivascular_spaces[1]
    assert not training.misregistered and unseen.misregistered
    anatomy = synthetic.load_anatomy(6)
    severities = []
    for index in range(10):
        info = synthetic.make_subject(
            synthetic.subject_seed(0, index, generalizability=True),
            None,
            anatomy,
            variation=unseen,
        ).info
        distractors = info["distractors"]
        assert 60 <= distractors["perivascular_spaces"] < 120
        severities.append(distractors["white_matter_hypointensity"])
        motion = info["misregistration"]
        assert 1.5 <= np.linalg.norm(motion["shift_mm"]) <= 3.0 + 0.01
        assert 1.5 <= motion["rotation_degrees"] <= 3.0
        trained = synthetic.make_subject(
            synthetic.subject_seed(0, index), None, anatomy
        )
        assert "misregistration" not in trained.info
        assert 8 <= trained.info["distractors"]["perivascular_spaces"] < 50
    # Severe white-matter hypointensities: rare in training (Beta(1.3, 3):
    # 9% of subjects at 0.6 or more), every unseen subject.
    assert min(severities) >= 0.6
    rng = np.random.default_rng(0)
    assert np.mean(rng.beta(1.3, 3.0, size=10_000) >= 0.6) < 0.12


@pytest.mark.parametrize("shift_mm, degrees", [(8.0, 0.0), (0.0, 10.0), (6.0, 6.0)])
def test_misregistration_moves_image_and_mask_together(shift_mm, degrees):
    anatomy = synthetic.load_anatomy(2)
    mask = np.zeros(anatomy.shape, dtype=np.uint8)
    point = np.array([30.0, -20.0, 20.0])
    centre = anatomy.index_of(point)
    mask[tuple(slice(c - 4, c + 5) for c in centre)] = 1
    t1 = mask * np.float32(500)
    moved_t1, moved_mask, motion = synthetic.fields.misregister(
        anatomy,
        t1,
        mask,
        np.random.default_rng(1),
        (shift_mm, shift_mm),
        (degrees, degrees),
    )
    assert np.linalg.norm(motion["shift_mm"]) == pytest.approx(shift_mm, abs=0.01)
    assert motion["rotation_degrees"] == pytest.approx(degrees)
    # Image and mask moved together (nearest neighbour and linear
    # interpolation differ only at the border), the mask kept its size.
    inside, bright = moved_mask > 0, moved_t1 >= 250
    assert (moved_t1[inside] > 0).all() and not (moved_t1[~inside] >= 450).any()
    assert 2 * (inside & bright).sum() / (inside.sum() + bright.sum()) > 0.85
    assert abs(int(moved_mask.sum()) - int(mask.sum())) <= 0.1 * mask.sum()

    def world_centroid(volume):
        return (anatomy.affine @ [*np.argwhere(volume).mean(0), 1])[:3]

    angle = np.deg2rad(motion["rotation_degrees"])
    rotation = Rotation.from_rotvec(angle * np.array(motion["rotation_axis"]))
    expected = rotation.apply(world_centroid(mask)) + motion["shift_mm"]
    # Nearest neighbour: within half a voxel (1 mm here) on each axis.
    error_mm = world_centroid(moved_mask) - expected
    assert np.abs(error_mm).max() <= anatomy.downsample / 2 + 0.25, error_mm


def test_train_and_test_do_not_depend_on_generalizability(tmp_path, capsys):
    without = synthetic.build_sample(tmp_path / "a", **TINY, n_generalizability=0)
    with_five = synthetic.build_sample(tmp_path / "b", **TINY, n_generalizability=5)
    assert not (without / "generalizability").exists()
    assert len(read_tsv(with_five / "generalizability" / "participants.tsv")) == 5
    for split in ("train", "test"):
        assert split_files(without / split) == split_files(with_five / split)
    # Rebuilt without it, the split goes: the sample is one whole.
    synthetic.build_sample(with_five, **TINY, n_generalizability=0)
    assert "other parameters" in capsys.readouterr().out
    assert not (with_five / "generalizability").exists()
    assert hidden_leftovers(with_five) == []
    with pytest.raises(ValueError, match="n_generalizability"):
        synthetic.build_sample(tmp_path / "c", **TINY, n_generalizability=-1)


def test_download_data_writes_generalizability_unless_zero(tmp_path, capsys):
    tiny = ["--n-train", "2", "--n-test", "1", "--n-cohorts", "1"]
    tiny += ["--downsample", "6", "--quiet"]
    assert (
        download_main(
            ["--output", str(tmp_path / "none"), *tiny, "--n-generalizability", "0"]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "none").iterdir()) == [
        ".complete",
        "test",
        "train",
    ]
    assert download_main(["--output", str(tmp_path / "default"), *tiny]) == 0
    folder = tmp_path / "default" / "generalizability"
    assert len(bids.find_subjects(folder)) == 16
    assert (folder / "dataset_description.json").is_file()
    assert "generalizability" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        download_main(["--output", str(tmp_path), "--n-generalizability", "-1"])


def test_interrupted_generalizability_keeps_the_previous_sample(tmp_path, monkeypatch):
    output = synthetic.build_sample(tmp_path / "data", **TINY)
    splits = ("train", "test", "generalizability")
    before = {split: split_files(output / split) for split in splits}
    fail_after(monkeypatch, 5)  # train and test (3) done, then 2 of 16 others
    with pytest.raises(KeyboardInterrupt):
        synthetic.build_sample(output, **{**TINY, "seed": 5}, force=True, n_jobs=1)
    assert {split: split_files(output / split) for split in splits} == before
    assert hidden_leftovers(output) == []
    monkeypatch.undo()
    next((output / "generalizability").rglob("*_mask.nii.gz")).unlink()
    synthetic.build_sample(output, **TINY)  # resumes: rebuilds what is missing
    assert {split: split_files(output / split) for split in splits} == before


# --------------------------------------------------------------------------
# Worker processes
# --------------------------------------------------------------------------


def test_available_cpus_is_portable(monkeypatch):
    from atlas_ramp import machine

    monkeypatch.setattr(os, "process_cpu_count", lambda: 5, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert machine.available_cpus() == 5  # Python 3.13+
    monkeypatch.delattr(os, "process_cpu_count")
    assert machine.available_cpus() == 3  # Linux before 3.13
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 7)
    assert machine.available_cpus() == 7  # macOS, Windows
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert machine.available_cpus() == 1


def test_default_jobs_use_the_cores_that_are_there(monkeypatch):
    monkeypatch.setattr(synthetic.workers, "available_cpus", lambda: 12)
    monkeypatch.setattr(synthetic.workers, "physical_memory", lambda: 256e9)
    assert synthetic.default_jobs(56, 1) == 12  # no longer capped at 2
    assert synthetic.default_jobs(56, 2) == 12
    assert synthetic.default_jobs(10, 1) == 10  # at most one per subject
    assert synthetic.default_jobs(5, 1) == 1  # too few subjects to pay off
    assert synthetic.default_jobs(56, 4) == 1  # small volumes: one process
    monkeypatch.setattr(synthetic.workers, "physical_memory", lambda: 8e9)
    assert synthetic.default_jobs(56, 1) == 3  # half of 8 GB / 1.2 GB a worker
    assert synthetic.default_jobs(56, 2) == 12  # 2 mm workers need 1/8 of it
    monkeypatch.setattr(synthetic.workers, "physical_memory", lambda: None)
    assert synthetic.default_jobs(56, 1) == 12
    monkeypatch.setattr(synthetic.workers, "available_cpus", lambda: 1)
    assert synthetic.default_jobs(56, 1) == 1


def test_jobs_option_of_download_data(tmp_path, monkeypatch, capsys):
    with pytest.raises(ValueError, match="n_jobs"):
        synthetic.build_sample(tmp_path / "data", **TINY, n_jobs=0)
    calls = []
    monkeypatch.setattr(synthetic, "build_sample", lambda **kw: calls.append(kw))
    assert download_main(["--output", str(tmp_path), "--jobs", "3"]) == 0
    assert download_main(["--output", str(tmp_path)]) == 0
    assert [call["n_jobs"] for call in calls] == [3, None]
    for bad in ("0", "-2", "two"):
        with pytest.raises(SystemExit):
            download_main(["--output", str(tmp_path), "--jobs", bad])
        assert "positive integer" in capsys.readouterr().err


# --------------------------------------------------------------------------
# Release layout and montage
# --------------------------------------------------------------------------


def test_write_atlas_release_layout(tmp_path):
    release = write_atlas_release(tmp_path, n_subjects=5, n_unlabelled=3, downsample=6)
    assert release == tmp_path / "ATLAS_2"
    training = bids.find_subjects(release / "Training")
    testing = bids.find_subjects(release / "Testing")
    assert len(training) == 5 and len(testing) == 3
    assert all(s.mask_path is not None for s in training)
    assert all(s.mask_path is None for s in testing)
    assert not {s.subject_id for s in training} & {s.subject_id for s in testing}
    assert {s.cohort for s in testing} <= {s.cohort for s in training}
    for subject in training + testing:
        relative = subject.t1w_path.relative_to(release)
        assert relative.parts[0] in {"Training", "Testing"}
        assert relative.parts[1] == subject.cohort
        assert relative.parts[2:4] == (subject.subject_id, "ses-1")


def test_montage_png(small_sample, tmp_path, capsys):
    path = render_montage(small_sample / "train", tmp_path / "montage.png", 3)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    output = tmp_path / "cli" / "montage.png"
    arguments = [str(small_sample / "test"), "--output", str(output)]
    assert montage_main([*arguments, "--max-subjects", "2"]) == 0
    assert output.stat().st_size > 10_000
    assert "Montage written" in capsys.readouterr().out
