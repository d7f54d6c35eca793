"""A round's training set (``ssl.dataset``): which pseudo labels teach, and which object of a
model's prediction is taught as the liver."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sslmedsam2.ssl.config import PseudoLabelConfig
from sslmedsam2.ssl.dataset import judge, pseudo_labelled_cases
from sslmedsam2.supports import Support
from sslmedsam2.training.supervised import IGNORE_LABEL

SHAPE = (20, 40, 40)  # z, y, x; 2 mm voxels: 8 ul each


def _write(array: np.ndarray, path: Path) -> Path:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing((2.0, 2.0, 2.0))
    image.SetOrigin((-10.0, 4.0, 7.5))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def _prediction() -> tuple[np.ndarray, np.ndarray]:
    """A model's mask: the liver (smaller) and a bigger false object apart from it."""
    liver, false_object = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    liver[2:12, 5:20, 5:20] = True  # 2250 voxels: 18 ml
    false_object[2:18, 24:38, 22:38] = True  # 3584 voxels: 29 ml
    return liver, false_object


def _label_of(tmp_path: Path, guide: np.ndarray | None, name: str) -> np.ndarray:
    liver, false_object = _prediction()
    case = "case_07"
    mask = _write(liver | false_object, tmp_path / name / "pseudo" / case / "T2SPIR.nii.gz")
    guide_dir = None
    if guide is not None:
        guide_dir = _write(guide, tmp_path / name / "previous_labels" / f"{case}.nii.gz").parent
    image = _write(np.zeros(SHAPE), tmp_path / name / "images" / f"{case}.nii.gz")
    config = PseudoLabelConfig(min_volume_ml=1.0, max_components=3)
    kept, verdicts = pseudo_labelled_cases([Support(case, image, mask)], tmp_path / name / "labels",
                                           config, guide_dir)
    assert [v.kept for v in verdicts] == [True], verdicts
    label = sitk.ReadImage(str(kept[0].mask))
    assert label.GetOrigin() == (-10.0, 4.0, 7.5) and label.GetSpacing() == (2.0, 2.0, 2.0)
    return sitk.GetArrayFromImage(label)


def test_a_models_label_keeps_the_object_its_own_training_label_marked(tmp_path):
    liver, _ = _prediction()
    taught = np.zeros(SHAPE, np.uint8)
    taught[3:11, 6:18, 4:18] = 1  # last round's label of this case: the liver, slightly off
    taught[0, :, :] = IGNORE_LABEL  # ignored voxels say nothing about where the organ is
    assert np.array_equal(_label_of(tmp_path, taught, "guided") > 0, liver)


def test_without_a_guide_the_largest_object_is_kept(tmp_path):
    _, false_object = _prediction()
    assert np.array_equal(_label_of(tmp_path, None, "first_round") > 0, false_object)
    # a guide that overlaps neither object cannot choose, so size does
    elsewhere = np.zeros(SHAPE, np.uint8)
    elsewhere[15:19, 2:6, 2:6] = 1
    assert np.array_equal(_label_of(tmp_path, elsewhere, "elsewhere") > 0, false_object)


def _judged(tmp_path: Path, mask: np.ndarray, name: str) -> bool:
    path = _write(mask, tmp_path / name / "T2SPIR.nii.gz")
    return judge(sitk.ReadImage(str(path)), PseudoLabelConfig(min_volume_ml=1.0, max_components=3), name).kept


def test_islands_beside_the_liver_are_not_fragments_but_a_split_liver_is(tmp_path):
    """A round's nnU-Net predicts islands beside its liver (here six of 1.2 ml, 1% of the label
    each): the case stays. A liver in four comparable pieces is still left out."""
    liver = np.zeros(SHAPE, bool)
    liver[2:15, 4:30, 4:36] = True  # 10816 voxels: 87 ml
    islands = liver.copy()
    for z in (2, 9):
        for x in (4, 14, 24):
            islands[z:z + 5, 33:39, x:x + 5] = True
    assert _judged(tmp_path, islands, "islands")
    split = liver.copy()
    split[:, 16:18, :] = split[:, :, 19:21] = False
    assert not _judged(tmp_path, split, "split")
