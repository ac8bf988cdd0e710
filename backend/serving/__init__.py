"""Serving on Ray Serve. Logic lives in plain classes (unit-tested without Ray); the Serve
deployments that wrap them come with the serving issue."""
