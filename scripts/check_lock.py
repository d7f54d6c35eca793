#!/usr/bin/env python3
"""Check that the hash locks in requirements/ agree with pyproject.toml.

    python scripts/check_lock.py      # silent, exit 0 when they agree; else one line, exit 1

scripts/lock.sh writes the locks; scripts/setup_env.sh and the Dockerfile run this check before
they install from them, and tests/test_lock.py runs it too. Each lock must pin, with sha256
hashes, a version that every pyproject requirement of its install set accepts:

    build.lock   pip, setuptools, wheel, packaging: installed first (an old pip cannot read the
                 hashes of a constraints file; the builds below run without build isolation)
    base.lock    the dependencies (less sam2) and the build tools: the inference image
    train.lock   base + the cluster extra: the training image
    dev.lock     base + every extra: scripts/setup_env.sh (development, CI)
    sam2.lock    sam2 alone: an sdist whose setup.py imports torch, so it is built in a second pip
                 call once torch is installed, and it must stay out of the other locks
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parents[1]
SEPARATE = "sam2"
REFRESH = "refresh with scripts/lock.sh"
# The platform the locks are made for; a requirement whose marker excludes it needs no entry.
TARGET = {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
          "python_version": "3.11"}


def wanted(pyproject: dict) -> dict[str, list[Requirement]]:
    """Lock file name -> the pyproject requirements its entries must satisfy."""
    project = pyproject["project"]
    build = [Requirement(r) for r in pyproject["build-system"]["requires"]]
    deps = [Requirement(r) for r in project["dependencies"]]
    extras = {name: [Requirement(r) for r in reqs]
              for name, reqs in project.get("optional-dependencies", {}).items()}
    base = build + [r for r in deps if canonicalize_name(r.name) != SEPARATE]
    return {
        "build.lock": build,
        "base.lock": base,
        "train.lock": base + extras["cluster"],
        "dev.lock": base + [r for reqs in extras.values() for r in reqs],
        "sam2.lock": [r for r in deps if canonicalize_name(r.name) == SEPARATE],
    }


def read_lock(path: Path) -> dict[str, tuple[Version, int]]:
    """Normalised name -> (version, number of sha256 hashes) of each `name==version --hash=...`."""
    entries = {}
    for line in path.read_text().replace("\\\n", " ").splitlines():
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        pin, *options = entry.split()
        name, _, version = pin.partition("==")
        try:
            entries[canonicalize_name(name)] = (
                Version(version), sum(o.startswith("--hash=sha256:") for o in options))
        except InvalidVersion:
            raise ValueError(f"cannot read '{pin}' (not name==version)") from None
    return entries


def problems(pyproject: Path = ROOT / "pyproject.toml",
             lock_dir: Path = ROOT / "requirements") -> list[str]:
    """One 'requirements/X.lock: what disagrees' line per problem; empty when all agree."""
    found = []
    for lock, requirements in wanted(tomllib.loads(pyproject.read_text())).items():
        label = f"{lock_dir.name}/{lock}"
        try:
            locked = read_lock(lock_dir / lock)
        except FileNotFoundError:
            found.append(f"{label}: missing")
            continue
        except ValueError as error:
            found.append(f"{label}: {error}")
            continue
        for req in requirements:
            if req.marker and not req.marker.evaluate(TARGET):
                continue
            wants = f"pyproject wants {req.specifier or 'it'}"
            version, _ = locked.get(canonicalize_name(req.name), (None, 0))
            if version is None:
                found.append(f"{label}: {req.name} not locked but {wants}")
            elif not req.specifier.contains(version, prereleases=True):
                found.append(f"{label}: {req.name} locked {version} but {wants}")
        found += [f"{label}: {name}=={version} has no sha256 hash"
                  for name, (version, hashes) in locked.items() if not hashes]
        if lock != f"{SEPARATE}.lock" and SEPARATE in locked:
            found.append(f"{label}: {SEPARATE} must not be in it (it is built after torch, "
                         f"from {SEPARATE}.lock)")
    return found


def main() -> int:
    found = problems()
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        print(f"{found[0]}{more}; {REFRESH}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
