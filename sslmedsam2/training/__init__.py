"""Supervised nnU-Net v2 training into the weights layout, and what the terminal shows meanwhile."""
