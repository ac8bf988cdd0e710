"""Layer 6, scheduling: when to retrain and when to run the analytics cycle, runs recorded
under `var/schedule/`; the scheduler job and `reco status` use it."""
