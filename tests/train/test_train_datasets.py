"""Dataset loaders on small fake trees in the authors' layouts: pairing, splits, errors that name files."""
from __future__ import annotations

import numpy as np
import pytest

from edge.errors import EdgeError
from models.train.datasets import load_sample, load_split
from models.train.trainer import load_items
from train_fixtures import H, W, chase_tree, drive_tree, folder_tree, hrf_tree, label, stare_tree


def test_drive_pairs_images_labels_and_masks(tmp_path):
    root = drive_tree(tmp_path / "DRIVE")
    train = load_split("drive", root, "train")
    assert [s.name for s in train] == ["21_training", "22_training", "23_training"]
    assert train[0].label.name == "21_manual1.gif" and train[0].fov.name == "21_training_mask.gif"
    assert [s.name for s in load_split("drive", root, "test")] == ["01_test", "02_test"]
    item = load_sample(train[1])
    assert item.image.shape == (H, W, 3) and item.image.dtype == np.uint8
    assert item.label.dtype == bool and np.array_equal(item.label, label(22) > 0)  # GIF read back exactly
    assert item.fov_source == "given" and item.fov.sum() > 0


def test_drive_missing_label_is_named(tmp_path):
    root = drive_tree(tmp_path / "DRIVE")
    (root / "training" / "1st_manual" / "22_manual1.gif").unlink()
    with pytest.raises(EdgeError, match=r"no label for image 22_training\.tif \(expected 1st_manual/22_manual1\.gif\); "
                                        r"found 2 label file\(s\): 21_manual1\.gif, 23_manual1\.gif"):
        load_split("drive", root, "train")


def test_drive_label_without_image_is_named(tmp_path):
    root = drive_tree(tmp_path / "DRIVE")
    (root / "training" / "images" / "23_training.tif").unlink()
    with pytest.raises(EdgeError, match=r"label 23_manual1\.gif has no image"):
        load_split("drive", root, "train")


def test_drive_missing_folder_says_what_was_expected_and_found(tmp_path):
    root = drive_tree(tmp_path / "DRIVE")
    (root / "training" / "mask").rename(root / "training" / "masks")
    with pytest.raises(EdgeError) as err:
        load_split("drive", root, "train")
    msg = str(err.value)
    assert "expected a folder mask/" in msg and "masks/" in msg and "\n" not in msg


def test_drive_empty_split(tmp_path):
    root = drive_tree(tmp_path / "DRIVE")
    for p in (root / "test" / "images").iterdir():
        p.unlink()
    with pytest.raises(EdgeError, match="found none \\(empty split\\)"):
        load_split("drive", root, "test")


def test_drive_test_without_labels_loads_but_cannot_train(tmp_path, capsys):
    root = drive_tree(tmp_path / "DRIVE", test_labels=False)
    assert not (root / "test" / "1st_manual").exists()
    test = load_split("drive", root, "test")
    assert all(s.label is None for s in test)
    assert "images without labels" in capsys.readouterr().err
    assert load_sample(test[0]).label is None
    # the training split must have labels: a missing 1st_manual/ there is an error
    (root / "training" / "1st_manual").rename(root / "training" / "manual")
    with pytest.raises(EdgeError, match="1st_manual/"):
        load_split("drive", root, "train")


def test_images_without_labels_refused_for_training(tmp_path):
    root = folder_tree(tmp_path / "plain")
    for p in (root / "labels").iterdir():
        p.unlink()
    (root / "labels").rmdir()
    with pytest.raises(EdgeError, match="have no label .*training needs a ground truth"):
        load_items("folder", str(root))


def test_chase_split_first_8_train(tmp_path):
    root = chase_tree(tmp_path / "CHASE", n=10)
    train, test = load_split("chase", root, "train"), load_split("chase", root, "test")
    assert [s.name for s in train] == ["Image_01L", "Image_01R", "Image_02L", "Image_02R", "Image_03L", "Image_03R",
                                       "Image_04L", "Image_04R"]
    assert [s.name for s in test] == ["Image_05L", "Image_05R"]
    assert train[0].label.name == "Image_01L_1stHO.png" and train[0].fov is None
    item = load_sample(test[0])
    assert item.fov_source == "estimated" and 0.3 < item.fov.mean() < 0.7


def test_chase_empty_test_split_and_missing_label(tmp_path):
    root = chase_tree(tmp_path / "CHASE", n=6)
    with pytest.raises(EdgeError, match="test split is empty: the first 8 images train.* has 6 images"):
        load_split("chase", root, "test")
    (root / "Image_02R_1stHO.png").unlink()
    with pytest.raises(EdgeError, match=r"no label for image Image_02R\.jpg \(expected Image_02R_1stHO\.png\)"):
        load_split("chase", root, "train")


def test_hrf_first_five_of_each_category(tmp_path):
    root = hrf_tree(tmp_path / "HRF", per_category=6)
    train = [s.name for s in load_split("hrf", root, "train")]
    assert train == [f"{i:02d}_{c}" for c in ("h", "dr", "g") for i in range(1, 6)]
    test = load_split("hrf", root, "test")
    assert [s.name for s in test] == ["06_h", "06_dr", "06_g"]
    assert test[1].image.name == "06_dr.JPG" and test[1].fov.name == "06_dr_mask.tif"


def test_hrf_mismatched_mask_is_named(tmp_path):
    root = hrf_tree(tmp_path / "HRF", per_category=2)
    (root / "mask" / "02_g_mask.tif").rename(root / "mask" / "03_g_mask.tif")
    with pytest.raises(EdgeError, match=r"FOV mask 03_g_mask\.tif has no image"):
        load_split("hrf", root, "train")


def test_stare_gz_and_unlabelled_images(tmp_path):
    root = stare_tree(tmp_path / "STARE", labelled=4, unlabelled=2)
    train, test = load_split("stare", root, "train"), load_split("stare", root, "test")
    assert [s.name for s in train] == ["im0001", "im0002"] and [s.name for s in test] == ["im0003", "im0004"]
    item = load_sample(train[1])
    assert np.array_equal(item.label, label(2) > 0) and item.image.shape == (H, W, 3)


def test_stare_label_without_image(tmp_path):
    root = stare_tree(tmp_path / "STARE", labelled=2, unlabelled=0, gz=False)
    (root / "stare-images" / "im0002.ppm").unlink()
    with pytest.raises(EdgeError, match=r"label im0002\.ah\.ppm has no image"):
        load_split("stare", root, "train")


def test_plain_folder_pairs_by_stem(tmp_path):
    root = folder_tree(tmp_path / "plain")
    s = load_split("folder", root, "train")
    assert [x.name for x in s] == ["case0", "case1", "case2"] and s[0].fov.name == "case0.png"
    (root / "labels" / "case1.png").rename(root / "labels" / "case9.png")
    with pytest.raises(EdgeError, match=r"label case9\.png has no image"):
        load_split("folder", root, "train")


def test_unknown_dataset_and_missing_root(tmp_path):
    with pytest.raises(EdgeError, match="unknown dataset 'drvie'; did you mean 'drive'"):
        load_split("drvie", tmp_path, "train")
    with pytest.raises(EdgeError, match="does not exist"):
        load_split("drive", tmp_path / "nope", "train")
