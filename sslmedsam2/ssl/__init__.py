"""The semi-supervised loop (FSL-nnUNet): ``config`` (the TOML file), ``dataset`` (pseudo-label
filtering, ignore label), ``loop`` (rounds, convergence, resume), ``pipeline`` (run folder,
report, weights export with manifest)."""
