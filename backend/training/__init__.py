"""Layer 5, training: the training set of the lake and offline evaluation on it (`dataset`,
shared by the retrain pipeline and `reco evaluate`), the retrain pipeline (fit, evaluate,
forecast, register, gate, promote: `retrain`) and what it reports (`result`)."""
