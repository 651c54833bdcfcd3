"""The split never separates duplicates; `dataset check` reports them; unusable folders fail clearly."""
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import REAL_DATA
from training.dataset import duplicate_groups, scan_dataset, split_items


@pytest.fixture
def data_with_duplicates(demo_data, tmp_path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(demo_data, root)
    strat = sorted((root / "stratocaster").glob("*.jpg"))
    shutil.copy(strat[0], root / "stratocaster" / "copy.jpg")  # exact duplicate
    Image.open(strat[1]).resize((80, 80)).save(root / "stratocaster" / "smaller.jpg", quality=80)  # near duplicate
    shutil.copy(strat[2], root / "les_paul" / "mislabelled.jpg")  # the same photo in two classes
    (root / "les_paul" / "broken.jpg").write_bytes(b"not a jpeg at all")
    return root


def test_duplicates_are_found(data_with_duplicates):
    scan = scan_dataset(data_with_duplicates, progress=False)
    groups = [{scan.items[i].relpath for i in g} for g in duplicate_groups(scan.items)]
    assert {"stratocaster/0000.jpg", "stratocaster/copy.jpg"} in groups
    assert {"stratocaster/0001.jpg", "stratocaster/smaller.jpg"} in groups
    assert {"stratocaster/0002.jpg", "les_paul/mislabelled.jpg"} in groups
    assert [r for r, _ in scan.unreadable] == ["les_paul/broken.jpg"]


@pytest.mark.parametrize("seed", range(12))
def test_split_never_separates_duplicates(data_with_duplicates, seed):
    scan = scan_dataset(data_with_duplicates, progress=False)
    is_valid = split_items(scan.items, 0.3, seed)
    for group in duplicate_groups(scan.items):
        assert len({is_valid[i] for i in group}) == 1
    assert 0 < sum(is_valid) < len(is_valid)


def test_split_is_reproducible(data_with_duplicates):
    scan = scan_dataset(data_with_duplicates, progress=False)
    assert split_items(scan.items, 0.25, 3) == split_items(scan.items, 0.25, 3)
    assert split_items(scan.items, 0.25, 3) != split_items(scan.items, 0.25, 4)


def test_dataset_check_reports_counts_duplicates_and_unreadable(runner, data_with_duplicates):
    result = runner.invoke(args=["dataset", "check", "--data", str(data_with_duplicates)])
    assert result.exit_code == 0, result.output
    assert "Unreadable files: 1" in result.output and "broken.jpg" in result.output
    assert int(result.output.split("Duplicate groups: ")[1].split()[0]) >= 3  # drawn shapes may also collide
    assert "spanning two or more classes: 1" in result.output
    assert "les_paul, stratocaster" in result.output


@pytest.mark.parametrize("layout, message", [
    ({}, "no readable images"),
    ({"only": 3}, "only one class"),
    ({"a": 3, "b": 1}, "fewer than 2"),
])
def test_unusable_folders_fail_clearly(runner, tmp_path, layout, message):
    for label, count in layout.items():
        (tmp_path / label).mkdir()
        for k in range(count):
            Image.new("RGB", (32, 32), (k * 40, 0, 0)).save(tmp_path / label / f"{k}.png")
    result = runner.invoke(args=["train", "--data", str(tmp_path), "--recipe", "smoke", "--out",
                                 str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output


def test_missing_folder_fails_clearly(runner, tmp_path):
    result = runner.invoke(args=["dataset", "check", "--data", str(tmp_path / "nope")])
    assert result.exit_code != 0 and "does not exist" in result.output


@pytest.mark.slow
@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="the shared guitars data is not on this machine")
def test_dataset_check_on_the_real_guitars(runner):
    result = runner.invoke(args=["dataset", "check", "--data", str(REAL_DATA)])
    assert result.exit_code == 0, result.output
    assert "in 11 classes" in result.output
    assert "gibson_les_paul" in result.output
    groups = int(result.output.split("Duplicate groups: ")[1].split()[0])
    assert groups > 300  # about 10% of 7,650 photos are duplicates
