"""Data: in-memory datasets, corruptions, preprocessing, input pipelines."""
