"""Projections: pure reducers folding events into read models."""
