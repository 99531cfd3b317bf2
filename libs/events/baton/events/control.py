"""A pipeline's operator state (active, paused, draining), carried to the services in the KV bucket.

The API records each change as an event in the pipeline's stream, then puts the
current state under the key ``control.<tenant>.<pipeline>``; the runner (which
starts runs) and the scheduler (which fires schedules) watch it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

OperatorState = Literal["active", "paused", "draining"]


class PipelineControl(BaseModel):
    """The operator state of one pipeline."""

    model_config = ConfigDict(frozen=True)
    state: OperatorState = "active"
    changed_at: datetime | None = None
    reason: str = ""
    actor: str | None = None
    position: int = Field(default=0, description="Event-store position of the change; newer wins.")
