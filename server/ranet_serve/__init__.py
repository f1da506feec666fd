"""RANet Serve: a production inference server for RANet with dynamic early exit."""

__version__ = "0.1.0"
