"""The scheduler service: cron schedules (and durable timers) firing triggers over NATS."""
