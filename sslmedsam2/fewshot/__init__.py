"""TFFS-MedSAM2: training-free few-shot liver segmentation with the SAM2 video predictor.

A query volume is segmented by inserting whole labelled support volumes into its slice sequence
("random whole insert"), prompting SAM2 with the support masks and propagating through the query.
Modules, one job each:

- ``preprocess``: volume -> normalised model frames (and logits back to the volume's array order).
- ``videos``: the whole-insert plan: frame order, prompted frames, insertion positions.
- ``propagation``: an in-memory SAM2 inference state, the exact encoder and prompt caches,
  propagation.
- ``cache``: the byte-bounded least-recently-used store that keeps support caches across queries.
- ``tffs``: the per-query algorithm and its configuration.
- ``checkpoints``: local SAM2 / MedSAM2 checkpoints found, verified and loaded, never downloaded.
- ``identity``: what a checkpoint file holds, by content: official bytes (sha256) or its tensors.
- ``known_checkpoints``: the models sam2 builds and the official files' sizes and sha256 (data).
- ``checkpoint_file``: a checkpoint's container checked before unpickling (missing, cut off...).
- ``architectures``: tensor layouts of sam2's configs, and how a file's layout differs from them.
- ``costs``: seconds per encoded and per tracked slice on this device, for the time budget.
"""
