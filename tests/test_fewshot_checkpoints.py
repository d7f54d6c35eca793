"""Local checkpoints only: clear errors for missing, corrupt and mismatched files; no download."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sslmedsam2.errors import UsageError, WeightsError
from sslmedsam2.fewshot.checkpoints import (
    CHECKPOINTS,
    build_predictor,
    load_state_dict,
    resolve_checkpoint,
    spec_for_file,
)


def test_specs_match_the_official_files_and_medsam2():
    assert CHECKPOINTS["medsam2"].image_size == 512
    assert CHECKPOINTS["medsam2"].hydra_overrides == ["++model.image_size=512"]
    assert CHECKPOINTS["base_plus"].config == "configs/sam2.1/sam2.1_hiera_b+.yaml"
    assert CHECKPOINTS["large"].hydra_overrides == []
    assert spec_for_file("x/MedSAM2_latest.pt").name == "medsam2"
    assert spec_for_file("sam2.1_hiera_small.pt").name == "small"


def test_missing_folder_or_file_is_a_weights_error(tmp_path: Path):
    with pytest.raises(WeightsError, match="never downloaded"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(WeightsError, match="sam2.1_hiera_large.pt"):
        resolve_checkpoint(tmp_path, name="large")
    with pytest.raises(WeightsError, match="not found"):
        resolve_checkpoint(checkpoint=tmp_path / "sam2.1_hiera_tiny.pt")


def test_unknown_name_and_unknown_file_name(tmp_path: Path):
    with pytest.raises(UsageError, match="huge"):
        resolve_checkpoint(tmp_path, name="huge")
    other = tmp_path / "my_model.pt"
    other.write_bytes(b"x")
    with pytest.raises(WeightsError, match="my_model.pt"):
        resolve_checkpoint(checkpoint=other)


def test_file_found_by_name_and_preferred_medsam2(tmp_path: Path):
    folder = tmp_path / "sam2"
    folder.mkdir()
    for name in ("sam2.1_hiera_tiny.pt", "MedSAM2_latest.pt"):
        (folder / name).write_bytes(b"x")
    assert resolve_checkpoint(tmp_path).spec.name == "medsam2"
    assert resolve_checkpoint(tmp_path, name="tiny").path == folder / "sam2.1_hiera_tiny.pt"


def test_corrupt_and_foreign_files_are_weights_errors(tmp_path: Path):
    corrupt = tmp_path / "sam2.1_hiera_tiny.pt"
    corrupt.write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(WeightsError, match="corrupt"):
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
    loaded = build_predictor(resolve_checkpoint(checkpoint=path), hydra_overrides=overrides)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(WeightsError, match="do not fit the small model"):
        build_predictor(resolve_checkpoint(checkpoint=path, name="small"), hydra_overrides=overrides)
    partial = dict(model.state_dict())
    partial.pop(next(iter(partial)))
    torch.save({"model": partial}, path)
    with pytest.raises(WeightsError, match="1 missing"):
        build_predictor(resolve_checkpoint(checkpoint=path), hydra_overrides=overrides)
