"""Atlas few-shot engine: finds the liver on generated cases, any grid, resumable pseudo labels,
and serves as process.py's fallback."""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import SEED_DIR, reoriented, run_process
from test_process import assert_on_grid, summary

from sslmedsam2.engines.atlas import AtlasEngine
from sslmedsam2.evaluation.metrics import compute_metrics
from sslmedsam2.postprocess import binary_entropy, largest_component
from sslmedsam2.pseudo_label import CaseLabeller, Shard, find_queries, pseudo_label
from sslmedsam2.registration.label_propagation import AtlasConfig, RegistrationError, propagate
from sslmedsam2.registration.syn import unpinned_environment
from sslmedsam2.supports import find_supports, same_vendor_first


def _read(path: Path) -> sitk.Image:
    return sitk.ReadImage(str(path))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def _shifted(mask: np.ndarray, step: int, axis: int) -> np.ndarray:
    """``mask`` moved ``step`` voxels along ``axis``, zeros coming in (nothing wraps around)."""
    out = np.zeros_like(mask)
    source, target = [slice(None)] * mask.ndim, [slice(None)] * mask.ndim
    source[axis] = slice(0, mask.shape[axis] - step) if step > 0 else slice(-step, None)
    target[axis] = slice(step, None) if step > 0 else slice(0, mask.shape[axis] + step)
    out[tuple(target)] = mask[tuple(source)]
    return out


def displaced_dice(mask: np.ndarray, voxels: int, axes: tuple[int, ...]) -> float:
    """The worst Dice of ``mask`` against itself moved ``voxels`` along any of ``axes``: what a
    registration off by that much still reaches. Registering a volume to itself should land
    within a voxel of identity (random metric sampling keeps it from landing exactly on it)."""
    return min(_dice(mask, _shifted(mask, step, axis)) for axis in axes for step in (voxels, -voxels))


def unregistered(query: sitk.Image, pairs: list[tuple[sitk.Image, sitk.Image]]) -> np.ndarray:
    """What ``propagate`` would give if registration did nothing: the support masks taken onto
    the query's grid where they lie in space, majority vote, largest component."""
    votes = np.mean([sitk.GetArrayFromImage(sitk.Resample(
        sitk.Cast(mask > 0, sitk.sitkFloat32), query, sitk.Transform(), sitk.sitkLinear, 0.0,
        sitk.sitkFloat32)) for _, mask in pairs], axis=0)
    return largest_component(votes >= AtlasConfig().threshold)


#: The floors below were derived for the affine method (SyN's own test is test_registration.py):
#: on this synthetic set, one liver smoothly deformed under vendor-specific contrasts, SyN's
#: deformation can end below the unregistered overlap.
AFFINE = AtlasConfig(method="affine")


@pytest.fixture(scope="module")
def supports(example_dataset):
    return find_supports(example_dataset.train_dir)


def test_finds_supports_in_both_folder_shapes(tmp_path, example_dataset, supports):
    assert [s.case for s in supports] == ["0001-A", "0002-B1", "0003-B2"]
    assert [s.vendor for s in supports] == ["A", "B1", "B2"]
    flat = tmp_path / "supports"
    for support in supports:
        shutil.copytree(support.image.parent, flat / support.case)
    assert [s.case for s in find_supports(flat)] == [s.case for s in supports]
    assert [s.case for s in same_vendor_first(supports, "Vendor_B1")] == ["0002-B1"]
    assert same_vendor_first(supports, "C") == supports


@pytest.mark.parametrize("sequence", ["GED4", "T1"])
def test_atlas_finds_the_liver(example_dataset, supports, sequence):
    """Each case's floor is what the same supports give unregistered (0.63-0.76 Dice on these
    cases; the affine method reaches 0.82-0.95): registration must find the liver better than
    where the supports' livers happen to lie."""
    pairs = [(_read(s.image), _read(s.mask)) for s in supports]
    for case in example_dataset.split("test"):
        query = _read(case.images[sequence])
        fused = propagate(query, pairs, AFFINE)
        truth = sitk.GetArrayFromImage(_read(case.ground_truth[sequence]))
        dice = compute_metrics(fused.mask, truth, query.GetSpacing()[::-1]).dice
        floor = _dice(unregistered(query, pairs), truth)
        assert dice > floor, f"{case.case_id} {sequence}: Dice {dice:.3f}, unregistered {floor:.3f}"
        assert fused.mask.shape == truth.shape
        assert 0.0 <= fused.uncertainty.min() and fused.uncertainty.max() <= 1.0


def test_atlas_output_on_awkward_query_grids(tmp_path, supports, real_mr):
    engine = AtlasEngine(supports[:1])
    for kind in ("flipped", "anisotropic", "oblique"):
        query = reoriented(real_mr, kind)
        segmentation = engine.segment(query, "GED4")
        assert segmentation.mask.shape == query.GetSize()[::-1]
        assert segmentation.mask.any()


@pytest.mark.parametrize("slices", [1, 3])
def test_atlas_on_a_thin_volume(real_mr, slices):
    """Fewer slices than ITK's recursive smoothing accepts (4): still registered, on its grid.
    The query is part of the support, so the right answer is its own slices of the mask."""
    image, mask = real_mr, _read(SEED_DIR / "liver.nii.gz")
    area = sitk.GetArrayViewFromImage(mask).reshape(mask.GetSize()[2], -1).sum(axis=1)
    # the largest cross-section, kept 4 slices from either end so the support has all 8
    middle = int(np.clip(np.argmax(area), 4, len(area) - 4))
    query = image[:, :, middle : middle + slices]
    fused = propagate(query, [(image[:, :, middle - 4 : middle + 4], mask[:, :, middle - 4 : middle + 4])],
                      AFFINE)
    truth = sitk.GetArrayFromImage(mask[:, :, middle : middle + slices])
    assert fused.mask.shape == truth.shape == (slices, *truth.shape[1:])
    # 1-3 slices barely constrain the affine's through-plane terms and get one unsmoothed
    # level: allow 2 voxels of in-plane drift (affine: 0.92-0.94 measured; 0.90 is that floor)
    dice = compute_metrics(fused.mask, truth, query.GetSpacing()[::-1]).dice
    assert dice >= displaced_dice(truth, 2, axes=(1, 2)), f"Dice {dice:.3f}"


def test_a_support_that_cannot_be_registered_is_left_out(real_mr):
    mask = _read(SEED_DIR / "liver.nii.gz")
    blank = sitk.Image(real_mr.GetSize(), real_mr.GetPixelID())  # no intensity: ITK cannot align it
    blank.CopyInformation(real_mr)
    fused = propagate(real_mr, [(blank, mask), (real_mr, mask)])
    truth = sitk.GetArrayFromImage(mask)
    # the vote is the scan registered to itself: within a voxel of identity (0.977 measured;
    # a one-voxel shift gives 0.92-0.96 on this liver)
    dice = compute_metrics(fused.mask, truth, real_mr.GetSpacing()[::-1]).dice
    assert dice >= displaced_dice(truth, 1, axes=(0, 1, 2)), f"Dice {dice:.3f}"
    with pytest.raises(RegistrationError, match="none of the 1 support"):
        propagate(real_mr, [(blank, mask)])


class CrashingOnce(AtlasEngine):
    """The atlas engine with a fault injected into its first query (an engine crash)."""

    crashed = False

    def segment(self, image, sequence, vendor=None):
        if not self.crashed:
            self.crashed = True
            raise RuntimeError("ITK ERROR: injected\nsecond line")
        return super().segment(image, sequence, vendor)


def test_a_crash_on_one_pseudo_label_loses_nothing_else(tmp_path, example_dataset, supports):
    queries = find_queries(example_dataset.test_input_dir, "GED4")
    labeller = CaseLabeller(partial(CrashingOnce, supports[:1]), tmp_path, "GED4")
    records = pseudo_label(labeller, queries, progress=False)
    assert [r["status"] for r in records] == ["error", "ok"]
    assert records[0]["error"] == (f"{queries[0].image}: segmentation failed (RuntimeError: "
                                   "second line)")
    assert (tmp_path / queries[1].case / "GED4.nii.gz").is_file()
    assert not (tmp_path / queries[0].case / "GED4.nii.gz").exists()


def test_binary_entropy():
    values = binary_entropy(np.array([0.0, 0.5, 1.0, 0.25], np.float32))
    np.testing.assert_allclose(values, [0.0, 1.0, 0.0, 0.811278], atol=1e-5)


def test_pseudo_labels_resume_and_shard(tmp_path, example_dataset, supports):
    queries = find_queries(example_dataset.test_input_dir, "T1")
    assert [q.case for q in queries] == [c.case_id for c in example_dataset.split("test")]
    out = tmp_path / "pseudo"
    labeller = CaseLabeller(partial(AtlasEngine, supports, max_supports=1), out, "T1")
    first = pseudo_label(labeller, queries, Shard(0, 2), progress=False)
    second = pseudo_label(labeller, queries, Shard(1, 2), progress=False)
    assert [r["case"] for r in first + second] == sorted(q.case for q in queries)
    again = pseudo_label(labeller, queries, Shard(0, 1), progress=False)
    assert {r["status"] for r in again} == {"skipped"}
    for query in queries:
        image = _read(query.image)
        assert_on_grid(out / query.case / "T1.nii.gz", image)
        uncertainty = _read(out / query.case / "T1_uncertainty.nii.gz")
        assert uncertainty.GetSize() == image.GetSize()
    journal = [json.loads(line) for path in sorted(out.glob("*.jsonl")) for line in path.read_text().splitlines()]
    assert sorted(r["case"] for r in journal) == sorted(q.case for q in queries)
    assert all(r["engine"] == "atlas" and r["seconds"] > 0 for r in journal)
    with pytest.raises(ValueError):
        Shard.parse("2/2")


def test_cli_pseudo_label(tmp_path, example_dataset):
    import subprocess
    import sys

    command = [sys.executable, "-m", "sslmedsam2", "pseudo-label", "--supports",
               str(example_dataset.train_dir), "--unlabelled", str(example_dataset.test_input_dir),
               "--out", str(tmp_path / "out"), "--max-supports", "1", "-q"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "out").glob("*/GED4.nii.gz"))) == len(example_dataset.split("test"))
    missing = subprocess.run(command[:5] + [str(tmp_path / "none")] + command[6:],
                             capture_output=True, text=True, timeout=600)
    assert missing.returncode == 1 and "none: not a folder" in missing.stderr


def test_process_falls_back_to_atlas(tmp_path, trained_weights, example_dataset, supports):
    """GED4 from nnU-Net, T1 (no nnU-Net model) from the supports bundled in the weights."""
    weights = tmp_path / "weights"
    shutil.copytree(trained_weights, weights)
    for support in supports:
        target = weights / "supports" / support.case
        target.mkdir(parents=True)
        shutil.copy(support.image, target / "GED4.nii.gz")
        shutil.copy(support.mask, target / "mask_GED4.nii.gz")
    out = tmp_path / "output"
    result = run_process("--input", example_dataset.test_input_dir, "--output", out, "--weights", weights)
    assert result.returncode == 0, result.stderr
    engines = {(c["case"], c["sequence"]): c["engine"] for c in summary(out)["cases"]}
    for case in example_dataset.split("test"):
        assert engines[case.case_id, "GED4"] == "nnunet"
        assert engines[case.case_id, "T1"] == "atlas"
        assert_on_grid(out / "LiSeg_pred" / case.case_id / "T1_pred.nii.gz", _read(case.images["T1"]))
    assert "T1: atlas" in result.stderr
    assert summary(out)["registration_threads"] == "1"  # served masks repeat by default
    shutil.rmtree(weights / "nnunet")
    only_atlas = run_process("--input", example_dataset.test_input_dir, "--output", tmp_path / "o2",
                             "--weights", weights, "--sequences", "T1", "--threaded-registration")
    assert only_atlas.returncode == 0, only_atlas.stderr
    assert {c["engine"] for c in summary(tmp_path / "o2")["cases"]} == {"atlas"}
    assert summary(tmp_path / "o2")["registration_threads"] == "ITK default"


def test_cli_pseudo_label_deterministic_repeats_itself_bit_for_bit(tmp_path, example_dataset):
    """By default (``--deterministic``) two separate runs write the same masks and uncertainty
    maps, to the last bit (on ITK's threads SyN's sums change order between runs)."""
    import subprocess
    import sys

    def run(out: Path) -> None:
        command = [sys.executable, "-m", "sslmedsam2", "pseudo-label", "--supports",
                   str(example_dataset.train_dir), "--unlabelled", str(example_dataset.test_input_dir),
                   "--out", str(out), "--max-supports", "1", "-q"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                                env=unpinned_environment())
        assert result.returncode == 0, result.stderr

    run(tmp_path / "first")
    run(tmp_path / "second")
    written = sorted(p.relative_to(tmp_path / "first") for p in (tmp_path / "first").glob("*/*.nii.gz"))
    assert len(written) == 2 * len(example_dataset.split("test"))
    for path in written:
        first, second = (sitk.GetArrayFromImage(_read(tmp_path / name / path)) for name in ("first", "second"))
        assert np.array_equal(first, second), path
