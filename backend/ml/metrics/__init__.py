"""Pure metric functions; each docstring gives the definition and its source."""
