"""Baton event library: envelope, schemas, store, projections, bus helpers."""
