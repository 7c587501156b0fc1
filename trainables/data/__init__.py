"""Data: toy sets with exact scores, the labeled split and half-labeled batches."""
