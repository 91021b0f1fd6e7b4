"""geofm: satellite image time series -> Clay embeddings -> search, change detection, heads."""

__version__ = "0.1.0"
