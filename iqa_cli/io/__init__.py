"""Input/output: image files, the patch grid, and the HDF5 patch store."""
