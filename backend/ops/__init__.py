"""Layer 8, operations tooling: the `reco` CLI, the one-machine platform, the local Ray head,
the embedded broker and its TLS front, the demo recorder. The only layer that imports `jobs`."""
