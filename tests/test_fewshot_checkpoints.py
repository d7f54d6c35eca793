"""Local checkpoints only: found in a weights folder in preference order, verified, clear errors
for missing, corrupt and mismatched files; no download (recognition: test_checkpoint_identity)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sslmedsam2.errors import UsageError, WeightsError
from sslmedsam2.fewshot.checkpoints import (
    CHECKPOINTS,
    CheckpointNotFound,
    ResolvedCheckpoint,
    build_predictor,
    checkpoint_files,
    load_state_dict,
    resolve_checkpoint,
    spec_named,
)


def test_specs_match_the_official_files_and_medsam2():
    assert CHECKPOINTS["medsam2"].image_size == 512
    assert CHECKPOINTS["medsam2"].hydra_overrides == ["++model.image_size=512"]
    assert CHECKPOINTS["base_plus"].config == "configs/sam2.1/sam2.1_hiera_b+.yaml"
    assert CHECKPOINTS["large"].hydra_overrides == []
    assert CHECKPOINTS["sam2_tiny"].config == "configs/sam2/sam2_hiera_t.yaml"
    assert list(CHECKPOINTS)[0] == "medsam2"  # the paper's model is preferred
    assert spec_named("Small").filename == "sam2.1_hiera_small.pt"


def test_missing_folder_or_file_is_a_weights_error(tmp_path: Path):
    with pytest.raises(CheckpointNotFound, match="never downloaded"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(CheckpointNotFound, match="sam2.1_hiera_large.pt"):
        resolve_checkpoint(tmp_path, name="large")
    with pytest.raises(WeightsError, match="no such file"):
        resolve_checkpoint(checkpoint=tmp_path / "sam2.1_hiera_tiny.pt")


def test_unknown_name_and_unusable_file(tmp_path: Path):
    with pytest.raises(UsageError, match="huge"):
        resolve_checkpoint(tmp_path, name="huge")
    other = tmp_path / "my_model.pt"
    other.write_bytes(b"x")
    with pytest.raises(WeightsError, match="my_model.pt: not a checkpoint"):
        resolve_checkpoint(checkpoint=other)


def test_folder_files_in_preference_order(tmp_path: Path):
    folder = tmp_path / "sam2"
    folder.mkdir()
    for name in ("a_finetune.pt", "sam2.1_hiera_tiny.pt", "MedSAM2_latest.pt", "README.md",
                 "notes.txt", "sam2.1_hiera_t512.yaml", ".partial.pt"):
        (folder / name).write_bytes(b"x")
    assert [p.name for p in checkpoint_files(tmp_path)] == [
        "MedSAM2_latest.pt", "sam2.1_hiera_tiny.pt", "a_finetune.pt"]
    with pytest.raises(WeightsError, match="MedSAM2_latest.pt: not a checkpoint"):
        resolve_checkpoint(tmp_path)  # the first is verified, never skipped for the next
    with pytest.raises(WeightsError, match="sam2.1_hiera_tiny.pt: not a checkpoint"):
        resolve_checkpoint(tmp_path, name="tiny")


def test_corrupt_and_foreign_files_are_weights_errors(tmp_path: Path):
    corrupt = tmp_path / "sam2.1_hiera_tiny.pt"
    corrupt.write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(WeightsError, match="not a checkpoint: a text file"):
        load_state_dict(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(WeightsError, match="no 'model'"):
        load_state_dict(foreign)


def test_random_model_only_when_asked(tmp_path: Path):
    resolved = resolve_checkpoint(tmp_path, name="small", allow_random=True)
    assert resolved.path is None and resolved.spec.name == "small"


def test_round_trip_and_mismatched_model(tmp_path: Path):
    overrides = ["++model.image_size=64"]
    torch.manual_seed(0)
    model = build_predictor(resolve_checkpoint(tmp_path, allow_random=True), hydra_overrides=overrides)
    assert model.fill_hole_area == 0
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": model.state_dict()}, path)
    resolved = resolve_checkpoint(checkpoint=path)
    assert resolved.spec.name == "tiny" and resolved.identity.note == ""  # its name breaks the tie
    loaded = build_predictor(resolved, hydra_overrides=overrides)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(WeightsError, match="its tensors are a SAM 2.1 hiera tiny's, not the small"):
        resolve_checkpoint(checkpoint=path, name="small")
    unverified = ResolvedCheckpoint(CHECKPOINTS["small"], path)  # the loader still checks
    with pytest.raises(WeightsError, match="do not fit the small model"):
        build_predictor(unverified, hydra_overrides=overrides)
    partial = dict(model.state_dict())
    partial.pop(next(iter(partial)))
    torch.save({"model": partial}, path)
    with pytest.raises(WeightsError, match="closest is SAM 2.1 hiera tiny .*: 1 missing"):
        resolve_checkpoint(checkpoint=path)
    with pytest.raises(WeightsError, match="1 missing, 0 unexpected"):
        build_predictor(ResolvedCheckpoint(CHECKPOINTS["tiny"], path), hydra_overrides=overrides)
