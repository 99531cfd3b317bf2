"""``python -m baton.runner.main``: start one runner replica with settings from the environment."""

from __future__ import annotations

from baton.events.service_main import configure_logging, run_until_signalled
from baton.runner.service import RunnerService
from baton.runner.settings import RunnerSettings


def main() -> None:
    """Load settings once, then serve until SIGINT/SIGTERM."""
    settings = RunnerSettings()  # database_url comes from the environment
    configure_logging(settings.log_level)
    run_until_signalled(RunnerService(settings).run)


if __name__ == "__main__":
    main()
