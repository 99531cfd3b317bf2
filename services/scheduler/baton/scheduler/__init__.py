"""The scheduler service: durable timers and cron schedules over NATS and PostgreSQL."""
