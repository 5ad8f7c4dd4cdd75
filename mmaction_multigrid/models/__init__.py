"""Model pieces: sub-batch BN, the model check, the data preprocessor."""
