"""Layer 3, machine learning: recommenders, metrics, offline evaluation, the user simulator and
the feedback-loop forecast; pure Python over frames and arrays, no Ray, no I/O of services."""
