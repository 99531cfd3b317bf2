"""Handlers used by the example pipelines in ``examples/``."""
