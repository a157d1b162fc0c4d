"""Readers for on-disk dataset layouts (BAPPS folders, mesh-quality databases)."""
