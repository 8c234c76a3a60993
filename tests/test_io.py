"""Safe writing (atlas_ramp._io): a final name holds a whole file or nothing new."""

import json

import numpy as np
import pytest

from atlas_ramp._io import (
    atomic_path,
    atomic_write_text,
    object_array,
    replace_folder,
    swap_into_place,
    write_dataset_description,
    write_tsv,
)


def test_atomic_path_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "scores.csv"
    target.write_text("good\n")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "good\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.csv"]


def test_atomic_path_keeps_the_nifti_suffix(tmp_path):
    with atomic_path(tmp_path / "mask.nii.gz") as temporary:
        assert temporary.name.endswith(".nii.gz")
        assert temporary.parent == tmp_path
        temporary.write_bytes(b"x")
    assert (tmp_path / "mask.nii.gz").read_bytes() == b"x"


def test_writers(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "é\n")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "é\n"
    write_tsv(tmp_path / "t.tsv", ["subject", "cohort"], [("sub-r001s001", "R001")])
    assert (tmp_path / "t.tsv").read_text() == "subject\tcohort\nsub-r001s001\tR001\n"
    with pytest.raises(ValueError, match="2 columns"):
        write_tsv(tmp_path / "bad.tsv", ["a", "b"], [(1,)])
    assert not (tmp_path / "bad.tsv").exists()
    path = write_dataset_description(tmp_path, "Sample", License="CC-BY")
    content = json.loads(path.read_text())
    assert content["Name"] == "Sample" and content["DatasetType"] == "derivative"
    assert content["License"] == "CC-BY" and "BIDSVersion" in content


def test_swap_into_place_moves_nothing_when_refused_then_swaps(tmp_path):
    new, destination = tmp_path / "new", tmp_path / "data"
    (new / "train").mkdir(parents=True)
    (new / "train" / "new.txt").write_text("new")
    (destination / "train").mkdir(parents=True)
    (destination / "train" / "old.txt").write_text("old")
    (destination / "test").mkdir()
    # A trash folder that exists already: refused before anything moves.
    (tmp_path / "trash").mkdir()
    with pytest.raises(FileExistsError):
        swap_into_place(new, destination, ["train", "test"], tmp_path / "trash")
    assert (destination / "train" / "old.txt").read_text() == "old"
    swap_into_place(new, destination, ["train", "test"], tmp_path / "trash2")
    assert (destination / "train" / "new.txt").read_text() == "new"
    assert not (destination / "test").exists()
    assert (tmp_path / "trash2" / "test").is_dir()


def test_replace_folder_keeps_the_old_folder_when_the_swap_fails(tmp_path, monkeypatch):
    import atlas_ramp._io as io_module

    output = tmp_path / "submission" / "training_output"
    (output / "fold_0").mkdir(parents=True)
    (output / "fold_0" / "scores.csv").write_text("old")
    produced = tmp_path / "stage" / "output"
    (produced / "fold_0").mkdir(parents=True)
    (produced / "fold_0" / "scores.csv").write_text("new")
    renames = []

    def rename_then_fail(source, target):
        renames.append(source)
        if len(renames) == 2:  # the old folder has left, the new one fails
            raise OSError("disk gone")
        return real_rename(source, target)

    real_rename = io_module.os.rename
    monkeypatch.setattr(io_module.os, "rename", rename_then_fail)
    with pytest.raises(OSError, match="disk gone"):
        replace_folder(produced, output)
    monkeypatch.undo()
    assert (output / "fold_0" / "scores.csv").read_text() == "old"
    (produced / "fold_1").mkdir(parents=True)
    (produced / "fold_1" / "scores.csv").write_text("new")
    replace_folder(produced, output)
    assert [p.name for p in output.iterdir()] == ["fold_1"]
    assert (output / "fold_1" / "scores.csv").read_text() == "new"
    assert [p.name for p in output.parent.iterdir()] == ["training_output"]
    assert not produced.exists()


def test_object_array_never_broadcasts():
    items = object_array([np.zeros(3), np.ones(3)])
    assert items.shape == (2,) and items.dtype == object


def test_written_files_and_staging_folders_get_the_usual_mode(tmp_path):
    # mkstemp/mkdtemp make private entries; a course server's other users
    # (the RAMP worker) must be able to read what the kit wrote.
    import os
    import stat

    from atlas_ramp._io import staging_folder

    umask = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.txt", "x")
        folder = staging_folder(tmp_path, ".stage-")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert folder.parent == tmp_path and folder.name.startswith(".stage-")


def test_link_or_copy_links_else_copies(tmp_path, monkeypatch):
    from atlas_ramp import _io

    source = tmp_path / "a.txt"
    source.write_text("lesion")
    _io.link_or_copy(source, tmp_path / "sub" / "linked.txt")
    assert (tmp_path / "sub" / "linked.txt").stat().st_ino == source.stat().st_ino

    def no_links(*args):
        raise OSError("cross-device link")

    monkeypatch.setattr(_io.os, "link", no_links)
    _io.link_or_copy(source, tmp_path / "copied.txt")
    copied = tmp_path / "copied.txt"
    assert copied.read_text() == "lesion"
    assert copied.stat().st_ino != source.stat().st_ino


def test_file_sha256_reports_each_chunk(tmp_path):
    import hashlib

    from atlas_ramp._io import file_sha256

    path = tmp_path / "blob.bin"
    path.write_bytes(bytes(range(256)) * 40)
    seen = []
    assert file_sha256(path, seen.append, chunk_size=1000) == (
        hashlib.sha256(path.read_bytes()).hexdigest()
    )
    assert sum(seen) == 10240 and len(seen) == 11
