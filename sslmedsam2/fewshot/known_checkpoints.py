"""What SAM2 checkpoints can be, as plain data: the models sam2 builds and the official files.

Pure data (no torch), so listing commands and error messages need no model. The sha256 and sizes
of the official files are the published facts (bowang-lab for MedSAM2, facebookresearch/sam2 for
SAM 2.1); a size is None where no trustworthy figure was found. A file is recognised by its bytes
(size, then sha256) or, for any other file, by its tensors (``fewshot.architectures``), never by
its name alone.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CheckpointSpec:
    """A model sam2 builds: config and image size; ``filename`` is its official file's name."""

    name: str
    filename: str
    config: str
    image_size: int
    title: str

    @property
    def hydra_overrides(self) -> list[str]:
        """Overrides for the sam2 builders: only a non-default image size needs one."""
        return [] if self.image_size == 1024 else [f"++model.image_size={self.image_size}"]


@dataclass(frozen=True)
class KnownFile:
    """An official checkpoint file: its bytes and sha256, and the spec that builds its model."""

    filename: str
    spec: str
    size: int | None
    sha256: str


def _sam2(version: str, size: str, short: str) -> CheckpointSpec:
    prefix = "sam2.1" if version == "2.1" else "sam2"
    return CheckpointSpec(
        name=size if version == "2.1" else f"sam2_{size}",
        filename=f"{prefix}_hiera_{size}.pt",
        config=f"configs/{prefix}/{prefix}_hiera_{short}.yaml",
        image_size=1024,
        title=f"SAM {version} hiera {size}")


_SIZES = (("tiny", "t"), ("small", "s"), ("base_plus", "b+"), ("large", "l"))

#: Every model a checkpoint may hold, in the order a weights folder's files are preferred:
#: MedSAM2 first (the paper's model), then SAM 2.1, then SAM 2 (sam2 1.1.0 builds both).
SPECS: tuple[CheckpointSpec, ...] = (
    CheckpointSpec("medsam2", "MedSAM2_latest.pt", "configs/sam2.1/sam2.1_hiera_t.yaml", 512,
                   "MedSAM2 (SAM 2.1 hiera tiny, 512 px)"),
    *(_sam2("2.1", size, short) for size, short in _SIZES),
    *(_sam2("2", size, short) for size, short in _SIZES),
)

#: The official files (sizes and sha256 from /work/shared/data/sam2-checkpoints/README.md).
KNOWN_FILES: tuple[KnownFile, ...] = (
    KnownFile("MedSAM2_latest.pt", "medsam2", 156_040_129,
              "c92743b99f00d078bf32a3afcc38aaa9faf1c1692dffe3eaa7a90938c1991060"),
    KnownFile("sam2.1_hiera_tiny.pt", "tiny", 156_008_466,
              "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69"),
    KnownFile("sam2.1_hiera_small.pt", "small", None,
              "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38"),
    KnownFile("sam2.1_hiera_base_plus.pt", "base_plus", None,
              "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5"),
    KnownFile("sam2.1_hiera_large.pt", "large", 898_083_611,
              "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318"),
)


def spec_by_name(name: str) -> CheckpointSpec | None:
    """The spec called ``name`` (``medsam2``, ``tiny`` ... ``sam2_large``), case-insensitive."""
    return next((s for s in SPECS if s.name == name.lower()), None)


def known_file_named(filename: str) -> KnownFile | None:
    """The official file with this exact name (case-insensitive), if any."""
    return next((k for k in KNOWN_FILES if k.filename.lower() == filename.lower()), None)


def known_files_of_size(size: int) -> list[KnownFile]:
    """Official files of exactly ``size`` bytes: the only ones worth hashing a file for."""
    return [k for k in KNOWN_FILES if k.size == size]
