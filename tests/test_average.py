"""The model-and-atlas average: the mean of two liver probabilities, on the input's grid, served
by process.py when asked or when the weights' manifest names it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import reoriented, run_process
from test_process import assert_on_grid, summary

from sslmedsam2.container.weights_check import check_weights
from sslmedsam2.engines import AVERAGED_ENGINES
from sslmedsam2.engines.atlas import AtlasEngine
from sslmedsam2.engines.average import (DIFFERENT_OBJECTS_BELOW, MODEL_ALONE_BELOW, UNTAUGHT_BELOW,
                                        AverageEngine, average, on_the_mask_side)
from sslmedsam2.engines.base import RuntimeOptions, Segmentation
from sslmedsam2.engines.nnunet import NnUNetEngine
from sslmedsam2.errors import EngineUnavailableError
from sslmedsam2.manifest import write_manifest
from sslmedsam2.orientation import segment_in_orientation
from sslmedsam2.postprocess import binary_entropy, component_most_like, largest_component
from sslmedsam2.supports import find_supports


def _seg(probability: np.ndarray | None, mask: np.ndarray) -> Segmentation:
    return Segmentation(mask.astype(np.uint8), "test", probability=probability)


def test_the_mask_is_the_largest_component_of_the_mean_probability():
    model, atlas = np.zeros((4, 8, 8), np.float32), np.zeros((4, 8, 8), np.float32)
    model[1:3, 1:5, 1:5], atlas[1:3, 2:6, 2:6] = 0.9, 0.7  # overlap: 0.8; model alone 0.45
    model[0, 7, 7] = atlas[0, 7, 7] = 1.0                    # an island both see: dropped
    fused = average(_seg(model, model > 0.5), _seg(atlas, atlas > 0.5))
    expected = np.zeros(model.shape, np.uint8)
    expected[1:3, 2:5, 2:5] = 1
    np.testing.assert_array_equal(fused.mask, expected)
    mean = (model + atlas) / 2
    mean[0, 7, 7] = 0.0  # outside both organs: sure background, however sure the raw probability
    np.testing.assert_allclose(fused.probability, mean)
    np.testing.assert_allclose(fused.uncertainty, binary_entropy(mean))
    assert fused.detail.startswith("average of test and test")


def test_each_probability_takes_the_side_of_its_engines_organ():
    """Voxels the clean-up moved across the mask's edge keep their confidence, not their side."""
    probability = np.array([[[0.9, 0.2, 0.7, 0.0, 0.95]]], np.float32)
    mask = np.array([[[1, 1, 0, 0, 1]]], np.uint8)  # the last voxel: an island, dropped
    side = on_the_mask_side(_seg(probability, mask), other=mask)
    np.testing.assert_allclose(side, [[[0.9, 0.8, 0.3, 0.0, 0.05]]], atol=1e-6)


def test_the_organ_is_the_component_the_other_engine_finds_not_the_largest():
    """A model that finds the liver and a bigger false object elsewhere (a real patient of
    benchmarks/RESULTS.md, attempt 11): the atlas's mask says which one is the liver, and the
    false object, outside both organs, is dropped from the average."""
    model, atlas = np.zeros((6, 12, 12), np.float32), np.zeros((6, 12, 12), np.float32)
    model[1:4, 1:4, 1:4] = 0.9    # the liver: 27 voxels
    model[1:5, 7:11, 7:11] = 0.95  # a false object: 64 voxels
    atlas[1:4, 1:5, 1:5] = 0.8     # the atlas finds the liver only
    fused = average(_seg(model, model > 0.5), _seg(atlas, atlas > 0.5))
    assert fused.mask[1:4, 1:4, 1:4].all() and not fused.mask[:, 6:, 6:].any()
    # with no overlap at all, the largest component is the organ, as before
    lone = np.zeros(model.shape, np.uint8)
    lone[5, 0, 11] = 1
    np.testing.assert_array_equal(component_most_like(model > 0.5, lone), largest_component(model > 0.5))


def test_organs_too_unlike_serve_the_model_alone():
    """Where one engine clearly failed (organs under the floor's Dice), the mask is the model's
    organ and its probability the model's own; alike organs are averaged as before."""
    model, atlas = np.zeros((4, 10, 10), np.float32), np.zeros((4, 10, 10), np.float32)
    model[1:3, 1:7, 1:7] = 0.9
    atlas[1:3, 4:10, 4:10] = 0.9  # 9 of 36 voxels shared per slice: Dice 0.25
    fused = average(_seg(model, model > 0.5), _seg(atlas, atlas > 0.5), first_alone_below=0.7)
    np.testing.assert_array_equal(fused.mask, model > 0.5)
    np.testing.assert_allclose(fused.probability, model)  # the organ already is the whole mask
    assert fused.detail == "test alone, not test (25% alike by Dice, under 70%)"
    averaged = average(_seg(model, model > 0.5), _seg(atlas, atlas > 0.5), first_alone_below=0.2)
    assert averaged.detail.startswith("average of")
    np.testing.assert_array_equal(averaged.mask, (model > 0.5) & (atlas > 0.5))  # where both are sure


def test_a_model_organ_far_smaller_than_the_atlas_is_the_failure():
    """Where the two part ways and the model's organ is under a third of the atlas's (the dark
    liver of benchmarks/RESULTS.md, attempt 20: a small false object), the atlas's organ is served
    alone; at a share the model's organ clears, the model's is, as before."""
    model, atlas = np.zeros((4, 10, 10), np.float32), np.zeros((4, 10, 10), np.float32)
    model[1:3, 1:3, 1:3] = 0.9    # 8 voxels, 2 of them inside the atlas's organ
    atlas[1:3, 2:10, 2:10] = 0.8  # 128 voxels
    pair = _seg(model, model > 0.5), Segmentation((atlas > 0.5).astype(np.uint8), "atlas", probability=atlas)
    fused = average(*pair, first_alone_below=0.7)
    np.testing.assert_array_equal(fused.mask, atlas > 0.5)
    np.testing.assert_allclose(fused.probability, atlas)
    assert fused.detail == "atlas alone, test's organ under 33% of its size (3% alike by Dice, under 70%)"
    np.testing.assert_array_equal(average(*pair, first_alone_below=0.7, smaller_failed_below=0.05).mask,
                                  model > 0.5)


def test_organs_that_barely_overlap_are_different_objects_and_the_atlas_is_served():
    """Where the two organs hardly overlap (a model's liver-sized object beside the atlas's liver:
    the dark liver of benchmarks/RESULTS.md, attempt 24), the second engine's organ is served on
    its own probability; between that floor and the model-alone one the model's is, as before,
    and an atlas organ far the smaller does not take over."""
    model, atlas = np.zeros((4, 12, 12), np.float32), np.zeros((4, 12, 12), np.float32)
    model[1:3, 0:6, 0:6] = 0.9
    atlas[1:3, 5:11, 5:11] = 0.8  # 1 of 36 voxels shared per slice: Dice 0.03
    pair = _seg(model, model > 0.5), Segmentation((atlas > 0.5).astype(np.uint8), "atlas", probability=atlas)
    fused = average(*pair, first_alone_below=0.7, second_alone_below=0.2)
    np.testing.assert_array_equal(fused.mask, atlas > 0.5)
    np.testing.assert_allclose(fused.probability, atlas)
    assert fused.detail == "atlas alone, not test (3% alike by Dice, under 20%: different objects)"
    np.testing.assert_array_equal(average(*pair, first_alone_below=0.7, second_alone_below=0.02).mask,
                                  model > 0.5)
    small = np.zeros_like(atlas)
    small[1:3, 5:7, 5:7] = 0.8  # 8 voxels against the model's 72
    smaller = average(pair[0], Segmentation((small > 0.5).astype(np.uint8), "atlas", probability=small),
                      first_alone_below=0.7, second_alone_below=0.2)
    np.testing.assert_array_equal(smaller.mask, model > 0.5)


def test_a_mask_without_probability_cannot_be_averaged():
    mask = np.ones((2, 3, 3), bool)
    with pytest.raises(EngineUnavailableError, match="returned a mask only"):
        average(_seg(mask.astype(np.float32), mask), Segmentation(mask.astype(np.uint8), "masker"))


@pytest.fixture(scope="module")
def weights_with_supports(tmp_path_factory, trained_weights, example_dataset) -> Path:
    """The tiny trained nnU-Net with one GED4 support beside it, as a training run exports them."""
    weights = tmp_path_factory.mktemp("average") / "weights"
    shutil.copytree(trained_weights, weights)
    support = find_supports(example_dataset.train_dir)[0]
    target = weights / "supports" / support.case
    target.mkdir(parents=True)
    shutil.copy(support.image, target / "GED4.nii.gz")
    shutil.copy(support.mask, target / "mask_GED4.nii.gz")
    return weights


def test_the_average_comes_back_on_flipped_and_oblique_grids(weights_with_supports, example_dataset):
    """Engines run in the model's orientation (as process.py calls them); the mask and the mean
    probability it was cut from both come back on the query's own grid."""
    engine = AverageEngine.from_weights(weights_with_supports, RuntimeOptions(device="cpu"))
    assert engine.can_segment("GED4") and not engine.missing("GED4")
    assert engine.second_alone_below == DIFFERENT_OBJECTS_BELOW  # served: the atlas where they differ
    image = sitk.ReadImage(str(example_dataset.split("test")[0].images["GED4"]))
    for kind in ("flipped", "oblique"):
        query = reoriented(image, kind)
        fused = segment_in_orientation(engine, query, "GED4", None)
        shape = query.GetSize()[::-1]
        assert fused.mask.shape == shape and fused.probability.shape == shape
        assert 0.0 <= fused.probability.min() and fused.probability.max() <= 1.0
        np.testing.assert_array_equal(fused.mask, largest_component(fused.probability >= 0.5))
        # the tiny model and the atlas may disagree enough for one organ to be served alone;
        # the message names the model wherever it stands (averaged, alone, or given way)
        assert "3d_fullres folds=" in fused.detail


@pytest.mark.parametrize("agreement, atlas_first", [
    (None, False), (UNTAUGHT_BELOW, False), (0.95, False), (UNTAUGHT_BELOW - 0.01, True), (0.5, True)])
def test_a_model_that_did_not_learn_its_labels_gives_way_to_the_atlas(
        tmp_path, weights_with_supports, agreement, atlas_first):
    """The manifest's ``teacher_agreement`` (how alike the model labels its own pseudo-labelled
    training patients with the labels it was taught) decides whose organ is served where the
    two part: under ``UNTAUGHT_BELOW`` the atlas goes first, as in round 0; otherwise, or
    unmeasured, the model does, with the atlas served where they are different objects."""
    weights = shutil.copytree(weights_with_supports, tmp_path / "weights")
    write_manifest(weights, {"models": {"GED4": {"teacher_agreement": agreement}}})
    engine = AverageEngine.from_weights(weights, RuntimeOptions(device="cpu"))
    model, atlas = (engine.second, engine.first) if atlas_first else (engine.first, engine.second)
    assert isinstance(model, NnUNetEngine) and isinstance(atlas, AtlasEngine)
    assert engine.first_alone_below == MODEL_ALONE_BELOW
    assert engine.second_alone_below == (None if atlas_first else DIFFERENT_OBJECTS_BELOW)
    assert engine.sequences == ("GED4",)
    order = next(s for s in check_weights(weights, AVERAGED_ENGINES).services
                 if s.sequence == "GED4").engines[0]
    assert order.startswith("average of atlas and nnunet" if atlas_first else "average of nnunet and atlas")


def test_only_the_supports_sequence_is_averaged(weights_with_supports):
    """Another sequence's atlas registers affinely and was never measured averaged: it goes to the
    next engine in the order, and the reason is named."""
    atlas = AtlasEngine.from_weights(weights_with_supports, RuntimeOptions(device="cpu"))
    engine = AverageEngine(atlas, atlas, sequences=(atlas.support_sequence,))
    assert atlas.support_sequence == "GED4" and atlas.can_segment("T1")
    assert engine.can_segment("GED4") and not engine.can_segment("T1")
    assert "GED4 only" in engine.missing("T1")


def _served(weights: Path, example_dataset, out: Path, *engines: str) -> list[str]:
    """The engine of every GED4 mask ``process.py`` writes (with ``--engines`` when given)."""
    result = run_process("--input", example_dataset.test_input_dir, "--output", out,
                         "--weights", weights, "--sequences", "GED4", *engines)
    assert result.returncode == 0, result.stderr
    return [c["engine"] for c in summary(out)["cases"] if c["status"] == "ok"]


def test_process_serves_the_average_when_asked(tmp_path, weights_with_supports, example_dataset):
    out, cases = tmp_path / "output", example_dataset.split("test")
    served = _served(weights_with_supports, example_dataset, out, "--engines", "average,nnunet")
    assert served == ["average"] * len(cases)
    for case in cases:
        assert_on_grid(out / "LiSeg_pred" / case.case_id / "GED4_pred.nii.gz",
                       sitk.ReadImage(str(case.images["GED4"])))


def test_without_supports_the_average_steps_aside(tmp_path, trained_weights, example_dataset):
    """No supports: the average cannot serve, so the next engine in the order does."""
    served = _served(trained_weights, example_dataset, tmp_path / "output", "--engines", "average,nnunet")
    assert served == ["nnunet"] * len(example_dataset.split("test"))


def test_the_manifest_chain_is_the_default_and_the_command_line_overrides_it(
        tmp_path, weights_with_supports, example_dataset):
    """An SSL run's manifest names the averaged chain: process.py and check-weights follow it
    unless ``--engines`` says otherwise."""
    weights = shutil.copytree(weights_with_supports, tmp_path / "weights")
    write_manifest(weights, {"engines": list(AVERAGED_ENGINES)})
    cases = len(example_dataset.split("test"))
    assert _served(weights, example_dataset, tmp_path / "by-manifest") == ["average"] * cases
    assert _served(weights, example_dataset, tmp_path / "asked", "--engines", "nnunet") == ["nnunet"] * cases
    ged4 = next(s for s in check_weights(weights).services if s.sequence == "GED4")
    assert ged4.engines[0] == "average of nnunet and atlas, 1 support(s)"
    assert next(s for s in check_weights(weights, ("nnunet",)).services
                if s.sequence == "GED4").engines[0].startswith("nnunet")
