"""Serving on Ray Serve. The logic lives in plain classes, unit-tested without Ray (ingress,
variant, state, recolog, coalesce, leases, router, auth, metrics); `deployments` wraps each
in a Serve deployment, `api` is the HTTP API, `schemas` its models, `builder` the app."""
