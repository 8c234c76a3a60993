"""Finding subjects in every layout, clear errors on bad input, lazy cached volumes."""

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from atlas_ramp.bids import (
    DataError,
    anat_dir,
    cohort_of,
    find_subjects,
    mask_name,
    parse_entities,
    t1w_name,
)
from atlas_ramp.grids import check_split
from atlas_ramp.volume_cache import VolumeCache
from atlas_ramp.volumes import (
    ImageSequence,
    MaskSequence,
    load_masks,
    load_split,
    quick_subset,
)

from .helpers import AFFINE, SHAPE, make_split, write_subject

# ------------------------------------------------------------------ names


def test_names_and_entities_follow_atlas():
    assert t1w_name("sub-r001s002") == (
        "sub-r001s002_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz"
    )
    assert mask_name("r001s002") == (
        "sub-r001s002_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz"
    )
    entities = parse_entities(mask_name("sub-r031s010"))
    assert entities == {
        "sub": "r031s010",
        "ses": "1",
        "space": "MNI152NLin2009aSym",
        "label": "L",
        "desc": "T1lesion",
        "suffix": "mask",
    }
    assert cohort_of("sub-r031s010") == "R031"
    with pytest.raises(DataError, match="sub-ab12"):
        cohort_of("sub-ab12")


# ------------------------------------------------------------------ layouts


@pytest.mark.parametrize(
    "layout",
    [
        # The kit's own: data/train/R001/sub-.../ses-1/anat
        lambda root, sid: anat_dir(root, sid),
        # The release: ATLAS_2/Training/R001/sub-.../ses-1/anat
        lambda root, sid: anat_dir(root / "ATLAS_2" / "Training", sid),
        # BIDS derivatives: derivatives/ATLAS/sub-*/ses-*/anat
        lambda root, sid: root / "derivatives" / "ATLAS" / sid / "ses-1" / "anat",
    ],
    ids=["kit", "release", "bids-derivatives"],
)
def test_discovery_in_every_layout(tmp_path, layout):
    ids = ["sub-r002s001", "sub-r001s001", "sub-r001s002"]
    for seed, subject_id in enumerate(ids):
        write_subject(layout(tmp_path, subject_id), subject_id, seed=seed)
    subjects = find_subjects(tmp_path)
    assert [s.subject_id for s in subjects] == sorted(ids)
    assert [s.cohort for s in subjects] == ["R001", "R001", "R002"]
    assert all(s.mask_path is not None and s.session == "1" for s in subjects)


def test_unlabelled_split_is_allowed(tmp_path):
    write_subject(anat_dir(tmp_path, "sub-r001s001"), "sub-r001s001", mask=False)
    (subject,) = find_subjects(tmp_path)
    assert subject.mask_path is None
    X = ImageSequence.from_folder(tmp_path)
    with pytest.raises(DataError, match="no lesion masks"):
        load_masks(X)


def test_hidden_cache_folders_are_ignored(tmp_path):
    make_split(tmp_path)
    write_subject(tmp_path / ".cache" / "x", "sub-r009s009")
    assert "sub-r009s009" not in [s.subject_id for s in find_subjects(tmp_path)]


# ------------------------------------------------------------------ bad input


def test_missing_folder_says_how_to_build_data(tmp_path):
    with pytest.raises(DataError, match="download_data.py"):
        find_subjects(tmp_path / "nope")


def test_mask_without_image(tmp_path):
    make_split(tmp_path)
    folder = anat_dir(tmp_path, "sub-r003s001")
    _, mask = write_subject(folder, "sub-r003s001")
    (folder / t1w_name("sub-r003s001")).unlink()
    with pytest.raises(DataError, match="has no T1w image") as error:
        find_subjects(tmp_path)
    assert str(mask) in str(error.value)


def test_some_subjects_labelled_others_not(tmp_path):
    make_split(tmp_path)
    write_subject(anat_dir(tmp_path, "sub-r003s001"), "sub-r003s001", mask=False)
    with pytest.raises(DataError, match="sub-r003s001"):
        find_subjects(tmp_path)


def test_shape_mismatch_between_image_and_mask(tmp_path):
    folder = anat_dir(tmp_path, "sub-r001s001")
    write_subject(folder, "sub-r001s001")
    nib.save(
        nib.Nifti1Image(np.zeros((9, 10, 7), np.uint8), AFFINE),
        folder / mask_name("sub-r001s001"),
    )
    with pytest.raises(DataError, match=r"mask\.nii\.gz has shape"):
        check_split(find_subjects(tmp_path))


def test_affine_mismatch_between_image_and_mask(tmp_path):
    folder = anat_dir(tmp_path, "sub-r001s001")
    write_subject(folder, "sub-r001s001")
    shifted = AFFINE.copy()
    shifted[0, 3] = 10
    nib.save(
        nib.Nifti1Image(np.zeros(SHAPE, np.uint8), shifted),
        folder / mask_name("sub-r001s001"),
    )
    with pytest.raises(DataError, match="different affine"):
        check_split(find_subjects(tmp_path))


def test_volumes_of_different_shapes_in_one_split(tmp_path):
    make_split(tmp_path)
    write_subject(anat_dir(tmp_path, "sub-r003s001"), "sub-r003s001", shape=(9, 10, 9))
    with pytest.raises(DataError, match="sub-r003s001.*share the MNI grid"):
        ImageSequence.from_folder(tmp_path)


def test_mask_with_values_other_than_zero_and_one(tmp_path):
    values = np.zeros(SHAPE, np.uint8)
    values[1, 1, 1] = 2
    write_subject(anat_dir(tmp_path, "sub-r001s001"), "sub-r001s001", mask=values)
    X = ImageSequence.from_folder(tmp_path)
    with pytest.raises(DataError, match="only 0 and 1") as error:
        load_masks(X)
    assert "sub-r001s001" in str(error.value)


def test_unreadable_file(tmp_path):
    make_split(tmp_path)
    bad = anat_dir(tmp_path, "sub-r001s002") / t1w_name("sub-r001s002")
    bad.write_bytes(b"this is not a NIfTI file")
    with pytest.raises(DataError, match="Cannot read") as error:
        ImageSequence.from_folder(tmp_path)
    assert str(bad) in str(error.value)


def test_truncated_file_fails_on_read_naming_it(tmp_path):
    make_split(tmp_path)
    bad = anat_dir(tmp_path, "sub-r001s002") / t1w_name("sub-r001s002")
    raw = gzip.decompress(bad.read_bytes())
    bad.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    X = ImageSequence.from_folder(tmp_path)
    with pytest.raises(DataError, match="truncated or corrupted") as error:
        X[1]
    assert str(bad) in str(error.value)


# ------------------------------------------------------------------ lazy volumes


def test_image_sequence_is_lazy_and_indexable(tmp_path):
    make_split(tmp_path / "train")
    X = ImageSequence.from_folder(tmp_path / "train")
    assert len(X) == 3 and X.volume_shape == SHAPE and X.shape == (3, *SHAPE)
    assert X.voxel_volume_ml == pytest.approx(0.064)
    volume = X[2]
    assert volume.dtype == np.float32 and volume.shape == SHAPE
    subset = X[np.array([2, 0])]
    assert isinstance(subset, ImageSequence)
    assert subset.subject_ids.tolist() == ["sub-r002s001", "sub-r001s001"]
    assert np.array_equal(subset[0], volume)
    assert X[np.array([True, False, True])].cohorts.tolist() == ["R001", "R002"]
    assert len(X[1:]) == 2


def test_masks_are_sparse_and_dense_on_access(tmp_path):
    X, y = load_split(make_split(tmp_path / "train").parent, "train")
    assert y.dtype == object and y[0].n_voxels == 8
    dense = MaskSequence(y)[0]
    assert dense.dtype == bool and dense.shape == SHAPE and dense.sum() == 8
    assert MaskSequence(y)[[0, 1]].volumes_ml.tolist() == pytest.approx([0.512] * 2)


def test_quick_subset_spreads_over_cohorts(tmp_path):
    ids = [f"sub-r00{c}s00{i}" for c in (1, 2, 3) for i in (1, 2, 3)]
    make_split(tmp_path, ids)
    X = ImageSequence.from_folder(tmp_path, cache_dir=None)
    chosen = X[quick_subset(X, 4)]
    assert sorted(set(chosen.cohorts)) == ["R001", "R002", "R003"]
    assert len(chosen) == 4


# ------------------------------------------------------------------ cache


def test_cache_hit_and_invalidation(tmp_path, monkeypatch):
    make_split(tmp_path / "train")
    X = ImageSequence.from_folder(tmp_path / "train")
    assert X.cache_dir == (tmp_path / ".cache" / "train").resolve()
    first = X[0]
    assert len(list(X.cache_dir.glob("*.npy"))) == 1

    # A hit does not decode the NIfTI again.
    import atlas_ramp.volume_cache as volume_cache

    calls = []
    original = volume_cache.read_nifti
    monkeypatch.setattr(
        volume_cache, "read_nifti", lambda *a: calls.append(a) or original(*a)
    )
    assert np.array_equal(X[0], first)
    assert calls == []

    # Changing the source invalidates the entry.
    path = X.subjects[0].t1w_path
    new_image = np.full(SHAPE, 7.0, np.float32)
    nib.save(nib.Nifti1Image(new_image, AFFINE), path)
    os.utime(path, ns=(1, 1))
    assert np.array_equal(X[0], new_image)
    assert len(calls) == 1


def test_mask_cache_is_invalidated_too(tmp_path):
    make_split(tmp_path / "train")
    _, y = load_split(tmp_path, "train")
    mask_path = find_subjects(tmp_path / "train")[0].mask_path
    values = np.zeros(SHAPE, np.uint8)
    values[0, 0, 0] = 1
    nib.save(nib.Nifti1Image(values, AFFINE), mask_path)
    os.utime(mask_path, ns=(1, 1))
    _, y_again = load_split(tmp_path, "train")
    assert y[0].n_voxels == 8 and y_again[0].n_voxels == 1


def test_read_only_cache_falls_back_to_decoding(tmp_path):
    make_split(tmp_path / "train")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    cache = VolumeCache(blocker / "cache")
    path = find_subjects(tmp_path / "train")[0].t1w_path
    with pytest.warns(UserWarning, match="Cannot write the volume cache"):
        volume = cache.load(path)
    assert volume.shape == SHAPE


def test_damaged_cache_entry_is_rebuilt(tmp_path):
    make_split(tmp_path / "train")
    X = ImageSequence.from_folder(tmp_path / "train")
    expected = X[0]
    (entry,) = X.cache_dir.glob("*.npy")
    entry.write_bytes(b"garbage")  # its metadata still says "fresh"
    assert np.array_equal(X[0], expected)
    (meta,) = X.cache_dir.glob("*.json")
    meta.write_text("{not json")
    assert np.array_equal(X[0], expected)


def test_changing_a_cached_volume_changes_neither_the_cache_nor_later_reads(tmp_path):
    make_split(tmp_path / "train")
    X = ImageSequence.from_folder(tmp_path / "train")
    original = X[0].copy()
    from_cache = X[0]
    from_cache -= 100  # students normalize in place
    assert np.array_equal(X[0], original)


def test_cache_names_follow_the_working_folder(tmp_path, monkeypatch):
    """A relative path names another file once the working folder changes."""
    from atlas_ramp import volume_cache

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "image.nii.gz").write_bytes(b"")
    monkeypatch.chdir(tmp_path / "a")
    first = volume_cache._resolved(Path("image.nii.gz"))
    monkeypatch.chdir(tmp_path / "b")
    second = volume_cache._resolved(Path("image.nii.gz"))
    assert first == str((tmp_path / "a" / "image.nii.gz").resolve())
    assert second == str((tmp_path / "b" / "image.nii.gz").resolve())
