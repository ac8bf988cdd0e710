"""Layer 1, the foundation every layer may use: settings, errors, files, logging, hashing,
failpoints, the store layout under `var/`, the Ray runtime helpers."""
