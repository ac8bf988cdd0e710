"""Layer 5, analytics over the lake: the typed snapshot, its per-family components, and the
cycle the scheduler runs (probe, snapshot, quarantine, gauges)."""
