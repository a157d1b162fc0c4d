"""Neural parts: backbone feature taps, per-layer heads, and the perceptual distance."""
