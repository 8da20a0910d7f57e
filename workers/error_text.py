"""How an error becomes the text that is logged and kept (handler state, dead letter).

A payload that does not fit a handler's model raises a ``pydantic.ValidationError``, whose
own text quotes the input (``input_value={... 'email': ...}``): customer data, which must
not reach logs, dead letters or the dashboard. Its text here names the fields and what was
wrong with them, never their values, whatever the model's ``hide_input_in_errors`` says.
"""

from __future__ import annotations

import traceback

import pydantic

__all__ = ["error_message", "error_traceback"]


def error_message(error: BaseException) -> str:
    """The error's message: ``str(error)``, but without input values for a validation
    error."""
    if not isinstance(error, pydantic.ValidationError):
        return str(error)
    problems = "; ".join(
        f"{'.'.join(str(part) for part in problem['loc']) or '(the event)'}: "
        f"{problem['msg']} [type={problem['type']}]"
        for problem in error.errors(include_url=False, include_context=False, include_input=False)
    )
    return f"{error.error_count()} validation error(s) for {error.title}: {problems}"


def error_traceback(error: BaseException) -> str:
    """The error's formatted traceback, as ``traceback.format_exception`` gives it (with what
    it was raised from or during), but each validation error's last line by
    ``error_message``."""
    chain: list[str] = []
    current: BaseException | None = error
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(_formatted(current))
        if current.__cause__ is not None:
            chain.append(_CAUSE)
            current = current.__cause__
        elif current.__context__ is not None and not current.__suppress_context__:
            chain.append(_CONTEXT)
            current = current.__context__
        else:
            current = None
    return "".join(reversed(chain))


_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


def _formatted(error: BaseException) -> str:
    if not isinstance(error, pydantic.ValidationError):
        return "".join(traceback.format_exception(error, chain=False))
    frames = "".join(traceback.format_tb(error.__traceback__))
    header = "Traceback (most recent call last):\n" if frames else ""
    return f"{header}{frames}{type(error).__name__}: {error_message(error)}\n"
