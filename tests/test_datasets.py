"""Labelled collections in the shapes researchers keep them: layouts told apart by name, every
problem named per file before anything trains, and the SSL loop run for real on a plain
collection whose exported weights then serve process.py on plain inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import run_process

from sslmedsam2.container.inference import SUMMARY_NAME
from sslmedsam2.datasets import (
    CollectionError,
    check_collection,
    detect_layout,
    read_collection,
    require_clean,
)
from sslmedsam2.datasets.example import ExampleConfig, make_example
from sslmedsam2.errors import LayoutError, UsageError
from sslmedsam2.io import same_grid
from sslmedsam2.ssl.config import build_config
from sslmedsam2.ssl.pipeline import run_ssl

CHAOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "chaos-mr-t2"


def _volume(path: Path, spacing=(1.0, 1.0, 2.0), kind: str = "image") -> Path:
    """A tiny volume: an image with some texture, a mask with a block of liver, or an empty mask."""
    array = np.zeros((4, 8, 8), np.uint8)
    if kind == "liver":
        array[1:3, 2:6, 2:6] = 1
    elif kind == "image":
        array = (np.arange(array.size).reshape(array.shape) % 7).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def _pair(folder: Path, case: str, image_name: str, mask_name: str | None) -> None:
    _volume(folder / image_name.format(case=case))
    if mask_name:
        _volume(folder / mask_name.format(case=case), kind="liver")


def test_flat_collection_pairs_images_with_their_masks(tmp_path):
    for case, mask in (("p01", "{case}_liver.nii.gz"), ("p02", "{case}-MASK.nii.gz"), ("p03", None)):
        _pair(tmp_path, case, "{case}_image.nii.gz", mask)
    collection = require_clean(read_collection(tmp_path, "T2"))
    assert collection.layout == "flat"
    assert [s.case for s in collection.labelled] == ["p01", "p02"]
    assert [q.case for q in collection.unlabelled] == ["p03"]
    assert collection.labelled[1].mask.name == "p02-MASK.nii.gz"


def test_nnunet_raw_collection(tmp_path):
    for case in ("liver_001", "liver_002"):
        _volume(tmp_path / "imagesTr" / f"{case}_0000.nii.gz")
        _volume(tmp_path / "labelsTr" / f"{case}.nii.gz", kind="liver")
    _volume(tmp_path / "imagesTs" / "liver_100_0000.nii.gz")
    collection = require_clean(read_collection(tmp_path, "MR"))
    assert collection.layout == "nnunet"
    assert [s.case for s in collection.labelled] == ["liver_001", "liver_002"]
    assert [q.case for q in collection.unlabelled] == ["liver_100"]


def test_images_and_masks_folders_matched_by_name(tmp_path):
    for case in ("a", "b", "c"):
        _volume(tmp_path / "images" / f"{case}.mha")
    for case in ("a", "c"):
        _volume(tmp_path / "labels" / f"{case}.mha", kind="liver")
    collection = require_clean(read_collection(tmp_path, "MR"))
    assert (collection.layout, collection.cases) == ("folders", ["a", "b", "c"])
    assert [q.case for q in collection.unlabelled] == ["b"]


def test_care_root_reads_as_before(tmp_path):
    dataset = make_example(ExampleConfig(out_dir=tmp_path, cases=3, test_cases=0,
                                         labelled_per_vendor=1, seed=2), progress=False)
    collection = require_clean(read_collection(dataset.train_dir, "GED4"))
    assert collection.layout == "care"
    assert len(collection.labelled) == 3 and not collection.unlabelled
    t1 = read_collection(dataset.train_dir, "T1")
    assert not t1.labelled and len(t1.unlabelled) == 3


def test_every_problem_is_named_by_file(tmp_path):
    _pair(tmp_path, "ok", "{case}_image.nii.gz", "{case}_liver.nii.gz")
    _volume(tmp_path / "orphan_liver.nii.gz", kind="liver")  # no image of that name
    _volume(tmp_path / "grid_image.nii.gz")
    _volume(tmp_path / "grid_liver.nii.gz", spacing=(1.0, 1.0, 3.0), kind="liver")
    _volume(tmp_path / "empty_image.nii.gz")
    _volume(tmp_path / "empty_liver.nii.gz", kind="empty")
    (tmp_path / "broken_image.nii.gz").write_bytes(b"not an image")
    problems = [str(p) for p in check_collection(read_collection(tmp_path, "MR"))]
    expected = {"orphan_liver.nii.gz": "mask without an image",
                "grid_liver.nii.gz": "mask off its image's grid (spacing differ",
                "empty_liver.nii.gz": "mask is empty",
                "broken_image.nii.gz": "cannot be read"}
    for name, message in expected.items():
        assert any(name in p and message in p for p in problems), (name, problems)
    assert len(problems) == len(expected), problems
    with pytest.raises(CollectionError, match="4 problem"):
        require_clean(read_collection(tmp_path, "MR"))


def test_unlabelled_collection_and_unknown_layout_are_refused(tmp_path):
    _volume(tmp_path / "a_image.nii.gz")
    with pytest.raises(CollectionError, match="no labelled case"):
        require_clean(read_collection(tmp_path, "MR"))
    empty = tmp_path / "nothing"
    (empty / "sub").mkdir(parents=True)
    with pytest.raises(LayoutError, match="unknown collection layout"):
        detect_layout(empty)


def test_config_accepts_a_named_sequence_and_refuses_bad_ones(tmp_path):
    config = build_config({"data": {"train": str(tmp_path), "sequences": ["T2-SPIR"]}}, tmp_path)
    assert config.data.sequences == ("T2-SPIR",)
    for data, message in (({"sequences": ["T2 SPIR"]}, "names of letters"),
                          ({"layout": "zip"}, "data.layout"),
                          ({"layout": "flat", "sequences": ["T1", "T2"]}, "has one sequence"),
                          ({"layout": "care", "sequences": ["T2SPIR"]}, "not CARE sequences")):
        with pytest.raises(UsageError, match=message):
            build_config({"data": {"train": str(tmp_path), **data}}, tmp_path)


def test_chaos_reads_as_it_lies():
    """The 14 CHAOS patients, read from ../shared in place (CC BY-NC-SA: never copied)."""
    collection = require_clean(read_collection(CHAOS, "T2SPIR"))
    assert collection.layout == "flat"
    assert len(collection.labelled) == 14 and not collection.unlabelled
    assert collection.labelled[0].case == "chaos_mr_t2_01"


@pytest.fixture(scope="module")
def plain_collection(tmp_path_factory):
    """The generated CARE example re-laid as a user's own data: one flat training folder
    (2 masks, 2 images without) and an images/ + masks/ holdout, file names of their own."""
    dataset = make_example(ExampleConfig(out_dir=tmp_path_factory.mktemp("care"), cases=4,
                                         test_cases=1, labelled_per_vendor=1, seed=5),
                           progress=False)
    root = tmp_path_factory.mktemp("plain")
    train, holdout = root / "train", root / "holdout"
    train.mkdir()
    labelled = 0
    for case in dataset.split("train"):
        (train / f"pt{case.case_id}_image.nii.gz").symlink_to(case.images["GED4"])
        if case.labelled and labelled < 2:
            (train / f"pt{case.case_id}_liver.nii.gz").symlink_to(case.train_mask)
            labelled += 1
    for folder in ("images", "masks"):
        (holdout / folder).mkdir(parents=True)
    for case in dataset.split("test"):
        (holdout / "images" / f"{case.case_id}.nii.gz").symlink_to(case.images["GED4"])
        (holdout / "masks" / f"{case.case_id}.nii.gz").symlink_to(case.ground_truth["GED4"])
    return train, holdout


def test_ssl_loop_runs_on_a_plain_collection_and_serves_plain_inputs(plain_collection, tmp_path):
    train, holdout = plain_collection
    tiny = {"profile": "tiny-test", "folds": ["all"]}
    raw = {"data": {"train": str(train), "sequences": ["T2"], "holdout_images": str(holdout)},
           "pseudo_labels": {"engine": "atlas", "atlas_method": "affine", "max_components": 0,
                             "min_volume_ml": 0},
           "intermediate": tiny, "final": tiny,
           # the export choice has its own tests (test_export_choice.py)
           "loop": {"max_rounds": 1, "device": "cpu", "choose_export": False}}
    result = run_ssl(build_config(raw, tmp_path), tmp_path / "run", progress=False)
    steps = [(r.sequence, r.step, r.labelled) for r in result.records]
    # served: the held-out case as process.py serves the weights, averaged with the T2 atlas
    assert steps == [("T2", "round_00", 2), ("T2", "round_01", 2), ("T2", "final", 2),
                     ("T2", "served", 2)]
    assert all(r.holdout_cases == 1 for r in result.records)
    weights = result.weights_dir
    assert (weights / "nnunet" / "T2").is_dir()
    supports = sorted(p.name for p in (weights / "supports").rglob("*.nii.gz"))
    assert supports == ["T2.nii.gz", "T2.nii.gz", "mask_T2.nii.gz", "mask_T2.nii.gz"]
    # process.py on a plain input folder picks the weights' only sequence without being told
    image = next((holdout / "images").iterdir())
    done = run_process("--input", image, "--output", tmp_path / "out", "--weights", weights,
                       "--device", "cpu", "--engines", "nnunet")
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / SUMMARY_NAME).read_text())
    record = next(r for r in summary["cases"] if r["status"] == "ok")
    assert (record["sequence"], record["engine"]) == ("T2", "nnunet")
    mask = sitk.ReadImage(record["output"])
    assert same_grid(mask, sitk.ReadImage(str(image)))


def test_pseudo_label_on_a_plain_collection(plain_collection, tmp_path):
    """One folder for both: its masked cases are the supports, its other cases are labelled,
    under the user's sequence name, each mask on its own image's grid and drawn on it."""
    train, _ = plain_collection
    out = tmp_path / "pseudo"
    result = _cli("pseudo-label", "--supports", train, "--unlabelled", train, "--sequence", "T2",
                  "--max-supports", "1", "--out", out, "--montages", tmp_path / "pictures", "-q")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 T2 support(s)" in result.stderr
    unlabelled = sorted(p.name.removesuffix("_image.nii.gz") for p in train.glob("*_image.nii.gz")
                        if not (train / p.name.replace("_image", "_liver")).exists())
    assert sorted(p.parent.name for p in out.glob("*/T2.nii.gz")) == unlabelled
    assert sorted(p.name for p in (tmp_path / "pictures").iterdir()) == [f"{c}_T2.png" for c in unlabelled]
    for case in unlabelled:
        mask = sitk.ReadImage(str(out / case / "T2.nii.gz"))
        assert same_grid(mask, sitk.ReadImage(str(train / f"{case}_image.nii.gz")))
        assert sitk.GetArrayViewFromImage(mask).any()


def test_pseudo_label_names_a_collection_problem_before_any_registration(tmp_path):
    data = tmp_path / "data"
    for case, mask in (("p01", "{case}_liver.nii.gz"), ("p02", None)):
        _pair(data, case, "{case}_image.nii.gz", mask)
    _volume(data / "p01_liver.nii.gz", spacing=(1.0, 1.0, 3.0), kind="liver")
    result = _cli("pseudo-label", "--supports", data, "--unlabelled", data, "--out", tmp_path / "o", "-q")
    assert result.returncode == 1
    assert "p01_liver.nii.gz: mask off its image's grid" in result.stderr
    assert not (tmp_path / "o").exists()


def _cli(*args: str | Path) -> subprocess.CompletedProcess:
    """An ``sslmedsam2`` command in its own process, as a user runs it (it pins ANTs' threads)."""
    return subprocess.run([sys.executable, "-m", "sslmedsam2", *map(str, args)], capture_output=True,
                          text=True, timeout=900)


def test_train_dry_run_checks_and_plans_without_writing(tmp_path, capsys):
    """``train --dry-run`` on a researcher's own folder: the cases it would train on and how, then
    the same refusal as the run itself where a file is at fault; no run folder either way."""
    from sslmedsam2.cli import main

    data = tmp_path / "data"
    for case, mask in (("p01", "{case}_liver.nii.gz"), ("p02", "{case}_liver.nii.gz"), ("p03", None)):
        _pair(data, case, "{case}_image.nii.gz", mask)
    run = tmp_path / "run"
    command = ["train", "--data", str(data), "--sequences", "T2", "--run", str(run), "--dry-run"]
    assert main([*command, "--max-rounds", "2"]) == 0
    plan = capsys.readouterr().out
    assert "(flat layout)" in plan and "T2: 2 labelled, 1 unlabelled" in plan
    assert "cpu-quick profile, 25 epochs x 12 iterations" in plan and "up to 2 nnU-Net round(s)" in plan
    assert "round 0: atlas few-shot pseudo labels, fused with an nnU-Net trained on the labelled" in plan
    assert "export: the SSL model or labelled-only, whichever scores better" in plan
    _volume(data / "p03_liver.nii.gz", spacing=(1.0, 1.0, 3.0), kind="liver")  # off its image's grid
    assert main(command) == 1
    assert "p03_liver.nii.gz: mask off its image's grid" in capsys.readouterr().err
    assert not run.exists()


def test_train_dry_run_on_care_speaks_for_each_sequence(example_dataset, capsys):
    """On a CARE root only GED4 has masks: the plan says that T1's round 0 has no labelled-only
    partner and that its export cannot be checked; this root's GED4 cases are all labelled, so
    GED4 trains no rounds."""
    from sslmedsam2.cli import main

    assert main(["train", "--data", str(example_dataset.train_dir), "--sequences", "GED4,T1",
                 "--dry-run"]) == 0
    ged4, t1 = capsys.readouterr().out.split("\nT1: ")
    assert "(care layout)" in ged4 and "GED4: 3 labelled, 0 unlabelled" in ged4
    assert "no unlabelled case to pseudo-label: no rounds" in ged4 and "round 0" not in ged4
    assert "rounds: up to" in t1  # T1 has cases to label
    assert t1.startswith("0 labelled, 3 unlabelled")
    assert "atlas few-shot pseudo labels alone (no labelled T1 case to train a labelled-only" in t1
    assert "the SSL model, unchecked" in t1
