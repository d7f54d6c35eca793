"""Never ship worse than where you started: the loop compares its SSL model with a labelled-only
one on labelled cases left out of training, exports the better, and says so. Real (tiny) nnU-Net
trainings: the figures are noise at this size, so the tests check where they come from and that
the export follows them, not which arm wins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sslmedsam2.datasets.example import ExampleConfig, make_example
from sslmedsam2.manifest import MANIFEST
from sslmedsam2.ssl.config import build_config
from sslmedsam2.ssl.export_choice import LABELLED_ONLY, RECORD, SSL, ExportChoice
from sslmedsam2.ssl.loop import mask_dice
from sslmedsam2.ssl.pipeline import run_ssl

TINY = {"profile": "tiny-test", "folds": ["all"]}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """3 labelled (one per vendor) + 2 unlabelled training cases, 1 held-out case."""
    return make_example(ExampleConfig(out_dir=tmp_path_factory.mktemp("choice-data"), cases=5,
                                      test_cases=1, labelled_per_vendor=1, seed=11), progress=False)


def _config(dataset, tmp_path: Path, **loop):
    raw = {"data": {"train": str(dataset.train_dir), "sequences": ["GED4"],
                    "holdout_images": str(dataset.test_input_dir),
                    "holdout_labels": str(dataset.ground_truth_dir / "test")},
           # round 0 from the atlas alone: a fused round 0 would train the labelled-only model
           # the choice compares against (test_ssl.py's fused tests)
           "pseudo_labels": {"engine": "atlas", "atlas_method": "affine", "max_components": 0,
                             "fuse_labelled_only": False},
           "intermediate": TINY, "final": TINY,
           "loop": {"max_rounds": 1, "device": "cpu", **loop}}
    return build_config(raw, tmp_path)


def test_choice_is_measured_on_left_out_labelled_cases_and_followed(dataset, tmp_path):
    result = run_ssl(_config(dataset, tmp_path), tmp_path / "run", progress=False)
    folder = tmp_path / "run" / "GED4" / "export_choice"
    choice = ExportChoice(**json.loads((folder / RECORD).read_text()))
    labelled = sorted(c.case_id for c in dataset.split("train") if c.labelled)
    # every labelled case scored by both arms, from predictions of models that never saw it
    assert sorted(choice.ssl_dice) == sorted(choice.labelled_only_dice) == labelled
    masks = {c.case_id: c.train_mask for c in dataset.split("train") if c.labelled}
    for arm, scores in ((SSL, choice.ssl_dice), (LABELLED_ONLY, choice.labelled_only_dice)):
        for fold in sorted(folder.glob(f"{arm}_fold*")):
            trained = json.loads((next(fold.rglob("dataset.json"))).read_text())["numTraining"]
            predicted = [p.parent.name for p in (fold / "prediction").glob("*/GED4.nii.gz")]
            assert predicted and trained >= 1
            for case in predicted:
                assert scores[case] == round(mask_dice(fold / "prediction" / case / "GED4.nii.gz",
                                                       masks[case]), 4)
    # the held-out split is never looked at
    test_case = dataset.split("test")[0].case_id
    assert not list(folder.rglob(f"*{test_case}*"))
    better = LABELLED_ONLY if choice.labelled_only_mean > choice.ssl_mean else SSL
    assert choice.exported == better
    manifest = json.loads((result.weights_dir / MANIFEST).read_text())
    assert manifest["models"]["GED4"]["export"] == better
    exported, served = result.records[-2:]
    assert exported.step == ("final_labelled_only" if better == LABELLED_ONLY else "final")
    # the held-out case scored as process.py serves the exported model (averaged with the atlas)
    assert (served.step, served.engine, served.based_on) == ("served", "average", exported.step)
    assert served.holdout_cases == 1


def test_a_recorded_labelled_only_choice_exports_the_labelled_only_model(dataset, tmp_path):
    """The labelled-only branch end to end: a run whose recorded decision (resuming) says
    labelled-only trains that model on the labelled cases alone and exports it."""
    folder = tmp_path / "run" / "GED4" / "export_choice"
    folder.mkdir(parents=True)
    (folder / RECORD).write_text(json.dumps({"sequence": "GED4", "exported": LABELLED_ONLY,
                                             "reason": "recorded"}))
    result = run_ssl(_config(dataset, tmp_path), tmp_path / "run", progress=False)
    labelled = sorted(c.case_id for c in dataset.split("train") if c.labelled)
    last, served = result.records[-2:]
    assert (last.step, last.export, sorted(last.trained_on)) == ("final_labelled_only",
                                                                  LABELLED_ONLY, labelled)
    assert last.holdout_cases == 1
    assert (served.step, served.based_on, served.holdout_cases) == ("served", "final_labelled_only", 1)
    manifest = json.loads((result.weights_dir / MANIFEST).read_text())
    assert sorted(manifest["models"]["GED4"]["trained_on"]) == labelled
    report = json.loads((result.report_dir / "export_choice.json").read_text())
    assert report[0]["exported"] == LABELLED_ONLY


def test_one_labelled_case_exports_ssl_unchecked(tmp_path):
    data = make_example(ExampleConfig(out_dir=tmp_path / "d", cases=3, test_cases=0,
                                      labelled_per_vendor=1, seed=4, vendors=("A",)),
                        progress=False)
    raw = {"data": {"train": str(data.train_dir)}, "pseudo_labels": {"engine": "atlas",
           "atlas_method": "affine", "max_components": 0, "fuse_labelled_only": False},
           "intermediate": TINY, "final": TINY, "loop": {"max_rounds": 1, "device": "cpu"}}
    result = run_ssl(build_config(raw, tmp_path), tmp_path / "run", progress=False)
    choice = json.loads((result.report_dir / "export_choice.json").read_text())[0]
    assert choice["exported"] == SSL and "unchecked" in choice["reason"]
    assert result.records[-1].step == "final"
