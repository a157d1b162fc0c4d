"""Readers for on-disk dataset layouts: the standard image-quality databases (one module per
layout, all returning ``table.QualityTable``; ``formats.read_database`` is the entry point),
their HDF5 image cache (``cache``), BAPPS folders and mesh-quality databases."""
