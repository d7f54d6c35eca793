"""Volume reading with validation, and mask writing that copies geometry only.

Every volume that enters the package goes through :func:`read_volume`, so a bad file is rejected
once, with a message naming it. Every mask leaves through :func:`write_mask`, which builds a fresh
image (no header fields copied from the input but the grid) and renames it into place atomically.
"""

from __future__ import annotations

import gzip
import os
import re
import tempfile
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sslmedsam2.errors import InputError

VOLUME_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")


def volume_suffix(path: Path | str) -> str | None:
    """The supported volume suffix of ``path`` (``.nii.gz`` counts as one), or None."""
    name = Path(path).name.lower()
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), None)


def volume_stem(path: Path | str) -> str:
    """File name without its volume suffix: ``GED4.nii.gz`` -> ``GED4``."""
    name = Path(path).name
    suffix = volume_suffix(path)
    return name[: -len(suffix)] if suffix else Path(path).stem


def is_volume_file(path: Path) -> bool:
    return path.is_file() and volume_suffix(path) is not None and not path.name.startswith(".")


def read_volume(path: Path | str) -> sitk.Image:
    """Read a 3D scalar volume, rejecting anything a segmenter cannot use.

    Raises :class:`InputError` for unreadable files, 2D/4D/vector images, empty images,
    non-finite voxels and constant images.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty (0 bytes)")
    if volume_suffix(path) in (".nii", ".nii.gz"):
        check_nifti_complete(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(path, f"cannot be read as an image ({itk_reason(str(exc))})") from None
    check_volume(image, path)
    return image


def itk_reason(message: str) -> str:
    """The informative part of an ITK exception (its last lines, without source locations)."""
    if "Unable to determine ImageIO reader" in message:
        return "not a recognised image format"
    lines = [re.sub(r"^(ITK ERROR: )?\w+\(0x[0-9a-f]+\): ", "", line.strip())
             for line in message.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception thrown", "Reason:"))]
    return (useful[-1] if useful else "unknown reason")[:200]


def check_nifti_complete(path: Path) -> None:
    """Catch what ITK's NIfTI reader hides: it zero-fills a truncated file and turns NaN into 0."""
    import nibabel as nib

    try:
        nifti = nib.load(str(path))
        header = nifti.header
        shape = header.get_data_shape()
        expected = int(header.get_data_offset()) + int(np.prod(shape)) * header.get_data_dtype().itemsize
    except Exception as exc:  # nibabel raises many types for a bad header
        raise InputError(path, f"cannot be read as NIfTI ({str(exc)[:160]})") from None
    if 0 in shape:
        raise InputError(path, f"image has no voxels (shape {shape})")
    if len(shape) == 5 and shape[3] == 1 and shape[4] > 1:  # NIfTI's encoding of vector voxels
        raise InputError(path, f"vector image with {shape[4]} components; "
                         "expected one scalar value per voxel")
    if len(shape) > 3 and int(np.prod(shape[3:])) > 1:
        # ITK would present the extra dimension as vector components, which misleads the user
        raise InputError(path, f"{len(shape)}D image of shape {shape}; expected a 3D volume")
    if _gzip_trailer_size(path) == expected % 2**32:
        present = expected  # a complete gzip stream states its length: no need to inflate it
    else:
        present = _nifti_bytes_present(path)
    if present < expected:
        raise InputError(path, f"truncated: {present} of {expected} bytes present")
    if np.issubdtype(header.get_data_dtype(), np.floating):
        bad = int(np.size(nifti.dataobj) - np.isfinite(np.asanyarray(nifti.dataobj)).sum())
        if bad:
            raise InputError(path, f"{bad} voxels are NaN or infinite")


def _gzip_trailer_size(path: Path) -> int | None:
    """The uncompressed size (mod 2**32) a gzip file records in its last four bytes."""
    if volume_suffix(path) != ".nii.gz" or path.stat().st_size < 18:
        return None
    with path.open("rb") as handle:
        handle.seek(-4, os.SEEK_END)
        return int.from_bytes(handle.read(4), "little")


def _nifti_bytes_present(path: Path) -> int:
    if volume_suffix(path) == ".nii":
        return path.stat().st_size
    present = 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(1 << 22):
                present += len(chunk)
    except (EOFError, OSError, zlib.error):
        raise InputError(path, f"truncated or corrupt gzip stream ({present} bytes readable)") from None
    return present


def check_volume(image: sitk.Image, path: Path | str) -> None:
    """Validate an already-read image; see :func:`read_volume`."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            path, f"vector image with {image.GetNumberOfComponentsPerPixel()} components; "
            "expected one scalar value per voxel")
    dim = image.GetDimension()
    size = image.GetSize()
    if dim != 3:
        raise InputError(path, f"{dim}D image of size {size}; expected a 3D volume")
    if min(size) == 0:
        raise InputError(path, f"image has no voxels (size {size})")
    if size[2] == 1:
        raise InputError(path, f"single-slice image of size {size}; expected a 3D volume")
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int(np.size(array) - np.isfinite(array).sum())
        raise InputError(path, f"{bad} voxels are NaN or infinite")
    if array.min() == array.max():
        raise InputError(path, f"image is constant (every voxel = {array.flat[0]})")


def volume_array(image: sitk.Image) -> np.ndarray:
    """Voxels as float32 in SimpleITK's (z, y, x) order."""
    return sitk.GetArrayFromImage(image).astype(np.float32, copy=False)


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-5) -> bool:
    """True when two images share size, spacing, origin and direction."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol)
    )


def image_on_grid(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """An image of ``array`` on the reference grid, carrying no other header field of the reference."""
    expected = tuple(reversed(reference.GetSize()))
    if array.shape != expected:
        raise ValueError(f"array shape {array.shape} does not match reference grid {expected} (z, y, x)")
    out = sitk.GetImageFromArray(array)
    out.SetSpacing(reference.GetSpacing())
    out.SetOrigin(reference.GetOrigin())
    out.SetDirection(reference.GetDirection())
    return out


def mask_image(mask: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """A uint8 0/1 image on the reference grid."""
    return image_on_grid((np.asarray(mask) > 0).astype(np.uint8), reference)


def write_image_atomic(image: sitk.Image, path: Path | str, compress: bool = True) -> Path:
    """Write to a hidden temporary name in the target folder, then rename into place.

    A crash mid-write leaves only a dot-file with a ``.partial`` marker, never a file that looks
    complete. ``.mhd`` headers are written beside their raw data, which is renamed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = volume_suffix(path) or path.suffix
    fd, tmp_name = tempfile.mkstemp(prefix=f".{volume_stem(path)}.", suffix=f".partial{suffix}",
                                    dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        sitk.WriteImage(image, str(tmp), useCompression=compress)
        if suffix == ".mhd":
            _finalise_mhd(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        for leftover in (tmp, tmp.with_suffix(".raw"), tmp.with_suffix(".zraw")):
            leftover.unlink(missing_ok=True)
    return path


def _finalise_mhd(tmp: Path, path: Path) -> None:
    """Rename the data file next to its final header and point the header at it."""
    header = tmp.read_text()
    for data_suffix in (".zraw", ".raw"):
        data = tmp.with_suffix(data_suffix)
        if data.exists():
            final_data = path.with_suffix(data_suffix)
            os.replace(data, final_data)
            header = header.replace(data.name, final_data.name)
    tmp_header = tmp.with_name(tmp.name + ".hdr")
    tmp_header.write_text(header)
    os.replace(tmp_header, path)


def write_text_atomic(text: str, path: Path | str) -> Path:
    """A text file written under a hidden temporary name, then renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def write_mask(mask: np.ndarray, reference: sitk.Image, path: Path | str) -> Path:
    """Write a 0/1 uint8 mask on ``reference``'s grid, atomically."""
    return write_image_atomic(mask_image(mask, reference), path)


def write_map(values: np.ndarray, reference: sitk.Image, path: Path | str) -> Path:
    """Write a float32 map (probability, uncertainty) on ``reference``'s grid, atomically."""
    return write_image_atomic(image_on_grid(np.asarray(values, np.float32), reference), path)
