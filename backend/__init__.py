"""The importable core of the platform."""
