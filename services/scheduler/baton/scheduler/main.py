"""``python -m baton.scheduler.main``: start one scheduler replica with settings from the environment."""

from __future__ import annotations

from baton.events.service_main import configure_logging, run_until_signalled
from baton.scheduler.service import SchedulerService
from baton.scheduler.settings import SchedulerSettings


def main() -> None:
    """Load settings once, then serve until SIGINT/SIGTERM."""
    settings = SchedulerSettings()  # database_url comes from the environment
    configure_logging(settings.log_level)
    run_until_signalled(SchedulerService(settings).run)


if __name__ == "__main__":
    main()
