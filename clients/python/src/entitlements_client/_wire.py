"""One call to the API without the I/O, shared by `Client` and `AsyncClient`: what to send,
how to read the answer, when another attempt is safe and how long to wait for it, and what the
fail policy answers when the server cannot.

Every call the client makes is safe to repeat: reads change nothing, and each write carries an
idempotency key chosen before the first attempt and sent again on every retry (a consume's or
an event's `event_id`, a hold's `reservation_id`). So a lost answer, a timeout or a 5xx is
tried again; a 4xx never is (the same request would be refused again)."""

from __future__ import annotations

import datetime as dt
import random
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from ._errors import EntitlementsError, EntitlementsUnavailable
from ._version import __version__

T = TypeVar("T")

API_PREFIX = "/api/v1"
# A plain decimal, as the server reads one: no exponent, no thousands separator, no hex.
_PLAIN_DECIMAL = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")


# --- what we send ---------------------------------------------------------------------------


def api_base_url(base_url: str) -> str:
    """The server's address ("http://127.0.0.1:8000") or its API root (".../api/v1")."""
    if not base_url.startswith(("http://", "https://")):
        raise ValueError(f"base_url is an http:// or https:// address, not {base_url!r}")
    base = base_url.rstrip("/")
    if not base.endswith(API_PREFIX):
        base += API_PREFIX
    return base + "/"


def path(*segments: str) -> str:
    return "/".join(quote(str(s), safe="") for s in segments)


def new_id() -> str:
    return str(uuid.uuid4())


def quantity_text(value: Decimal | int | str) -> str:
    """A quantity as the API's decimal text, or TypeError/ValueError before any request: a
    float (inexact in binary: 0.1 is not one tenth), a bool, NaN, Infinity, or text that is
    not a plain decimal ("1e3", "1,000", "0x10")."""
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        hint = " (inexact: pass Decimal('0.1') or '0.1')" if isinstance(value, float) else ""
        raise TypeError(
            f"quantity is a Decimal, an int or a decimal string, not {type(value).__name__}" + hint
        )
    if isinstance(value, str):
        if not _PLAIN_DECIMAL.fullmatch(value.strip()):
            raise ValueError(f"quantity {value!r} is not a plain decimal such as '2.5'")
        value = value.strip()
    try:
        number = Decimal(value)
    except InvalidOperation:  # pragma: no cover (the pattern above lets only decimals in)
        raise ValueError(f"quantity {value!r} is not a decimal") from None
    if not number.is_finite():
        raise ValueError(f"quantity {value!r} is not a finite decimal")
    return format(number, "f")


def time_text(value: dt.datetime | str) -> str:
    """An aware datetime as ISO 8601 UTC; a naive one raises ValueError (which zone?)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, dt.datetime):
        raise TypeError(f"timestamp is an aware datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamp must be an aware datetime (e.g. with tzinfo=datetime.UTC)")
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


# --- retries --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Policy:
    """How a client retries and fails. Attempt n (from 0) that failed waits a random time in
    [0, min(max_backoff, backoff * 2**n)] ("full jitter": clients that failed together do not
    retry together), or the server's Retry-After when it gives one within max_backoff."""

    retries: int
    backoff: float
    max_backoff: float
    fail_open: frozenset[str]

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return retry_after
        return random.uniform(0, min(self.max_backoff, self.backoff * 2**attempt))


@dataclass(frozen=True, slots=True)
class Step(Generic[T]):
    """After an attempt: `done` with the call's `value`, or wait `delay` seconds and retry."""

    done: bool
    value: T | None = None
    delay: float = 0.0


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["Retry-After"]))
    except (KeyError, ValueError):
        return None


def error_from(response: httpx.Response) -> EntitlementsError:
    """The API's error JSON `{"error": {"code", "message", "details"}}` as an exception."""
    try:
        error = response.json()["error"]
        return EntitlementsError(
            response.status_code, error["code"], error["message"], error.get("details") or {}
        )
    except (ValueError, KeyError, TypeError):
        text = response.text[:200]
        return EntitlementsError(response.status_code, f"http_{response.status_code}", text)


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API call: the request, how to read a 2xx answer, and the fail policy's answer (None:
    raise EntitlementsUnavailable)."""

    method: str
    path: str
    body: dict[str, Any] | None
    parse: Callable[[Any], T]
    fallback: Callable[[], T] | None = None

    def request_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"method": self.method, "url": self.path}
        if self.body is not None:
            args["json"] = self.body
        return args

    def after(
        self,
        policy: Policy,
        attempt: int,
        *,
        response: httpx.Response | None = None,
        error: Exception | None = None,
    ) -> Step[T]:
        """Judges attempt number `attempt` (from 0). Raises EntitlementsError for a 4xx."""
        last = attempt >= policy.retries
        if response is None:  # no answer: refused, reset, timed out or dropped
            if not last:
                return Step(False, delay=policy.delay(attempt))
            return self._unavailable(f"no answer from the entitlements server ({error!r})")
        status = response.status_code
        if status >= 500 or status == 429:
            retry_after = _retry_after(response)
            if not last and (retry_after is None or retry_after <= policy.max_backoff):
                return Step(False, delay=policy.delay(attempt, retry_after))
            if status == 429:
                raise error_from(response)
            return self._unavailable(f"the entitlements server answered {status}", status)
        if 200 <= status < 300:
            try:
                data = response.json()
            except ValueError:
                return self._unavailable(f"the answer ({status}) is not JSON", status)
            return Step(True, self.parse(data))
        raise error_from(response)

    def _unavailable(self, message: str, status: int | None = None) -> Step[T]:
        if self.fallback is None:
            raise EntitlementsUnavailable(message, status=status)
        return Step(True, self.fallback())


def settings_from(
    base_url: str,
    api_key: str,
    timeout: float,
    fail_open: Iterable[str],
    retries: int,
    backoff: float,
    max_backoff: float,
) -> tuple[Policy, dict[str, Any]]:
    """A client's retry and fail policy, and the arguments of its httpx client (one pool of
    keep-alive connections, reused by every call)."""
    if isinstance(fail_open, str):  # fail_open="hd-video" means that feature, not its letters
        fail_open = (fail_open,)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError("retries is an int >= 0")
    policy = Policy(retries, backoff, max_backoff, frozenset(fail_open))
    http = {
        "base_url": api_base_url(base_url),
        "headers": {
            "Authorization": f"Bearer {api_key}",
            "Accept": "application/json",
            "User-Agent": f"entitlements-client/{__version__}",
        },
        "timeout": httpx.Timeout(timeout),
        "limits": httpx.Limits(max_connections=100, max_keepalive_connections=20),
    }
    return policy, http
