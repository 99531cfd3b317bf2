"""Condition expressions in CEL: compiled once, evaluated safely over plain JSON data.

CEL (Common Expression Language) has no side effects, no loops and no I/O, so a
condition written by a user can run inside the runner without a worker hop.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import celpy
import celpy.celtypes
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError

# The names an expression may use; everything else is an evaluation error.
ACTIVATION_NAMES = ("trigger", "context", "config", "run")

_ENV = celpy.Environment()


class ExpressionError(ValueError):
    """An expression that does not compile, or that failed or gave a non-boolean result."""


@lru_cache(maxsize=4096)
def compile_expression(source: str) -> Any:
    """Compile ``source`` to a reusable CEL program; raises ExpressionError with the position."""
    if not source.strip():
        raise ExpressionError("expression is empty")
    try:
        return _ENV.program(_ENV.compile(source))
    except CELParseError as exc:
        raise ExpressionError(f"invalid expression: {exc}".strip()) from exc
    except Exception as exc:  # lark raises a few error types of its own on odd input
        raise ExpressionError(f"invalid expression: {exc}") from exc


def evaluate_condition(source: str, variables: dict[str, Any]) -> bool:
    """Evaluate a boolean condition over JSON ``variables`` (trigger, context, config, run)."""
    return evaluate_predicate(source, {name: variables.get(name) or {} for name in ACTIVATION_NAMES})


def evaluate_predicate(source: str, variables: Mapping[str, Any]) -> bool:
    """Evaluate a boolean expression over any named JSON ``variables`` (monitors name their own)."""
    program = compile_expression(source)
    try:
        # Conversion is inside the try: json_to_cel refuses integers beyond 64 bits anywhere in the data.
        activation = {name: json_to_cel(value) for name, value in variables.items()}
        value = program.evaluate(activation)
    except CELEvalError as exc:
        raise ExpressionError(f"expression {source!r} failed: {exc.args[0] if exc.args else exc}") from exc
    except Exception as exc:  # a CEL runtime error must fail the step, not the runner
        raise ExpressionError(f"expression {source!r} failed: {exc}") from exc
    if isinstance(value, CELEvalError):
        raise ExpressionError(f"expression {source!r} failed: {value.args[0] if value.args else value}")
    if not isinstance(value, celpy.celtypes.BoolType):
        raise ExpressionError(f"expression {source!r} gave {value!r}, not a boolean")
    return bool(value)
