"""SSL-MedSAM2: semi-supervised liver segmentation in MRI (SAM2 few-shot pseudo labels + nnU-Net v2).

Modules: ``io`` (volumes in, masks out), ``layouts`` (CARE / Grand Challenge / plain inputs),
``engines`` (nnU-Net, SAM2 few-shot and atlas), ``inference`` (the container's job), ``fewshot``
(TFFS-MedSAM2), ``atlas`` / ``pseudo_label`` (round-0 pseudo labels), ``training`` (nnU-Net
training), ``ssl`` (the semi-supervised loop), ``manifest`` (weights checksums), ``metrics`` /
``evaluation`` (challenge metrics), ``example`` (synthetic data), ``montage`` (pictures), ``cli``
(``sslmedsam2 <command>``).
"""

__version__ = "0.1.0"
