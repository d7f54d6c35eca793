"""ANTs SyN, the atlas engine's deformable method, on real patients: it must beat the affine where
the anatomy differs (two CHAOS patients, read in place from ../shared), return a soft mask on
the query's own grid, and be chosen by ``auto`` only within one sequence."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import reoriented

from sslmedsam2.evaluation.metrics import compute_metrics
from sslmedsam2.registration.label_propagation import AtlasConfig, for_sequences, propagate, warp_supports
from sslmedsam2.registration.syn import SynConfig, unpinned_environment

CHAOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "chaos-mr-t2"


def _patient(number: str, z: slice = slice(None)) -> tuple[sitk.Image, sitk.Image]:
    image = sitk.ReadImage(str(CHAOS / f"chaos_mr_t2_{number}_image.nii.gz"))
    mask = sitk.ReadImage(str(CHAOS / f"chaos_mr_t2_{number}_liver.nii.gz"))
    return image[:, :, z], mask[:, :, z]


def _dice(fused: np.ndarray, mask: sitk.Image) -> float:
    truth = sitk.GetArrayFromImage(mask) > 0
    return compute_metrics(fused, truth, mask.GetSpacing()[::-1]).dice


def test_syn_beats_the_affine_across_two_patients():
    """Patient 34 labels patient 01: livers of 1.4 and 1.8 litres, shapes an affine map cannot
    carry onto each other (0.80 affine, 0.87 SyN when measured). Cropped to the liver's slices
    to keep the test short."""
    query, truth = _patient("01", slice(10, 37))
    support = _patient("34", slice(8, 33))
    syn = propagate(query, [support], AtlasConfig(method="syn"))
    affine = propagate(query, [support], AtlasConfig(method="affine"))
    assert syn.mask.shape == affine.mask.shape == query.GetSize()[::-1]
    assert 0.0 <= syn.probability.min() and syn.probability.max() <= 1.0
    assert _dice(syn.mask, truth) > _dice(affine.mask, truth)


def test_syn_output_stays_on_an_oblique_flipped_query_grid():
    query, truth = _patient("01", slice(14, 30))
    support = _patient("34", slice(12, 28))
    for kind in ("flipped", "oblique"):
        moved = reoriented(query, kind)
        fused = propagate(moved, [support], AtlasConfig(method="syn"))
        assert fused.mask.shape == moved.GetSize()[::-1] and fused.mask.any()


def test_a_similarity_start_keeps_the_support_liver_off_the_slices_below_the_query_liver():
    """Patient 02's scan covers less of the abdomen than patient 01's; from ANTs' affine, SyN
    stretched 01's liver along the slices down to 02's first slice (0.74 Dice when measured),
    from a similarity map it stays within 4 slices of the liver's lower end (0.82)."""
    query, truth = _patient("02")
    support = _patient("01")
    lowest = int(np.flatnonzero(sitk.GetArrayFromImage(truth).any(axis=(1, 2)))[0])
    warped = {start: warp_supports(query, [support], AtlasConfig(method="syn", syn=SynConfig(start=start)),
                                   with_images=False)[0].mask >= 0.5 for start in ("affine", "similarity")}
    below = {start: int(mask[:lowest].any(axis=(1, 2)).sum()) for start, mask in warped.items()}
    assert below["similarity"] < below["affine"]
    assert _dice(warped["similarity"], truth) > _dice(warped["affine"], truth)


def test_an_unknown_syn_start_is_named():
    query, _ = _patient("01", slice(14, 30))
    with pytest.raises(ValueError, match="'rigid'.*affine, similarity"):
        warp_supports(query, [_patient("34", slice(12, 28))], AtlasConfig(method="syn", syn=SynConfig(start="rigid")))


def test_auto_is_syn_within_a_sequence_and_affine_across():
    assert for_sequences(AtlasConfig(), same_sequence=True).method == "syn"
    assert for_sequences(AtlasConfig(), same_sequence=False).method == "affine"
    assert for_sequences(AtlasConfig(), same_sequence=True, thin=True).method == "affine"
    assert for_sequences(AtlasConfig(method="syn"), same_sequence=False).method == "syn"


def test_support_images_are_carried_only_when_asked():
    """The weighting compares warped support images with the query; without it (one support,
    across sequences) the second resampling is skipped, and the masks are the same either way."""
    query, _ = _patient("01", slice(14, 30))
    support = _patient("34", slice(12, 28))
    config = AtlasConfig(method="affine")
    (with_image,) = warp_supports(query, [support], config)
    (without,) = warp_supports(query, [support], config, with_images=False)
    assert with_image.image is not None and with_image.image.shape == query.GetSize()[::-1]
    assert without.image is None
    # ITK's threads make two runs of one registration differ slightly (more on a busy machine)
    a, b = with_image.mask >= 0.5, without.mask >= 0.5
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.98


SEEDED_TWICE = """
import sys
import numpy as np
sys.path.insert(0, {tests!r})
from test_registration import _patient
from sslmedsam2.registration.label_propagation import AtlasConfig, warp_supports
from sslmedsam2.registration.syn import SynConfig
import ants
query, _ = _patient("01", slice(14, 30))
support = _patient("34", slice(12, 28))
config = AtlasConfig(method="syn", syn=SynConfig(seed=7))
first, second = (warp_supports(query, [support], config, with_images=False)[0].mask for _ in range(2))
print(np.array_equal(first, second), ants.config._random_seed)
"""


def test_a_seeded_syn_repeats_itself_exactly_on_one_thread():
    """ANTs seeds its sampling from the clock unless told: unseeded, two runs differ (a whole
    voxel of the soft mask when measured). One ITK thread, so only the seed can differ."""
    script = SEEDED_TWICE.format(tests=str(Path(__file__).parent))
    env = {**os.environ, "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["True", "None"]  # identical; ANTs' own setting restored


def test_seed_zero_is_refused_because_ants_reads_it_as_the_clock():
    query, _ = _patient("01", slice(14, 30))
    with pytest.raises(ValueError, match="seed must not be 0"):
        warp_supports(query, [_patient("34", slice(12, 28))], AtlasConfig(method="syn", syn=SynConfig(seed=0)))


PINNED = """
import sys
import numpy as np
import SimpleITK as sitk
sys.path.insert(0, {tests!r})
from sslmedsam2.registration.syn import pin_registration_threads
{before}
print(pin_registration_threads(), sitk.ProcessObject.GetGlobalDefaultNumberOfThreads())
from test_registration import _patient
from sslmedsam2.registration.label_propagation import AtlasConfig, warp_supports
query, _ = _patient("01", slice(14, 30))
support = _patient("34", slice(12, 28))
np.save({out!r}, warp_supports(query, [support], AtlasConfig(method="syn"), with_images=False)[0].mask)
"""


def _pinned_run(tmp_path: Path, name: str, before: str = "") -> tuple[list[str], np.ndarray]:
    out = tmp_path / f"{name}.npy"
    script = PINNED.format(tests=str(Path(__file__).parent), out=str(out), before=before)
    result = subprocess.run([sys.executable, "-c", script], env=unpinned_environment(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.split(), np.load(out)


def test_pinned_registration_threads_repeat_a_warp_bit_for_bit_across_processes(tmp_path):
    """Two fresh processes, each pinned by the library (no variable set by the caller): the same
    warp to the last bit, while SimpleITK keeps its own threads."""
    (pinned, sitk_threads), first = _pinned_run(tmp_path, "first")
    (_, _), second = _pinned_run(tmp_path, "second")
    assert pinned == "True" and np.array_equal(first, second)
    if (os.cpu_count() or 1) > 1:
        assert int(sitk_threads) > 1


def test_pinning_after_ants_is_loaded_changes_nothing_and_says_so(tmp_path):
    (pinned, _), _ = _pinned_run(tmp_path, "late", before="import ants")
    assert pinned == "False"


SERVING_THREADS = """
import os
{before}
from sslmedsam2.cli import infer_parser, pin_unless_threaded
from sslmedsam2.errors import UsageError
try:
    pin_unless_threaded(infer_parser().parse_args(["--input", "i", "--output", "o", {flags}]))
    print(os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "unset"))
except UsageError as exc:
    print("refused:", exc)
"""


@pytest.mark.parametrize("flags, before, expected", [
    ("", "", "1"),  # serving repeats itself unless told otherwise
    ('"--deterministic"', "", "1"),
    ('"--threaded-registration"', "", "unset"),
    ("", "import ants", "unset"),  # too late by default: a warning, the run goes on
    ('"--deterministic"', "import ants", "refused: --deterministic"),  # asked for: an error
])
def test_serving_pins_registration_threads_by_default(flags, before, expected):
    script = SERVING_THREADS.format(before=before, flags=flags)
    result = subprocess.run([sys.executable, "-c", script], env=unpinned_environment(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().startswith(expected), result.stdout
    assert ("could be pinned" in result.stderr) == (before != "" and flags == "")
