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
- ``checkpoints``: local SAM2 / MedSAM2 checkpoints, never downloaded.
- ``costs``: seconds per encoded and per tracked slice on this device, for the time budget.
"""
