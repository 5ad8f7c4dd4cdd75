"""Data: the dataset wrapper, the short-cycle batch sampler, collate,
pipeline rewrites, transforms."""
