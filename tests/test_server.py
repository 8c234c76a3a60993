"""The deployment's safety checks, without a server (no ramp-board needed).

The whole path, with ramp-board and PostgreSQL, is in ``test_ramp_board.py``.
"""

import shutil
import zipfile

import pytest

from atlas_ramp.bids import DataError
from atlas_ramp.course import event_kit, server

from .helpers import REPO


@pytest.mark.parametrize("event", ["atlas_stroke_course", "atlas_stroke_2026_spring"])
def test_event_names_start_with_the_problem(event):
    server.check_event_name(event)


@pytest.mark.parametrize("event", ["stroke_course", "atlas_stroke", "atlas_stroke_"])
def test_other_event_names_are_refused(event):
    with pytest.raises(event_kit.DeployError, match="start with the problem name"):
        server.check_event_name(event)


def test_deploy_error_is_one_class_under_both_names():
    # Instructor code may catch server.DeployError; ramp_worker and the
    # kit checks raise atlas_ramp.course.event_kit.DeployError: the same class.
    assert server.DeployError is event_kit.DeployError


def test_bad_event_name_fails_before_any_import_of_ramp_board(tmp_path, capsys):
    arguments = ["--deployment-dir", str(tmp_path), "--event", "course", "--title", "t"]
    code = server.main(["deploy", *arguments])
    assert code == 1
    assert "--event 'course'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_served_kit_has_code_and_notebook_but_no_data(tmp_path):
    kit = tmp_path / "atlas_stroke"
    event_kit.build_kit(kit)
    assert (kit / "problem.py").is_file()
    assert (kit / event_kit.NOTEBOOK).read_bytes() == (
        REPO / "starting_kit.ipynb"
    ).read_bytes()
    assert (kit / "submissions" / "starting_kit" / "estimator.py").is_file()
    assert (kit / "atlas_ramp" / "course" / "server.py").is_file()
    readme = (kit / "README.md").read_text()  # for students: no data, how to submit
    assert "data use agreement" in readme and "5 to 19 characters" in readme
    assert not (kit / "data").exists()
    names = [path.name for path in kit.rglob("*")]
    assert not [name for name in names if event_kit.is_nifti(name)]
    assert "training_output" not in names and "__pycache__" not in names
    assert [path.name for path in tmp_path.iterdir()] == ["atlas_stroke"]


def test_images_in_the_kit_are_refused(tmp_path, small_sample):
    kit = tmp_path / "kit"
    (kit / "data").mkdir(parents=True)
    image = next(small_sample.rglob("*_T1w.nii.gz"))
    shutil.copy(image, kit / "data" / image.name)
    with pytest.raises(event_kit.DeployError, match="data use agreement") as error:
        event_kit.check_kit_has_no_data(kit)
    assert image.name in str(error.value)


def test_links_to_data_in_the_kit_are_refused(tmp_path, small_sample):
    kit = tmp_path / "kit"
    kit.mkdir()
    (kit / "data").symlink_to(small_sample, target_is_directory=True)
    with pytest.raises(event_kit.DeployError, match="link to a folder"):
        event_kit.check_kit_has_no_data(kit)


def test_a_zip_with_images_is_deleted(tmp_path):
    archive = tmp_path / "atlas_stroke_course.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("problem.py", "")
        zipped.writestr("data/train/sub-r001s001_T1w.nii.gz", b"")
    with pytest.raises(event_kit.DeployError, match="1 NIfTI files"):
        event_kit.check_zip_has_no_data(archive)
    assert not archive.exists()


def test_course_data_needs_masks(tmp_path, small_sample):
    assert event_kit.check_course_data(small_sample) == {"train": 12, "test": 6}
    unlabelled = tmp_path / "unlabelled"
    shutil.copytree(
        small_sample, unlabelled, ignore=shutil.ignore_patterns("*_mask.nii.gz")
    )
    with pytest.raises(DataError, match="has no lesion mask"):
        event_kit.check_course_data(unlabelled)
    train_only = tmp_path / "train_only"
    shutil.copytree(small_sample / "train", train_only / "train")
    with pytest.raises(DataError, match="test does not exist"):
        event_kit.check_course_data(train_only)


def test_data_folder_from_private_data_or_a_synthetic_sample(tmp_path, small_sample):
    copied = tmp_path / "copied" / "data"
    event_kit.build_data(copied, small_sample, None)
    assert event_kit.check_course_data(copied) == {"train": 12, "test": 6}
    synthetic = tmp_path / "synthetic" / "data"
    event_kit.build_data(synthetic, None, (6, 3), downsample=4)
    assert event_kit.check_course_data(synthetic) == {"train": 6, "test": 3}
    # Nothing left beside them.
    assert [path.name for path in copied.parent.iterdir()] == ["data"]


def test_event_config_has_ramp_board_sections(tmp_path):
    import yaml

    text = server.event_config_text(
        tmp_path, "atlas_stroke_course", "A course", tmp_path / "venv", 2, True
    )
    config = yaml.safe_load(text)
    assert config["ramp"]["problem_name"] == "atlas_stroke"
    assert config["ramp"]["kit_dir"] == str(tmp_path / "ramp-kits" / "atlas_stroke")
    assert config["ramp"]["data_dir"] == str(tmp_path / "ramp-data" / "atlas_stroke")
    assert config["worker"]["worker_type"] == "conda"  # ramp-engine's own, too
    assert config["worker"]["python_env"] == str(tmp_path / "venv")
    assert config["dispatcher"]["n_workers"] == 2
