"""Run router (triggers -> runs -> steps -> results) and the worker runtime."""
