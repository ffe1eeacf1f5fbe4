"""The one retry/backoff helper: exponential backoff with full jitter and a bounded total time.

Built on tenacity. Every hook that talks to a throttling API goes through :func:`call_with_retry`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import tenacity

log = logging.getLogger(__name__)
T = TypeVar("T")


class RetryExhaustedError(RuntimeError):
    """Retries ran out; the message says what failed, how often and what to do."""


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff: attempt n waits uniform(0, min(cap, base * 2**n)) seconds; stops at ``max_attempts`` or ``budget_s``."""

    max_attempts: int = 8
    base_s: float = 0.5
    cap_s: float = 20.0
    budget_s: float = 120.0


def call_with_retry(
    fn: Callable[[], T],
    *,
    what: str,
    is_retryable: Callable[[BaseException], bool],
    policy: RetryPolicy = RetryPolicy(),
    wait_hint: Callable[[BaseException], float | None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn`` with retries on retryable errors.

    :param what: a short description for logs and the final error (never credentials).
    :param is_retryable: True for throttling / 5xx / timeouts.
    :param wait_hint: server-requested delay (e.g. ``Retry-After``) in seconds, honoured when given
        (still bounded by ``policy.budget_s``).
    :raises RetryExhaustedError: after the last attempt, chained to the last error.
    """
    jitter = tenacity.wait_random_exponential(multiplier=policy.base_s, max=policy.cap_s)

    def _wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if exc is not None and wait_hint is not None:
            hint = wait_hint(exc)
            if hint is not None:
                return max(0.0, min(float(hint), policy.budget_s))
        return float(jitter(state))

    def _before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "%s: attempt %d failed (%s); retrying in %.2fs",
            what,
            state.attempt_number,
            type(exc).__name__,
            state.next_action.sleep if state.next_action else 0.0,
        )

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_retryable),
        stop=tenacity.stop_after_attempt(policy.max_attempts) | tenacity.stop_after_delay(policy.budget_s),
        wait=_wait,
        sleep=sleep,
        before_sleep=_before_sleep,
        reraise=False,
    )
    try:
        return retrying(fn)
    except tenacity.RetryError as e:
        last = e.last_attempt.exception()
        raise RetryExhaustedError(
            f"{what}: still failing after {e.last_attempt.attempt_number} attempts "
            f"({type(last).__name__}: {str(last)[:200]}); the service is throttling or down — "
            "retry later, lower the request rate, or raise the retry budget"
        ) from last


def retry_after_seconds(headers: Any) -> float | None:
    """Read ``x-ms-ratelimit-microsoft.costmanagement-qpu-retry-after`` / ``Retry-After`` (seconds) from headers."""
    if not headers:
        return None
    for key in ("x-ms-ratelimit-microsoft.costmanagement-qpu-retry-after", "Retry-After", "retry-after"):
        v = headers.get(key) if hasattr(headers, "get") else None
        if v is not None:
            try:
                return float(v)
            except (TypeError, ValueError):
                continue
    return None
