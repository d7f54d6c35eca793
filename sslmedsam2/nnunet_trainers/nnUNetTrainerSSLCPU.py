"""A short nnU-Net schedule for 2 CPU cores, found by nnU-Net through ``nnUNet_extTrainer``.

nnU-Net's stock trainer runs 1000 epochs of 250 iterations: GPU days. The semi-supervised loop
retrains several times, so demos and tests need a schedule that fits in minutes on a laptop-class
CPU. Augmentation keeps the anatomy's sides (no mirroring, small in-plane rotations: see below);
everything else (loss, network, optimiser, checkpoint format) is the stock trainer's, which is
why a model trained with it loads in any nnU-Net predictor that can find this file (``sslmedsam2.nnunet_trainers.trainer_search_path``). The small patch comes from planning with
a small VRAM target (nnU-Net's own planner keeps patch and network consistent); the loop's config
can still override epochs and iterations per round.

The module is imported by nnU-Net as a top-level module from this folder: absolute imports only.
"""

import numpy as np
import torch
from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainerSSLCPU(nnUNetTrainer):  # noqa: N801 (nnU-Net's naming convention)
    """nnUNetTrainer with 20 epochs x 10 iterations (2 validation iterations), saved at the end."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 20
        self.num_iterations_per_epoch = 10
        self.num_val_iterations_per_epoch = 2
        self.save_every = self.num_epochs

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        """Anatomy keeps its sides: no mirroring and in-plane rotations of at most 15 degrees.

        The stock trainer mirrors every axis and, on thick-slice MRI, rotates in-plane by up to
        180 degrees; a thousand epochs teach it the context that tells the liver from the spleen
        anyway. A few hundred iterations do not: on real patients (CHAOS T2-SPIR) such a model
        segmented the spleen as often as the liver. Mirroring at inference is off to match.
        """
        rotation, dummy_2d, _, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        limit = 15.0 / 180.0 * np.pi
        rotation = (max(rotation[0], -limit), min(rotation[1], limit))
        patch_size = self.configuration_manager.patch_size
        dim = len(patch_size)
        initial = get_patch_size(patch_size[-dim:], rotation, rotation, rotation, (0.85, 1.25))
        if dummy_2d:
            initial[0] = patch_size[0]
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial, None
