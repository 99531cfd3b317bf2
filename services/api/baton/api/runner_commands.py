"""Operator commands to the runner: NATS request/reply on ``<prefix>.cmd.<tenant>.<verb>``.

The runner answers with a ``CommandReply`` after it appended the command's events; the
API turns that verdict into the HTTP status. No answer in time (no runner running, or
NATS down) is a 503 the client may retry: commands are idempotent.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import HTTPException, status
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from pydantic import BaseModel, ValidationError

from baton.api.dependencies import ApiResources, wait_for_read_models
from baton.events.commands import Command, CommandReply

log = logging.getLogger(__name__)

COMMAND_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"description": "Unknown in this tenant."},
    409: {"description": "Not allowed in the current state (the message says why)."},
    503: {"description": "No runner answered in time; the command is idempotent, so retry."},
}


class CommandResult(BaseModel):
    """The runner's verdict on a command: what it did, and any ids it created."""

    status: int
    message: str
    data: dict[str, Any]


class RunnerUnavailable(Exception):
    """No runner answered the command in time (or its answer was unreadable)."""


async def request_command(resources: ApiResources, tenant: str, command: Command) -> CommandReply:
    """Send ``command`` to the runner and return its reply; raises RunnerUnavailable without one."""
    subject = resources.subjects.command(tenant, command.verb)
    timeout = resources.settings.command_timeout_seconds
    try:
        msg = await resources.nc.request(subject, command.model_dump_json().encode(), timeout=timeout)
    except NoRespondersError as exc:
        raise RunnerUnavailable(f"no runner is listening for {command.verb} commands; is the runner running?") from exc
    except TimeoutError as exc:  # nats.errors.TimeoutError is one
        raise RunnerUnavailable(f"no runner answered the {command.verb} command within {timeout:g}s; retry") from exc
    except NatsError as exc:
        raise RunnerUnavailable(f"could not send the {command.verb} command over NATS ({exc}); retry") from exc
    try:
        return CommandReply.model_validate_json(msg.data)
    except ValidationError as exc:
        log.error("unreadable reply to %s on %s: %r", command.verb, subject, msg.data[:200])
        raise RunnerUnavailable(f"the runner's reply to the {command.verb} command was unreadable") from exc


async def run_command(resources: ApiResources, tenant: str, command: Command) -> CommandResult:
    """Send ``command``; a non-2xx verdict becomes that HTTP error with the runner's message.

    On success it waits (bounded) until the read models include what the runner appended,
    so a GET right after sees the command's effect.
    """
    try:
        reply = await request_command(resources, tenant, command)
    except RunnerUnavailable as exc:
        log.warning("%s command for tenant %s: %s", command.verb, tenant, exc)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
    if not reply.ok:
        code = reply.status if 400 <= reply.status < 600 else status.HTTP_502_BAD_GATEWAY
        raise HTTPException(code, reply.message)
    head = await resources.store.head_position()
    if not await wait_for_read_models(resources, head):
        log.warning("read models did not reach position %d in time after %s", head, command.verb)
    return CommandResult(status=reply.status, message=reply.message, data=reply.data)
