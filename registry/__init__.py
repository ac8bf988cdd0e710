"""Signed, versioned model registry (built with the models issue)."""
