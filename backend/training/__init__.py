"""Layer 5, training: the retrain pipeline (read the lake, quarantine spam, fit, evaluate,
forecast, register, gate, promote) shared by the retrain job, `reco train` and `reco evaluate`."""
