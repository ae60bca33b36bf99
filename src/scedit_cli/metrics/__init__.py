"""Metrics: FID, controllability, training memory and step time."""
