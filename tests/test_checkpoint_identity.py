"""SAM2 checkpoints recognised by content and verified once, before any case.

The real files cannot be downloaded here; /work/shared/data/sam2-checkpoints holds what they
look like (sha256, sizes, every tensor's name and shape) and a real cut-off download. Layout-only
checkpoints (each tensor a broadcast view of one number: the right shapes in a few kilobytes)
stand in for files whose tensors matter but whose values do not; a randomly initialised model
stands in where a model must run (mechanics only, never quality).
"""

from __future__ import annotations

import fractions
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch

from sslmedsam2.container.weights_check import check_weights
from sslmedsam2.engines import RuntimeOptions
from sslmedsam2.engines.sam2 import Sam2Engine
from sslmedsam2.errors import WeightsError
from sslmedsam2.fewshot import identity as identity_module
from sslmedsam2.fewshot.architectures import Layout, model_layout, rank
from sslmedsam2.fewshot.checkpoints import CHECKPOINTS, build_predictor, resolve_checkpoint, verify_checkpoint
from sslmedsam2.fewshot.identity import identify_checkpoint
from sslmedsam2.fewshot.known_checkpoints import KNOWN_FILES, KnownFile
from sslmedsam2.fewshot.tffs import TFFSConfig
from sslmedsam2.manifest import sha256_of, write_manifest
from sslmedsam2.supports import find_supports

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sam2-checkpoints"
TRUNCATED = SHARED / "truncated_sam2.1_hiera_tiny.pt"
SIZES = ("tiny", "small", "base_plus", "large")

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} not present")


def shared_layout(size: str) -> Layout:
    """The tensors of the official sam2.1_hiera_<size>.pt, read from the real file once."""
    data = json.loads((SHARED / "layouts" / f"sam2.1_hiera_{size}.keys.json").read_text())
    return {name: tuple(shape) for name, shape in data.items()}


def save_layout(path: Path, layout: Layout, wrap: bool = True) -> Path:
    """A checkpoint with exactly ``layout``'s tensors and almost no bytes."""
    state = {name: torch.zeros(1).expand(*shape) if shape else torch.zeros(())
             for name, shape in layout.items()}
    torch.save({"model": state} if wrap else state, path)
    return path


def error_of(path: Path) -> str:
    with pytest.raises(WeightsError) as caught:
        identify_checkpoint(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    return message


@pytest.fixture(scope="module")
def random_tiny_state() -> dict[str, torch.Tensor]:
    """A randomly initialised SAM 2.1 tiny (its tensors do not depend on the image size)."""
    torch.manual_seed(0)
    resolved = resolve_checkpoint(None, name="tiny", allow_random=True)
    return build_predictor(resolved, hydra_overrides=["++model.image_size=64"]).state_dict()


# --- the real files: what sam2 builds would accept them -----------------------------------------

@needs_shared
@pytest.mark.parametrize("size", SIZES)
def test_sam2_builds_exactly_the_official_layouts(size):
    built = model_layout(CHECKPOINTS[size])  # the code's own (meta-device) build
    assert built == shared_layout(size)
    exact = [d.spec.name for d in rank(shared_layout(size)) if d.exact]
    assert exact[0] == size  # the 1024 px model first; tiny's tensors also fit MedSAM2 (512 px)
    assert exact == ([size, "medsam2"] if size == "tiny" else [size])


def test_meta_build_equals_a_real_build():
    """The cheap build used for identification gives the layout of sam2's real CPU build."""
    from sam2.build_sam import build_sam2

    spec = CHECKPOINTS["medsam2"]
    real = build_sam2(spec.config, ckpt_path=None, device="cpu",
                      hydra_overrides_extra=spec.hydra_overrides)
    assert model_layout(spec) == {k: tuple(v.shape) for k, v in real.state_dict().items()}


@needs_shared
def test_known_files_are_the_shared_facts():
    """The package's copy of sizes and sha256 says what the shared README says."""
    readme = (SHARED / "README.md").read_text()
    rows = re.findall(r"^\| `([^`]+)`[^|]*\| ([\d,?]+) \| `([0-9a-f]{64})`", readme, re.M)
    facts = {name: (None if size == "?" else int(size.replace(",", "")), sha)
             for name, size, sha in rows}
    assert facts == {k.filename: (k.size, k.sha256) for k in KNOWN_FILES}


# --- files that are not checkpoints: one clear line each ------------------------------------------

@needs_shared
def test_truncated_download_is_named_with_its_byte_counts(tmp_path):
    renamed = shutil.copyfile(TRUNCATED, tmp_path / "MedSAM2_latest.pt")
    assert error_of(renamed) == (
        f"{renamed}: truncated or not a checkpoint: 1,310,720 bytes, expected 156,040,129 for "
        "MedSAM2_latest.pt (an interrupted download or copy?); copy the file again")
    # under any other name, the file's own zip record says what it was cut from
    assert "1,310,720 bytes, expected 156,008,466 for sam2.1_hiera_tiny.pt" in error_of(TRUNCATED)


def test_missing_empty_text_and_folder(tmp_path):
    missing = tmp_path / "MedSAM2_latest.pt"
    assert error_of(missing) == (f"{missing}: no such file; copy the checkpoint there or give "
                                 "its path")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert error_of(empty) == f"{empty}: empty file (0 bytes), not a checkpoint; copy it again"
    text = tmp_path / "medsam2.pt"
    text.write_text("weights are on the shared drive\n")
    assert error_of(text) == (f"{text}: not a checkpoint: a text file of 32 bytes (a SAM2 "
                              "checkpoint is a PyTorch .pt archive)")
    lfs = tmp_path / "sam2.1_hiera_tiny.pt"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:7402\nsize 156008466\n")
    assert "a Git LFS pointer" in error_of(lfs) and "expected 156,008,466 bytes" in error_of(lfs)
    assert error_of(tmp_path) == f"{tmp_path}: a folder, not a checkpoint file"


def test_damaged_record_and_foreign_payload(tmp_path):
    damaged = tmp_path / "finetune.pt"
    torch.save({"model": {"x": torch.arange(1000.0)}}, damaged)
    data = bytearray(damaged.read_bytes())
    start = data.index(bytes(torch.arange(1000.0).numpy().tobytes()[:64]))
    data[start + 8] ^= 0xFF
    damaged.write_bytes(bytes(data))
    assert "fails its CRC check" in error_of(damaged)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}, "epoch": 3}, foreign)
    assert error_of(foreign) == (f"{foreign}: not a SAM2 checkpoint (no 'model' weights; it "
                                 "holds state_dict, epoch)")
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": fractions.Fraction(1, 3)}, pickled)  # unpickled, it would run code
    assert error_of(pickled) == (f"{pickled}: not a plain weights file: it pickles "
                                 "fractions.Fraction, and only tensors and plain data are read; "
                                 "save {'model': model.state_dict()}")


# --- any file by its tensors, whatever its name ---------------------------------------------------

@needs_shared
def test_layout_names_the_model_whatever_the_file_name(tmp_path):
    large = identify_checkpoint(save_layout(tmp_path / "my_sam.pt", shared_layout("large")))
    assert large.spec.name == "large" and large.official is None
    assert large.describe() == "my_sam.pt, recognised by its tensors: SAM 2.1 hiera large"
    flat = identify_checkpoint(save_layout(tmp_path / "small.bin", shared_layout("small"), False))
    assert flat.spec.name == "small"
    tiny = identify_checkpoint(save_layout(tmp_path / "finetune.pt", shared_layout("tiny")))
    assert tiny.spec.name == "tiny" and "1024 px assumed" in tiny.note
    medsam = identify_checkpoint(save_layout(tmp_path / "MedSAM2_ft.pt", shared_layout("tiny")))
    assert medsam.spec.name == "medsam2" and medsam.spec.image_size == 512
    assert identify_checkpoint(tmp_path / "finetune.pt", name="medsam2").spec.name == "medsam2"
    with pytest.raises(WeightsError, match="its tensors are a SAM 2.1 hiera large's, not the tiny"):
        identify_checkpoint(tmp_path / "my_sam.pt", name="tiny")


@needs_shared
def test_wrong_architecture_is_refused_naming_the_closest(tmp_path):
    layout = shared_layout("small")
    for name in list(layout)[5:8]:
        del layout[name]
    layout["sam_mask_decoder.iou_token.weight"] = (2, 256)
    path = save_layout(tmp_path / "sam2.1_hiera_small.pt", layout)
    assert error_of(path) == (
        f"{path}: no SAM2 model has exactly these 516 tensors; closest is SAM 2.1 hiera small "
        "(configs/sam2.1/sam2.1_hiera_s.yaml): 3 missing (image_encoder.trunk.pos_embed, "
        "image_encoder.trunk.pos_embed_window, image_encoder.trunk.patch_embed.proj.weight), "
        "1 reshaped (sam_mask_decoder.iou_token.weight [2, 256] here, [1, 256] in the model); "
        "use an unmodified SAM 2 / 2.1 or MedSAM2 checkpoint")
    sam_v1 = save_layout(tmp_path / "medsam_vit_b.pth", {
        "image_encoder.pos_embed": (1, 64, 64, 768),
        "image_encoder.patch_embed.proj.weight": (768, 3, 16, 16),
        "image_encoder.blocks.0.norm1.weight": (768,)}, wrap=False)
    assert "SAM v1 checkpoint? its keys look like segment-anything's" in error_of(sam_v1)


def test_official_bytes_are_named_official(tmp_path, monkeypatch):
    """The sha256 path, with the table pointed at a small stand-in (the real files are 150 MB+)."""
    path = tmp_path / "medsam2.pt"
    save_layout(path, model_layout(CHECKPOINTS["medsam2"]))
    stand_in = KnownFile("MedSAM2_latest.pt", "medsam2", path.stat().st_size, sha256_of(path))
    monkeypatch.setattr(identity_module, "known_files_of_size",
                        lambda size: [stand_in] if size == stand_in.size else [])
    official = identify_checkpoint(path)
    assert official.official == stand_in and official.spec.name == "medsam2"
    assert official.short() == "medsam2.pt, official (renamed MedSAM2_latest.pt), sha256 ok"
    named = shutil.copyfile(path, tmp_path / "MedSAM2_latest.pt")
    assert identify_checkpoint(named).describe() == (
        "MedSAM2_latest.pt, official, sha256 ok: MedSAM2 (SAM 2.1 hiera tiny, 512 px)")
    with pytest.raises(WeightsError, match="the medsam2 model, not tiny"):
        identify_checkpoint(named, name="tiny")
    other = KnownFile("MedSAM2_latest.pt", "medsam2", path.stat().st_size, "0" * 64)
    monkeypatch.setattr(identity_module, "known_files_of_size", lambda size: [other])
    same_size = identify_checkpoint(path)  # same size, other bytes: by its tensors, said so
    assert same_size.official is None and "not the official MedSAM2_latest.pt" in same_size.note


def test_user_named_finetune_runs_through_the_engine(tmp_path, random_tiny_state, example_dataset):
    path = tmp_path / "medsam2_finetune.pt"
    torch.save({"model": random_tiny_state}, path)
    resolved = verify_checkpoint(path)
    assert resolved.spec.name == "medsam2" and resolved.identity.official is None
    engine = Sam2Engine(find_supports(example_dataset.train_dir), resolved,
                        RuntimeOptions(device="cpu"),
                        TFFSConfig(insertions=1, max_supports=1, support_stride=4),
                        hydra_overrides=["++model.image_size=64"])
    case = example_dataset.split("test")[0]
    query = sitk.ReadImage(str(case.images["T1"]))
    segmentation = engine.segment(query, "T1", vendor=case.vendor)
    assert segmentation.mask.shape == query.GetSize()[::-1]
    assert "checkpoint=medsam2_finetune.pt, recognised by its tensors" in segmentation.detail
    loaded = engine._predictor.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in random_tiny_state.items())


# --- once per run: pseudo-label and a weights folder ---------------------------------------------

def pseudo_label(tmp_path: Path, dataset, checkpoint: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sslmedsam2", "pseudo-label", "--method", "sam2", "--checkpoint",
         str(checkpoint), "--supports", str(dataset.train_dir), "--unlabelled",
         str(dataset.test_input_dir), "--out", str(tmp_path / "out"), "-q"],
        capture_output=True, text=True, timeout=300)


@needs_shared
def test_pseudo_label_refuses_a_bad_checkpoint_once(tmp_path, example_dataset):
    truncated = shutil.copyfile(TRUNCATED, tmp_path / "MedSAM2_latest.pt")
    result = pseudo_label(tmp_path, example_dataset, truncated)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = [x for x in result.stderr.splitlines() if "ERROR" in x]
    assert line.endswith(f"{truncated}: truncated or not a checkpoint: 1,310,720 bytes, expected "
                         "156,040,129 for MedSAM2_latest.pt (an interrupted download or copy?); "
                         "copy the file again")
    assert not list((tmp_path / "out").glob("*/*.nii.gz"))
    missing = pseudo_label(tmp_path, example_dataset, tmp_path / "nowhere.pt")
    assert missing.returncode == 1 and "nowhere.pt: no such file" in missing.stderr


def fake_nnunet_model(weights: Path, sequence: str, state: dict) -> Path:
    """A model folder as nnU-Net writes it, its fold checkpoint a small PyTorch archive."""
    folder = weights / "nnunet" / sequence / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "fold_1").mkdir()  # unfinished: no checkpoint_final.pth
    (folder / "plans.json").write_text(json.dumps({"configurations": {"3d_fullres": {}}}))
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1}}))
    torch.save({"network_weights": state}, folder / "fold_0" / "checkpoint_final.pth")
    return folder


@needs_shared
def test_check_weights_reports_files_and_sequences(tmp_path, example_dataset):
    weights = tmp_path / "weights"
    support = find_supports(example_dataset.train_dir)[0]
    shutil.copytree(support.image.parent, weights / "supports" / "Vendor_A" / support.case)
    (weights / "sam2").mkdir()
    save_layout(weights / "sam2" / "medsam2.pt", shared_layout("tiny"))
    (weights / "sam2" / "README.md").write_text("MedSAM2 fine-tuned on our livers\n")
    model = fake_nnunet_model(weights, "GED4", {"w": torch.zeros(3)})
    write_manifest(weights, {})

    report = check_weights(weights)
    text = "\n".join(report.lines())
    assert not report.problems, text
    assert ("sam2/medsam2.pt (used by sam2): medsam2.pt, recognised by its tensors: MedSAM2 "
            "(SAM 2.1 hiera tiny, 512 px)") in text
    assert "fold(s) 0" in text and "fold_1 unfinished" in text and "README" not in text
    served = {s.sequence: s.engines for s in report.services}
    assert served["GED4"] == ("nnunet 3d_fullres (folds 0)", "sam2 medsam2.pt (medsam2), 1 "
                              "support(s)", "atlas, 1 support(s)")
    assert served["T1"] == served["GED4"][1:]
    cli = subprocess.run([sys.executable, "-m", "sslmedsam2", "check-weights", str(weights)],
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0 and cli.stdout.rstrip().endswith("ok"), cli.stderr

    checkpoint = model / "fold_0" / "checkpoint_final.pth"
    checkpoint.write_bytes(checkpoint.read_bytes()[:200])  # cut off: manifest and file say so
    shutil.copyfile(TRUNCATED, weights / "sam2" / "MedSAM2_latest.pt")
    cli = subprocess.run([sys.executable, "-m", "sslmedsam2", "check-weights", str(weights),
                          "--engines", "nnunet,sam2"], capture_output=True, text=True, timeout=300)
    assert cli.returncode == 1
    assert "manifest.json: BROKEN: weights folder does not match its manifest" in cli.stdout
    assert "fold_0/checkpoint_final.pth: truncated or not a checkpoint: 200 bytes" in cli.stdout
    assert ("sam2/MedSAM2_latest.pt (used by sam2): BROKEN: truncated or not a checkpoint: "
            "1,310,720 bytes, expected 156,040,129") in cli.stdout
    assert "GED4     nnunet 3d_fullres (folds 0) BROKEN; then sam2 BROKEN checkpoint" in cli.stdout
    assert "not used: another file comes first" in cli.stdout


def test_check_weights_follows_a_plain_collections_sequence(tmp_path, example_dataset):
    """Weights trained on a plain collection's T2: its supports serve T2 (atlas, average, sam2's
    support list), and GED4, which process.py does not need from them, is no problem."""
    weights = tmp_path / "weights"
    support = find_supports(example_dataset.train_dir)[0]
    (weights / "supports" / "patient01").mkdir(parents=True)
    shutil.copy(support.image, weights / "supports" / "patient01" / "T2.nii.gz")
    shutil.copy(support.mask, weights / "supports" / "patient01" / "mask_T2.nii.gz")
    fake_nnunet_model(weights, "T2", {"w": torch.zeros(3)})
    write_manifest(weights, {"models": {"T2": {}}, "engines": ["average", "nnunet", "sam2", "atlas"]})

    report = check_weights(weights)
    text = "\n".join(report.lines())
    assert not report.problems, text
    assert "supports: 1 labelled T2 case(s)" in text
    served = {s.sequence: s.engines for s in report.services}
    assert served["T2"] == ("average of nnunet and atlas, 1 support(s)", "nnunet 3d_fullres (folds 0)",
                            "atlas, 1 support(s)")
    assert len(Sam2Engine.from_weights(weights, RuntimeOptions(device="cpu")).supports) == 1

    bare = tmp_path / "bare"
    bare.mkdir()
    write_manifest(bare, {"models": {"T2": {}}})
    assert check_weights(bare).problems == ["T2: not served"]


@needs_shared
def test_the_weights_manifest_names_the_pseudo_label_checkpoint_by_content(tmp_path):
    from sslmedsam2.ssl.config import build_config
    from sslmedsam2.ssl.pipeline import pseudo_label_source

    checkpoint = save_layout(tmp_path / "medsam2_finetune.pt", shared_layout("tiny"))
    config = build_config({"data": {"train": str(tmp_path)},
                           "pseudo_labels": {"engine": "sam2", "checkpoint": str(checkpoint)}}, tmp_path)
    source = pseudo_label_source(config)
    assert source == f"sam2, {identify_checkpoint(checkpoint).describe()}"
    assert source.startswith("sam2, medsam2_finetune.pt, recognised by its tensors: ")
    atlas = build_config({"data": {"train": str(tmp_path)}}, tmp_path)
    assert pseudo_label_source(atlas) == "atlas (auto, weighted vote + intensity)"
    vote = build_config({"data": {"train": str(tmp_path)},
                         "pseudo_labels": {"atlas_intensity": False, "atlas_weighting": False}}, tmp_path)
    assert pseudo_label_source(vote) == "atlas (auto, vote)"
