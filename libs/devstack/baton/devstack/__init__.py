"""Embedded development stack: real nats-server and PostgreSQL from PyPI packages, supervised."""
