"""``python -m baton.monitor.main``: start one monitor replica with settings from the environment."""

from __future__ import annotations

from baton.events.service_main import configure_logging, run_until_signalled
from baton.monitor.service import MonitorService
from baton.monitor.settings import MonitorSettings


def main() -> None:
    """Load settings once, then serve until SIGINT/SIGTERM."""
    settings = MonitorSettings()  # database_url comes from the environment
    configure_logging(settings.log_level)
    run_until_signalled(MonitorService(settings).run)


if __name__ == "__main__":
    main()
