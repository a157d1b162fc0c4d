"""Statistics on scores: correlation with subjective data, BAPPS protocol scores."""
