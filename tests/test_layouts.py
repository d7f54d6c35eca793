"""Layout detection turns CARE, Grand Challenge and plain inputs into jobs, by names alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sslmedsam2.container.layouts import GrandChallengeSlugs, detect_layout
from sslmedsam2.errors import LayoutError


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_care_layout(tmp_path):
    root = tmp_path / "in"
    _touch(root / "Vendor_A" / "0001-A" / "GED4.nii.gz")
    _touch(root / "Vendor_A" / "0001-A" / "T1.nii.gz")
    _touch(root / "Vendor_A" / "0001-A" / "mask_GED4.nii.gz")
    _touch(root / "Vendor_B1" / "0002-B1" / "GED4.nii.gz")
    (root / "info.csv").write_text("Case,Vendor,Missing Modality\n0002-B1,B1,T1\n")
    plan = detect_layout(root, tmp_path / "out")
    assert plan.name == "care" and not plan.problems
    jobs = {(j.case, j.sequence): j for j in plan.jobs}
    assert set(jobs) == {("0001-A", "GED4"), ("0001-A", "T1"), ("0002-B1", "GED4")}
    assert jobs["0001-A", "T1"].output_path == tmp_path / "out/LiSeg_pred/0001-A/T1_pred.nii.gz"
    assert jobs["0002-B1", "GED4"].vendor == "B1"
    assert jobs["0001-A", "GED4"].vendor == "Vendor_A"


def test_care_case_without_ged4_is_a_problem(tmp_path):
    root = tmp_path / "in"
    _touch(root / "Vendor_A" / "0001-A" / "T2.nii.gz")
    plan = detect_layout(root, tmp_path / "out")
    assert plan.name == "care"
    assert len(plan.problems) == 1 and "no GED4" in str(plan.problems[0])
    assert "0001-A" in str(plan.problems[0])


def _gc_input(root: Path, slug: str = "abdominal-mri") -> Path:
    _touch(root / "images" / slug / "case.mha")
    (root / "inputs.json").write_text(json.dumps([
        {"interface": {"slug": slug, "kind": "Image", "relative_path": f"images/{slug}"},
         "image": {"name": "case.mha"}}]))
    return root


def test_grand_challenge_layout(tmp_path):
    plan = detect_layout(_gc_input(tmp_path / "in"), tmp_path / "out")
    assert plan.name == "grand-challenge"
    assert [j.output_path for j in plan.jobs] == [tmp_path / "out/images/liver-segmentation/case.mha"]


def test_grand_challenge_slugs_configurable(tmp_path):
    root = _gc_input(tmp_path / "in", slug="t1-mri")
    plan = detect_layout(root, tmp_path / "out", GrandChallengeSlugs("t1-mri", "liver-mask"))
    assert plan.jobs[0].output_path.parent.name == "liver-mask"
    with pytest.raises(LayoutError, match="no image file for socket 'other'"):
        detect_layout(root, tmp_path / "out", GrandChallengeSlugs("other"))


def test_grand_challenge_bad_json(tmp_path):
    root = _gc_input(tmp_path / "in")
    (root / "inputs.json").write_text("{broken")
    with pytest.raises(LayoutError, match="inputs.json: not valid JSON"):
        detect_layout(root, tmp_path / "out")


@pytest.mark.parametrize("name, output", [
    ("a.nii.gz", "a_pred.nii.gz"), ("b.nii", "b_pred.nii.gz"), ("c.mha", "c_pred.mha"),
    ("d.mhd", "d_pred.mha"), ("e.nrrd", "e_pred.nrrd")])
def test_plain_layout_keeps_format_family(tmp_path, name, output):
    path = _touch(tmp_path / "in" / name)
    for plan in (detect_layout(tmp_path / "in", tmp_path / "out"), detect_layout(path, tmp_path / "out")):
        assert plan.name == "plain"
        assert [j.output_path.name for j in plan.jobs] == [output]


def test_plain_single_unsupported_file(tmp_path):
    path = _touch(tmp_path / "scan.dcm")
    plan = detect_layout(path, tmp_path / "out")
    assert not plan.jobs and "not a supported volume file" in str(plan.problems[0])


def test_empty_and_unknown(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError, match="empty"):
        detect_layout(tmp_path / "empty", tmp_path / "out")
    _touch(tmp_path / "odd" / "notes.txt")
    with pytest.raises(LayoutError, match="unknown input layout"):
        detect_layout(tmp_path / "odd", tmp_path / "out")
    with pytest.raises(LayoutError, match="does not exist"):
        detect_layout(tmp_path / "missing", tmp_path / "out")
