"""``python -m baton.api.main``: serve the API with uvicorn, configured from the environment (``BATON_*``)."""

from __future__ import annotations

import logging

import uvicorn

from baton.api.app import create_app
from baton.api.settings import ApiSettings


def main() -> None:
    """Load settings once, build the app and serve it until interrupted."""
    settings = ApiSettings()  # database_url and the rest come from the environment
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        proxy_headers=True,
    )


if __name__ == "__main__":
    main()
