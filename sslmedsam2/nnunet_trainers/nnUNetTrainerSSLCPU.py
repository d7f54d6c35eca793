"""A short nnU-Net schedule for 2 CPU cores, found by nnU-Net through ``nnUNet_extTrainer``.

nnU-Net's stock trainer runs 1000 epochs of 250 iterations: GPU days. The semi-supervised loop
retrains several times, so demos and tests need a schedule that fits in minutes on a laptop-class
CPU. Everything else (loss, augmentation, network, optimiser, checkpoint format) is the stock
trainer's, which is why a model trained with it loads in any nnU-Net predictor that can find this
file (``sslmedsam2.nnunet_trainers.trainer_search_path``). The small patch comes from planning with
a small VRAM target (nnU-Net's own planner keeps patch and network consistent); the loop's config
can still override epochs and iterations per round.

The module is imported by nnU-Net as a top-level module from this folder: absolute imports only.
"""

import torch
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
