"""The hash locks in requirements/ against pyproject.toml, and the installs that use them.

scripts/lock.sh writes the locks, scripts/check_lock.py checks them (setup_env.sh and the
Dockerfile run it before installing). These tests read the files only: no network, no install.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ROOT / "requirements"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _load_check_lock():
    spec = importlib.util.spec_from_file_location("check_lock", ROOT / "scripts" / "check_lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_lock = _load_check_lock()


def pinned(name: str) -> str:
    """The version pyproject pins `name` to with ==."""
    for entry in PYPROJECT["project"]["dependencies"]:
        req = Requirement(entry)
        if canonicalize_name(req.name) == name:
            (spec,) = req.specifier
            assert spec.operator == "==", entry
            return spec.version
    raise AssertionError(f"{name} is not a dependency in pyproject.toml")


def test_the_locks_agree_with_pyproject():
    assert check_lock.problems() == []


@pytest.mark.parametrize("group", ["dependencies", *PYPROJECT["project"]["optional-dependencies"]])
def test_every_pyproject_requirement_is_locked_at_a_version_it_accepts(group):
    project = PYPROJECT["project"]
    entries = project.get("optional-dependencies", {}).get(group, project["dependencies"])
    # dev.lock holds every extra, sam2.lock the one dependency kept out of the others.
    locked = {**check_lock.read_lock(LOCKS / "dev.lock"), **check_lock.read_lock(LOCKS / "sam2.lock")}
    for req in map(Requirement, entries):
        version, _ = locked[canonicalize_name(req.name)]
        assert req.specifier.contains(version, prereleases=True), f"{req}: locked {version}"


@pytest.mark.parametrize("lock", sorted(p.name for p in LOCKS.glob("*.lock")))
def test_every_locked_entry_has_a_sha256_hash(lock):
    entries = check_lock.read_lock(LOCKS / lock)
    assert entries
    assert all(hashes for _, hashes in entries.values()), [n for n, (_, h) in entries.items() if not h]


def test_sam2_and_torch_are_locked_at_pyprojects_pins():
    assert str(check_lock.read_lock(LOCKS / "sam2.lock")["sam2"][0]) == pinned("sam2")
    for lock in ("base.lock", "train.lock", "dev.lock"):
        entries = check_lock.read_lock(LOCKS / lock)
        assert str(entries["torch"][0]) == pinned("torch"), lock
        assert "sam2" not in entries, f"{lock}: sam2 must be built after torch, in a second pip call"


def _copy_with(tmp_path: Path, old: str, new: str) -> Path:
    """A copy of the repository's pyproject.toml, check_lock.py and locks, one string replaced."""
    text = (ROOT / "pyproject.toml").read_text()
    assert old in text
    (tmp_path / "pyproject.toml").write_text(text.replace(old, new))
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "check_lock.py", tmp_path / "scripts")
    shutil.copytree(LOCKS, tmp_path / "requirements")
    return tmp_path


def test_a_mismatched_pyproject_is_reported(tmp_path):
    copy = _copy_with(tmp_path, '"sam2==1.1.0"', '"sam2==1.0.0", "numpy>=99"')
    found = check_lock.problems(copy / "pyproject.toml", copy / "requirements")
    assert "requirements/sam2.lock: sam2 locked 1.1.0 but pyproject wants ==1.0.0" in found
    assert any(re.fullmatch(r"requirements/base\.lock: numpy locked \S+ but pyproject wants >=99", p)
               for p in found), found


def test_the_command_line_gives_one_line_naming_the_lock_and_the_fix(tmp_path):
    copy = _copy_with(tmp_path, '"tqdm==4.70.1",', '"tqdm==4.70.1", "no-such-package==1.0",')
    result = subprocess.run([sys.executable, str(copy / "scripts" / "check_lock.py")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert re.fullmatch(r"requirements/\w+\.lock: no-such-package not locked but pyproject wants"
                        r" ==1\.0 \(and 2 more\); refresh with scripts/lock\.sh\n", result.stderr)


def test_a_lock_without_hashes_or_with_sam2_is_reported(tmp_path):
    copy = _copy_with(tmp_path, "", "")
    base = copy / "requirements" / "base.lock"
    base.write_text(re.sub(r"(?m)^[ \t]+--hash=\S+( \\)?\n", "", base.read_text())
                    + "sam2==1.1.0 --hash=sha256:00\n")
    found = check_lock.problems(copy / "pyproject.toml", copy / "requirements")
    assert "requirements/base.lock: torch==2.14.1 has no sha256 hash" in found
    assert any(p.startswith("requirements/base.lock: sam2 must not be in it") for p in found)
    (copy / "requirements" / "train.lock").unlink()
    assert "requirements/train.lock: missing" in check_lock.problems(
        copy / "pyproject.toml", copy / "requirements")


@pytest.mark.parametrize("path", ["Dockerfile", "Dockerfile.train", "scripts/setup_env.sh"])
def test_every_install_from_an_index_requires_hashes(path):
    """Only the project itself (a local directory, which pip cannot hash) is installed without."""
    text = (ROOT / path).read_text().replace("\\\n", " ")
    installs = re.findall(r"pip install [^&\n]*", text)
    assert installs
    for command in installs:
        if not re.search(r" (-e )?\.\s*$", command):
            assert "--require-hashes" in command, f"{path}: {command}"


@pytest.mark.parametrize("script", ["scripts/lock.sh", "scripts/setup_env.sh", "scripts/check_lock.py"])
def test_lock_scripts_are_executable(script):
    path = ROOT / script
    assert path.stat().st_mode & 0o100, f"chmod +x {script}"
    if path.suffix == ".sh":
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
