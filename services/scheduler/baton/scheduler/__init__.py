"""Scheduler service: durable timers (and, later, cron schedules) over NATS and PostgreSQL."""
