"""Registration-based label propagation for the atlas engine: SimpleITK's affine (and B-spline)
and ANTs' SyN warps of support masks, fused into one pseudo label."""
