"""Image registration for the atlas engine: SimpleITK's affine (and B-spline) and ANTs' SyN."""
