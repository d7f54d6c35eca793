"""Custom nnU-Net trainers shipped with sslmedsam2.

nnU-Net finds trainers outside its own package through the ``nnUNet_extTrainer`` environment
variable (a path list). Training and the nnU-Net engine point it at this folder, so models trained
with these trainers load wherever sslmedsam2 is installed.
"""

from pathlib import Path

TRAINER_DIR = Path(__file__).resolve().parent


def trainer_search_path(existing: str | None) -> str:
    """``nnUNet_extTrainer`` with this folder appended to whatever the user already set."""
    import os

    parts = [p for p in (existing or "").split(os.pathsep) if p]
    if str(TRAINER_DIR) not in parts:
        parts.append(str(TRAINER_DIR))
    return os.pathsep.join(parts)
