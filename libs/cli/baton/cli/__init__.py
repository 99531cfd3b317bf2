"""Baton command-line interface."""
