"""The semi-supervised loop for real on a tiny generated dataset: atlas round 0, nnU-Net rounds
(trained for a few iterations: mechanics, not quality), report, weights export with manifest, and
process.py serving the exported weights."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import tomllib
from conftest import run_process

from sslmedsam2.datasets.example import ExampleConfig, make_example
from sslmedsam2.errors import UsageError
from sslmedsam2.io import same_grid
from sslmedsam2.manifest import MANIFEST
from sslmedsam2.runtime import CACHE_VARIABLES
from sslmedsam2.ssl.config import TEMPLATE, DataConfig, ScheduleConfig, SSLConfig, build_config
from sslmedsam2.ssl.loop import mask_dice
from sslmedsam2.ssl.pipeline import run_ssl

TINY = {"profile": "tiny-test", "folds": ["all"]}


@pytest.fixture(scope="module")
def ssl_data(tmp_path_factory):
    """3 labelled + 3 unlabelled training cases (one labelled per vendor), 2 held-out cases."""
    return make_example(ExampleConfig(out_dir=tmp_path_factory.mktemp("ssl-data"), cases=6,
                                      test_cases=2, labelled_per_vendor=1, seed=3), progress=False)


def raw_config(dataset, **sections) -> dict:
    raw = {"data": {"train": str(dataset.train_dir), "sequences": ["GED4"],
                    "holdout_images": str(dataset.test_input_dir),
                    "holdout_labels": str(dataset.ground_truth_dir / "test")},
           # round 0 from the atlas alone: the default's labelled-only partner (ssl_run and the
           # fused tests below train it) would add a training here
           "pseudo_labels": {"engine": "atlas", "fuse_labelled_only": False},
           "intermediate": dict(TINY), "final": dict(TINY),
           # the export choice (its own tests: test_export_choice.py) would add trainings here,
           # the served average (scored in ssl_run) a prediction and a registration per case
           "loop": {"max_rounds": 1, "device": "cpu", "choose_export": False, "serve_average": False}}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return raw


@pytest.fixture(scope="module")
def ssl_run(ssl_data, tmp_path_factory):
    """GED4 + T1, the default round 0 (the atlas fused with a labelled-only nnU-Net where the
    sequence has labels), one nnU-Net round, uncertain voxels ignored, a final model on its own
    schedule with a 2d companion, served averaged with the atlas."""
    raw = ssl_run_config(ssl_data)
    run_dir = tmp_path_factory.mktemp("ssl-run")
    return run_ssl(build_config(raw, Path.cwd()), run_dir, progress=False), run_dir


def ssl_run_config(dataset, **loop) -> dict:
    raw = raw_config(dataset, data={"sequences": ["GED4", "T1"]},
                     pseudo_labels={"ignore_uncertainty_above": 0.5, "max_components": 0},
                     final={"epochs": 3, "extra_configurations": ["2d"]},
                     loop={"serve_average": True, **loop})
    del raw["pseudo_labels"]["fuse_labelled_only"]
    return raw


def test_template_documents_the_defaults(tmp_path):
    config = build_config(tomllib.loads(TEMPLATE), tmp_path)
    assert config == SSLConfig(data=DataConfig(train=(tmp_path / "data/train").resolve()))


def test_train_with_a_read_only_home_keeps_caches_in_a_temp_folder(tmp_path):
    """The training image may run as a stranger uid too: every command redirects the caches."""
    env = {k: v for k, v in os.environ.items() if k not in CACHE_VARIABLES}
    result = subprocess.run([sys.executable, "-m", "sslmedsam2", "train", "--print-config"],
                            env={**env, "HOME": "/nonexistent"}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout == TEMPLATE
    assert "HOME (/nonexistent) is not writable: caches go to" in result.stderr
    folder = Path(result.stderr.split("caches go to ")[1].split()[0])
    assert folder.name.startswith("sslmedsam2-cache-") and not folder.exists()  # removed at exit


@pytest.mark.parametrize("raw, message", [
    ({"data": {"train": "x"}, "loop": {"rounds": 2}}, "unknown key(s) ['rounds']"),
    ({"data": {"train": "x"}, "extra": {}}, "unknown section(s) ['extra']"),
    ({"data": {}}, "train = '<CARE training folder>' is required"),
    ({"data": {"train": "x"}, "pseudo_labels": {"engine": "sam2"}}, "needs pseudo_labels.checkpoint"),
    ({"data": {"train": "x"}, "pseudo_labels": {"engine": "magic"}}, "choose from atlas, sam2, none"),
    ({"data": {"train": "x"}, "pseudo_labels": {"atlas_syn_start": "rigid"}},
     "choose from affine, similarity"),
    ({"data": {"train": "x"}, "pseudo_labels": {"atlas_head_foot_search_mm": -10}},
     "0 switches the search off"),
    ({"data": {"train": "x", "sequences": ["GED4", "T1"]}, "pseudo_labels": {"engine": "none"}},
     "one sequence has labels"),
    ({"data": {"train": "x", "holdout_labels": "y"}}, "holdout_labels needs data.holdout_images"),
    ({"data": {"train": "x"}, "pseudo_labels": {"labelled_share": 1.0}}, "labelled_share must lie in [0, 1)"),
])
def test_bad_configs_say_what_is_wrong(raw, message, tmp_path):
    with pytest.raises(UsageError, match=None) as caught:
        build_config(raw, tmp_path, source=tmp_path / "ssl.toml")
    assert message in str(caught.value) and "ssl.toml" in str(caught.value)


@pytest.mark.parametrize("fits, keep_best, drifted, chosen", [
    ([None, 0.95, 0.96, 0.94], True, True, "round_02"),     # round 3 fits the labels worse: stop
    ([None, 0.95, 0.96, 0.957], True, False, "round_02"),   # within the tolerance: go on
    ([None, 0.95, 0.96, 0.94], False, False, "round_03"),   # guard off: the last round
    ([None], True, False, "round_00"),                      # few-shot only
    ([None, 0.95, 0.95], True, False, "round_01"),          # ties: the earlier round
])
def test_drift_stops_the_loop_and_keeps_the_best_round(fits, keep_best, drifted, chosen, tmp_path):
    from sslmedsam2.ssl.config import LoopConfig
    from sslmedsam2.ssl.loop import SemiSupervisedRun, StepRecord

    config = SSLConfig(data=DataConfig(train=tmp_path),
                       loop=LoopConfig(device="cpu", keep_best_round=keep_best))
    run = SemiSupervisedRun(config, tmp_path / "run")
    records = [StepRecord("GED4", f"round_{n:02d}", 1.0, "nnunet", labelled_dice_mean=fit)
               for n, fit in enumerate(fits)]
    assert run._drifted(records) is drifted
    assert run._chosen(records).step == chosen


def test_auto_folds_follow_the_case_count():
    assert ScheduleConfig().resolve(4).folds == ("all",)
    assert ScheduleConfig().resolve(5).folds == ("0", "1", "2", "3", "4")
    assert ScheduleConfig(folds=("all",), epochs=7).resolve(9).epochs == 7


def test_loop_runs_rounds_and_reports(ssl_run):
    result, run_dir = ssl_run
    steps = [(r.sequence, r.step, r.engine) for r in result.records]
    fused = "atlas averaged with labelled-only nnU-Net, atlas alone where they part"
    assert steps == [("GED4", "round_00", fused), ("GED4", "round_01", "nnunet"),
                     ("GED4", "final", "nnunet"), ("T1", "round_00", "atlas"),
                     ("T1", "round_01", "nnunet"), ("T1", "final", "nnunet"),
                     ("GED4", "served", "average")]
    by_step = {(r.sequence, r.step): r for r in result.records}
    ged4 = by_step["GED4", "round_01"]
    assert (ged4.labelled, ged4.pseudo_kept) == (3, 3)
    assert 0 <= ged4.change_dice_mean <= 1 and ged4.holdout_cases == 2
    # T1 has no labels: it learns from cross-sequence (GED4-supported) pseudo labels only
    assert (by_step["T1", "round_01"].labelled, by_step["T1", "round_01"].pseudo_kept) == (0, 6)
    # the atlas finds the liver; averaged with a 6-iteration partner its border erodes
    assert by_step["GED4", "round_00"].holdout_dice_mean > 0.5
    assert (run_dir / "GED4" / "round_00" / "labelled_only" / "nnunet").is_dir()
    assert not (run_dir / "T1" / "round_00" / "labelled_only").exists()  # no T1 labels to train on
    # the drift detector: GED4's model segments its labelled cases; T1 has none
    assert 0 <= ged4.labelled_dice_mean <= 1 and by_step["T1", "round_01"].labelled_dice_mean is None
    assert by_step["GED4", "final"].based_on == "round_01"
    assert len(list((run_dir / "GED4" / "round_01" / "labelled_fit").glob("*/GED4.nii.gz"))) == 3
    rows = (result.report_dir / "rounds.csv").read_text().splitlines()
    assert rows[0].startswith("sequence,step,engine") and "labelled_dice_mean" in rows[0]
    assert len(rows) == 8
    assert len(list(result.report_dir.glob("montage_GED4_*.png"))) == 2
    assert (run_dir / "config.json").is_file() and (run_dir / "provenance.json").is_file()
    for sequence in ("GED4", "T1"):
        for case in ("0004-A", "0005-B1", "0006-B2"):
            pseudo = run_dir / sequence / "round_01" / "pseudo" / case
            image = sitk.ReadImage(str(ssl_data_image(run_dir, case, sequence)))
            for name in (f"{sequence}.nii.gz", f"{sequence}_uncertainty.nii.gz"):
                assert same_grid(sitk.ReadImage(str(pseudo / name)), image)


def ssl_data_image(run_dir: Path, case: str, sequence: str) -> Path:
    train = Path(json.loads((run_dir / "config.json").read_text())["data"]["train"])
    return next(train.glob(f"*/{case}/{sequence}.nii.gz"))


def test_uncertain_voxels_become_the_ignore_label(ssl_run):
    _, run_dir = ssl_run
    raw = next((run_dir / "GED4" / "round_01" / "nnunet" / "nnUNet_raw").glob("Dataset*"))
    assert json.loads((raw / "dataset.json").read_text())["labels"] == {
        "background": 0, "liver": 1, "ignore": 2}
    pseudo = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTr" / "0004-A.nii.gz")))
    labelled = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTr" / "0001-A.nii.gz")))
    assert set(np.unique(pseudo)) == {0, 1, 2}  # the atlas disagrees along the liver's border
    assert set(np.unique(labelled)) == {0, 1}  # true labels are never ignored


def test_exported_weights_serve_process_py(ssl_run, ssl_data, tmp_path):
    result, run_dir = ssl_run
    manifest = json.loads((result.weights_dir / MANIFEST).read_text())
    assert set(manifest["models"]) == {"GED4", "T1"}
    assert "0004-A" in manifest["models"]["GED4"]["trained_on"]
    assert sorted(m.rsplit("__", 1)[1] for m in manifest["models"]["GED4"]["models"]) == [
        "2d", "3d_fullres"]
    assert any(name.endswith("fold_all/checkpoint_final.pth") for name in manifest["files"])
    assert manifest["engines"] == ["average", "nnunet", "sam2", "atlas"]  # loop.serve_average
    # how well the model learned its pseudo labels, for the average's choice of engine
    final = next(r for r in manifest["report"] if r["sequence"] == "GED4" and r["step"] == "final")
    assert manifest["models"]["GED4"]["teacher_agreement"] == final["change_dice_mean"]
    out = tmp_path / "out"
    # pinned to the CPU: the choice checked below is the CPU's (a GPU prefers 3d_fullres)
    done = run_process("--input", ssl_data.test_input_dir, "--output", out,
                       "--weights", result.weights_dir, "--device", "cpu")
    assert done.returncode == 0, done.stderr
    records = json.loads((out / "sslmedsam2-summary.json").read_text())["cases"]
    # the supports' sequence is averaged with the atlas; T1's atlas would be affine: the model alone
    assert {(r["sequence"], r["engine"]) for r in records} == {("GED4", "average"), ("T1", "nnunet")}
    assert {r["device"] for r in records} == {"cpu"}
    # the CPU's choice: the 2d companion, alone, averaged or named beside the atlas it gave way to
    assert all("2d folds=" in r["message"] and "3d_fullres" not in r["message"] for r in records)
    for record in records:
        image = sitk.ReadImage(record["input"])
        assert same_grid(sitk.ReadImage(record["output"]), image)
    # the run scored its held-out cases as process.py serves them: the same masks (the atlas's
    # SyN threads may move a border voxel between two registrations of one pair)
    served = result.records[-1]
    assert (served.step, served.based_on, served.holdout_cases) == ("served", "final", 2)
    for record in (r for r in records if r["sequence"] == "GED4"):
        scored = run_dir / "GED4" / "served" / "holdout" / record["case"] / "GED4.nii.gz"
        assert mask_dice(scored, Path(record["output"])) > 0.99


@pytest.mark.parametrize("tamper, problem", [
    ("change", "changed: nnunet/GED4/"),
    ("add", "not in the manifest: nnunet/GED4/"),
    ("remove", "missing: nnunet/GED4/"),
])
def test_process_refuses_weights_that_do_not_match_the_manifest(ssl_run, ssl_data, tmp_path,
                                                                tamper, problem):
    result, _ = ssl_run
    weights = shutil.copytree(result.weights_dir, tmp_path / "weights")
    model = next((weights / "nnunet" / "GED4").iterdir())
    checkpoint = model / "fold_all" / "checkpoint_final.pth"
    if tamper == "change":
        with open(checkpoint, "ab") as handle:
            handle.write(b"\0")
    elif tamper == "add":
        shutil.copytree(model / "fold_all", model / "fold_0")
    else:
        (model / "plans.json").unlink()
    done = run_process("--input", ssl_data.test_input_dir, "--output", tmp_path / "out",
                       "--weights", weights)
    assert done.returncode == 2
    assert "manifest" in done.stderr and problem in done.stderr


def test_rerun_with_another_config_is_refused(ssl_run, ssl_data):
    _, run_dir = ssl_run
    with pytest.raises(UsageError, match="loop.max_rounds"):
        run_ssl(build_config(ssl_run_config(ssl_data, max_rounds=2), Path.cwd()), run_dir,
                progress=False)


def test_labelled_only_baseline_trains_without_pseudo_labels(ssl_data, tmp_path):
    # the default fusion has no round 0 to fuse into: it is ignored, not refused
    raw = raw_config(ssl_data, pseudo_labels={"engine": "none", "fuse_labelled_only": True})
    result = run_ssl(build_config(raw, Path.cwd()), tmp_path / "run", progress=False)
    assert [(r.step, r.labelled, r.pseudo_kept) for r in result.records] == [("final", 3, 0)]
    assert result.records[0].holdout_cases == 2


def test_a_collection_without_unlabelled_cases_trains_no_rounds(example_dataset, tmp_path, caplog):
    """Every case labelled (CHAOS as it lies): a round would only retrain the labelled-only
    model, so the loop says so and trains the final model once, on the labelled cases."""
    raw = raw_config(example_dataset, loop={"choose_export": True})
    with caplog.at_level("WARNING", logger="sslmedsam2.ssl.loop"):
        result = run_ssl(build_config(raw, Path.cwd()), tmp_path / "run", progress=False)
    assert [(r.step, r.labelled, r.based_on, r.export) for r in result.records] == [
        ("final", 3, None, None)]
    assert "GED4: no unlabelled case to pseudo-label" in caplog.text
    assert not (tmp_path / "run" / "GED4" / "round_00").exists()


def test_fused_round_zero_keeps_where_atlas_and_labelled_only_agree(ssl_data, tmp_path):
    """Round 0 trains nnU-Net on the labelled cases, labels every case with both engines and keeps
    their intersection; the final model is not trained on where they differ."""
    from sslmedsam2.evaluation.metrics import dice
    from sslmedsam2.ssl.loop import SemiSupervisedRun, gather_cases

    # the affine atlas (seeded sampling) registers a pair the same way twice; SyN's threads do not
    raw = raw_config(ssl_data, pseudo_labels={"fuse_labelled_only": True, "fusion": "agreement",
                                              "min_volume_ml": 1, "ignore_uncertainty_above": 0.95,
                                              "atlas_method": "affine"},
                     intermediate={"epochs": 10}, final={"epochs": 10}, loop={"max_rounds": 0})
    config = build_config(raw, Path.cwd())
    result = run_ssl(config, tmp_path / "run", progress=False)
    zero = result.records[0]
    assert zero.step == "round_00" and zero.engine == "atlas + labelled-only nnU-Net"
    folder = tmp_path / "run" / "GED4" / "round_00"
    run = SemiSupervisedRun(config, tmp_path / "run", progress=False)
    cases = gather_cases(config, "GED4")
    fused = run._round_zero_engine(cases, folder)[0]()  # trained already: nothing is retrained
    query = cases.unlabelled[0]
    image = sitk.ReadImage(str(query.image))
    atlas = fused.first.segment(image, "GED4", query.vendor).mask > 0
    model = fused.second.segment(image, "GED4", query.vendor).mask > 0
    saved = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "pseudo" / query.case / "GED4.nii.gz")))
    doubt = sitk.GetArrayFromImage(sitk.ReadImage(
        str(folder / "pseudo" / query.case / "GED4_uncertainty.nii.gz")))
    assert atlas.any() and model.any() and (atlas != model).any()
    assert dice(saved > 0, atlas & model) > 0.98
    assert (doubt[atlas != model] > 0.9).mean() > 0.95  # ~1 bit: flipped border voxels too
    assert (saved[doubt == 1.0] == 0).mean() > 0.99  # a full bit of doubt is never kept as liver
    labels = list((tmp_path / "run" / "GED4" / "final" / "labels").glob("*.nii.gz"))
    # the export choice's labelled-only model is round 0's partner: found, not trained again
    fallback, model_dir = run._labelled_only(cases)
    assert model_dir == Path(fallback.model) and folder / "labelled_only" in model_dir.parents
    assert fallback.holdout_cases == 2
    assert not (tmp_path / "run" / "GED4" / "final_labelled_only" / "nnunet").exists()
    assert any((sitk.GetArrayFromImage(sitk.ReadImage(str(p))) == 2).any() for p in labels)


def test_averaged_round_zero_labels_as_the_served_engine_would(ssl_data, tmp_path):
    """With ``fusion = "average"`` round 0's pseudo labels are the labelled-only nnU-Net and the
    atlas averaged (``engines.average``), the combination an SSL run serves its model with."""
    from sslmedsam2.engines.average import DIFFERENT_OBJECTS_BELOW, average
    from sslmedsam2.evaluation.metrics import dice
    from sslmedsam2.ssl.loop import SemiSupervisedRun, gather_cases

    raw = raw_config(ssl_data, pseudo_labels={"fuse_labelled_only": True, "fusion": "average",
                                              "min_volume_ml": 1, "atlas_method": "affine"},
                     intermediate={"epochs": 10}, final={"epochs": 10}, loop={"max_rounds": 0})
    config = build_config(raw, Path.cwd())
    zero = run_ssl(config, tmp_path / "run", progress=False).records[0]
    assert zero.step == "round_00" and zero.engine == "labelled-only nnU-Net averaged with atlas"
    folder = tmp_path / "run" / "GED4" / "round_00"
    cases = gather_cases(config, "GED4")
    fused = SemiSupervisedRun(config, tmp_path / "run", progress=False)._round_zero_engine(cases, folder)[0]()
    query = cases.unlabelled[0]
    image = sitk.ReadImage(str(query.image))
    model = fused.first.segment(image, "GED4", query.vendor)
    atlas = fused.second.segment(image, "GED4", query.vendor)
    saved = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "pseudo" / query.case / "GED4.nii.gz")))
    assert fused.second_alone_below == DIFFERENT_OBJECTS_BELOW  # the served engine's rule too
    expected = average(model, atlas, first_alone_below=fused.first_alone_below,
                       second_alone_below=fused.second_alone_below).mask
    assert (model.mask != atlas.mask).any() and expected.any()
    assert dice(saved > 0, expected > 0) > 0.98
    # "average-atlas" reuses the same labelled-only model; where the two part ways (forced here)
    # it keeps the atlas's organ, "average" the model's
    raw["pseudo_labels"]["fusion"] = "average-atlas"
    atlas_first = build_config(raw, Path.cwd())
    swapped = SemiSupervisedRun(atlas_first, tmp_path / "run", progress=False)._round_zero_engine(
        cases, folder)[0]()
    for engine, kept in ((fused, model), (swapped, atlas)):
        engine.first_alone_below = 1.01
        parted = engine.segment(image, "GED4", query.vendor)
        assert dice(parted.mask > 0, kept.mask > 0) > 0.98 and "alone" in parted.detail


def test_labelled_share_repeats_the_manual_masks_in_every_ssl_training(ssl_data, tmp_path):
    """At a share of 0.75 the manual masks make 3/4 of the nnU-Net training set, in round 1
    (3 labelled x 3 + 3 pseudo) and in the export choice's SSL arm (1 labelled x 9 + 3 pseudo);
    the record names each case once."""
    raw = raw_config(ssl_data, pseudo_labels={"labelled_share": 0.75, "atlas_method": "affine",
                                              "min_volume_ml": 1, "max_components": 0},
                     loop={"choose_export": True})
    result = run_ssl(build_config(raw, Path.cwd()), tmp_path / "run", progress=False)
    round_one = next(r for r in result.records if r.step == "round_01")
    assert (round_one.labelled, round_one.pseudo_kept, len(round_one.trained_on)) == (3, 3, 6)
    labelled = set(round_one.trained_on[:3])
    for step in ("round_01", "export_choice/ssl_fold0"):
        names = [p.name.split(".")[0] for p in (tmp_path / "run" / "GED4" / step).rglob(
            "nnUNet_raw/*/labelsTr/*.nii.gz")]
        manual = [n for n in names if n.split("_copy")[0] in labelled]
        assert len(names) == 12 and len(manual) == 9, (step, names)


def test_warm_started_round_starts_from_the_labelled_only_partner(ssl_data, tmp_path):
    """With ``warm_start``, round 1 takes the fused round 0's labelled-only model's plans and
    weights: after a few iterations its weights still follow the partner's (a fresh network's
    would be uncorrelated with them). The export choice's SSL models start likewise."""
    import torch

    raw = raw_config(ssl_data, pseudo_labels={"fuse_labelled_only": True, "min_volume_ml": 1,
                                              "atlas_method": "affine"},
                     loop={"warm_start": True, "choose_export": True})
    result = run_ssl(build_config(raw, Path.cwd()), tmp_path / "run", progress=False)
    partner = next((tmp_path / "run" / "GED4" / "round_00" / "labelled_only").rglob("plans.json")).parent
    round_one = Path(result.records[1].model)
    assert result.records[1].step == "round_01" and round_one != partner
    assert json.loads((round_one / "plans.json").read_text())["configurations"] == \
        json.loads((partner / "plans.json").read_text())["configurations"]

    def weights(model: Path) -> np.ndarray:
        state = torch.load(model / "fold_all" / "checkpoint_final.pth", map_location="cpu",
                           weights_only=False)["network_weights"]
        return np.concatenate([v.flatten().numpy() for k, v in state.items() if k.endswith("weight")])

    assert np.corrcoef(weights(partner), weights(round_one))[0, 1] > 0.9
    # the export choice mirrors it: each group's SSL model starts from its labelled-only model
    choice = tmp_path / "run" / "GED4" / "export_choice"
    ssl, labelled_only = (next((choice / f"{arm}_fold0").rglob("plans.json")).parent
                          for arm in ("ssl", "labelled-only"))
    assert np.corrcoef(weights(labelled_only), weights(ssl))[0, 1] > 0.9


def test_a_warm_start_without_a_trained_model_says_so(tmp_path):
    from sslmedsam2.errors import SSLMedSAM2Error
    from sslmedsam2.training.supervised import start_checkpoint

    (tmp_path / "fold_all").mkdir()
    (tmp_path / "fold_all" / "checkpoint_final.pth").write_bytes(b"")
    assert start_checkpoint(tmp_path, "3") == tmp_path / "fold_all" / "checkpoint_final.pth"
    with pytest.raises(SSLMedSAM2Error, match="no trained fold to warm-start from"):
        start_checkpoint(tmp_path / "fold_all", "0")


def _toml(raw: dict) -> str:
    lines = []
    for section, values in raw.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def _train_until(config: Path, run_dir: Path, log: Path, stop_when=None) -> int:
    """``sslmedsam2 train`` in its own process, SIGKILLed as soon as ``stop_when()`` holds."""
    command = [sys.executable, "-m", "sslmedsam2", "train", "--config", str(config),
               "--run", str(run_dir), "-q"]
    with open(log, "ab") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=sink)
        deadline = time.monotonic() + 600
        while process.poll() is None and time.monotonic() < deadline:
            if stop_when is not None and stop_when():
                process.kill()
                break
            time.sleep(0.05)
        return process.wait(timeout=60)


def _mtimes(paths) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in paths}


def test_killed_at_each_step_resumes_without_redoing_work(ssl_data, tmp_path):
    """Kill mid round 0, mid training, mid prediction; each rerun continues; finished files are
    not rewritten. Convergence is set to stop after round 1, whose model then is the final one."""
    raw = raw_config(ssl_data, loop={"max_rounds": 3, "convergence_dice": 0.01, "device": "cpu"})
    config, run_dir, log = tmp_path / "ssl.toml", tmp_path / "run", tmp_path / "train.log"
    config.write_text(_toml(raw))
    round0, round1 = run_dir / "GED4" / "round_00", run_dir / "GED4" / "round_01"
    kill_points = [
        lambda: any(round0.glob("pseudo/*/GED4.nii.gz")),
        lambda: any((round1 / "nnunet").glob("nnUNet_results/*/*/fold_all")),
        lambda: any(round1.glob("pseudo/*/GED4.nii.gz")),
    ]
    kept: dict[Path, int] = {}
    for stop_when in kill_points:
        assert _train_until(config, run_dir, log, stop_when) == -signal.SIGKILL, log.read_text()[-2000:]
        kept.update(_mtimes(p for p in run_dir.rglob("*") if p.is_file() and p.suffix == ".gz"
                            and "/pseudo/" in str(p) or p.name == "checkpoint_final.pth"))
    assert _train_until(config, run_dir, log) == 0, log.read_text()[-2000:]
    assert kept and _mtimes(kept) == kept  # nothing finished before a kill was redone
    assert [json.loads((run_dir / "GED4" / s / "step.json").read_text())["step"]
            for s in ("round_00", "round_01", "final")] == ["round_00", "round_01", "final"]
    assert not (run_dir / "GED4" / "round_02").exists()  # converged: no second round
    final = json.loads((run_dir / "GED4" / "final" / "step.json").read_text())
    assert final["model"] == json.loads((round1 / "step.json").read_text())["model"]
    assert len(list(round1.glob("pseudo/*/GED4.nii.gz"))) == 3
    assert (run_dir / "weights" / MANIFEST).is_file()
    assert not list(run_dir.glob(".weights*"))  # no staging folder left behind


def test_runs_resume_across_config_keys_added_later(tmp_path):
    from sslmedsam2.ssl.pipeline import config_changes

    resolved = build_config({"data": {"train": "x"}}, tmp_path).to_dict()
    older = json.loads(json.dumps(resolved))
    del older["final"]["extra_configurations"]  # a run folder from before that key existed
    assert config_changes(older, resolved) == []
    older["loop"]["max_rounds"] = 5
    assert config_changes(older, resolved) == ["loop.max_rounds"]
