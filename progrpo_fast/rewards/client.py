"""The HTTP client of the remote rewards (``http``, ``vlm_judge``), on httpx.

`ServiceClient` POSTs a request to one of several replica URLs and returns the reply's JSON
object. One request ends within ``timeout_s`` (every attempt and pause included; a server that
drips its reply byte by byte is cut off at the deadline). Connection failures, timeouts of the
connect phase, 429 and 5xx replies move to the next replica at once; after every replica failed
once, the next round starts after ``backoff_s * 2**round`` (+ up to 25% jitter), ``retries``
rounds at most. A replica that refused a connection goes last for 30 s. 4xx replies, redirects
(never followed), replies over ``max_response_bytes`` (reading stops there) and replies that are
not a JSON object (NaN and Infinity refused) raise ValueError at once; running out of rounds or
time raises ConnectionError listing each attempt. Proxy and TLS settings of the environment
(``http_proxy``, ``SSL_CERT_FILE``, .netrc) are ignored.

Requests run on one event loop in a daemon thread of this process, so callers may be plain
functions, threads, or code inside a running event loop (a notebook).
"""
from __future__ import annotations

import asyncio
import importlib
import json
import math
import os
import random
import threading
import time
from urllib.parse import urlsplit

from progrpo_fast.ops._checks import is_int

# module -> the requirement pyproject.toml gives it
REQUIREMENTS = {"httpx": "httpx>=0.27,<1", "starlette": "starlette>=0.37,<2", "uvicorn": "uvicorn>=0.30,<1"}
CONNECT_TIMEOUT_S = 5.0  # a replica that does not accept within this is skipped (if the deadline allows more)
DOWN_FOR_S = 30.0  # a replica that refused a connection is tried last for this long
PREVIEW_CHARS = 300  # how much of a bad reply an error message quotes


def require(module: str):
    """Imports ``module`` (of httpx, starlette or uvicorn); ImportError with the pip command if missing."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        name = module.split(".")[0]
        raise ImportError(f"the reward service needs {name} ({err}): pip install '{REQUIREMENTS[name]}' "
                          "(or reinstall progrpo-fast, which depends on it)") from None


def parse_urls(value, key: str) -> list[str]:
    """The URLs of ``value``: one ``http(s)://HOST[:PORT][/PATH]`` string, several separated by
    commas, or a list of them; ValueError naming ``key`` otherwise."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) for item in items):
        raise ValueError(f"{key} must be a URL string (several: comma-separated) or a list of URL strings, got {value!r}")
    urls = [item.strip() for item in items if item.strip()]
    if not urls:
        raise ValueError(f"{key} must name at least one URL like http://HOST:PORT, got {value!r}")
    for url in urls:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 -- raises ValueError for a port that is not a number in [0, 65535]
        except ValueError as err:
            raise ValueError(f"{key}: {url!r} is not a valid URL ({err})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{key} must start with http:// or https:// and name a host, e.g. http://10.0.0.5:8000, got {url!r}")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError(f"{key}: {url!r} must have no query, fragment or user:password (give tokens through the "
                             "token environment variable instead)")
    return urls


def with_path(url: str, path: str) -> str:
    """``url`` with ``path`` when it has none (``http://h:1`` -> ``http://h:1/score``)."""
    parts = urlsplit(url)
    return parts._replace(path=path).geturl() if parts.path in ("", "/") else url


def is_real(value) -> bool:
    """A finite int or float and not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_options(timeout_s, retries, backoff_s, max_response_bytes) -> None:
    """ValueError naming the first client option out of range."""
    for name, value, ok, expected in (
        ("timeout_s", timeout_s, is_real(timeout_s) and timeout_s > 0, "a finite number > 0"),
        ("retries", retries, is_int(retries) and retries >= 0, "an int >= 0"),
        ("backoff_s", backoff_s, is_real(backoff_s) and backoff_s >= 0, "a finite number >= 0"),
        ("max_response_bytes", max_response_bytes, is_int(max_response_bytes) and max_response_bytes >= 1, "an int >= 1"),
    ):
        if not ok:
            raise ValueError(f"{name} must be {expected}, got {value!r}")


def check_token(token, name: str) -> None:
    """ValueError naming ``name`` unless ``token`` is None or a non-empty string of printable ASCII without spaces."""
    if token is not None and (not isinstance(token, str) or not token or not token.isascii() or not token.isprintable()
                              or any(c.isspace() for c in token)):
        got = "a string with other characters" if isinstance(token, str) else f"a {type(token).__name__}"  # never echo a secret
        raise ValueError(f"{name} must be a non-empty string of printable ASCII without spaces (e.g. `openssl rand -hex 32`), got {got}")


def preview(data) -> str:
    """The start of a reply for an error message."""
    text = data.decode("utf-8", "replace") if isinstance(data, (bytes, bytearray)) else str(data)
    return repr(text[:PREVIEW_CHARS]) + (f" ... ({len(text)} characters)" if len(text) > PREVIEW_CHARS else "")


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json_object(body: bytes, url: str, what: str) -> dict:
    """The JSON object of a reply; ValueError naming ``url`` for anything else (NaN and Infinity included)."""
    try:
        reply = json.loads(body, parse_constant=_refuse_constant)
    except ValueError as err:
        raise ValueError(f"{what}: {url} replied with invalid JSON ({err}): {preview(body)}") from None
    if not isinstance(reply, dict):
        raise ValueError(f"{what}: {url} replied with a JSON {type(reply).__name__} where an object was expected: {preview(body)}")
    return reply


class _Transient(Exception):
    """An attempt failure worth trying again (elsewhere or later)."""

    def __init__(self, message: str, refused: bool = False):
        super().__init__(message)
        self.refused = refused


_loop_lock = threading.Lock()
_loop: tuple[int, asyncio.AbstractEventLoop] | None = None  # (pid, loop): a forked child starts its own


def _background_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _loop_lock:
        if _loop is None or _loop[0] != os.getpid():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="progrpo-fast-reward-client", daemon=True).start()
            _loop = (os.getpid(), loop)
        return _loop[1]


def run_coroutine(coroutine):
    """Runs ``coroutine`` on the client loop and returns its result; an interrupt cancels it."""
    future = asyncio.run_coroutine_threadsafe(coroutine, _background_loop())
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise


class ServiceClient:
    """POSTs to replicas of one service with a deadline, retries, failover and a reply cap.

    urls: one URL, several comma-separated, or a list (parse_urls); each is used as given.
    what: names the caller in errors, e.g. "reward 'http'". token: sent as ``Authorization: Bearer``.
    hint: appended to the error raised when no replica answered (how to start one)."""

    def __init__(self, urls, *, what: str, timeout_s: float = 120.0, retries: int = 2, backoff_s: float = 0.5,
                 max_response_bytes: int = 1 << 20, token: str | None = None, hint: str = ""):
        check_options(timeout_s, retries, backoff_s, max_response_bytes)
        check_token(token, "token")
        self.urls, self.what, self.hint = parse_urls(urls, "url"), what, hint
        self.timeout_s, self.retries, self.backoff_s = float(timeout_s), retries, float(backoff_s)
        self.max_response_bytes = max_response_bytes
        from progrpo_fast import __version__

        self.headers = {"User-Agent": f"progrpo-fast/{__version__}", **({"Authorization": f"Bearer {token}"} if token else {})}
        self._client: tuple[int, object] | None = None  # (pid, httpx.AsyncClient) on the loop of that process
        self._next, self._down_until, self._random = 0, {}, random.Random()  # own RNG: never moves the global one

    def post(self, **request) -> tuple[dict, str]:
        """One POST (httpx keyword arguments: content=, json=, headers=); returns (reply object, URL that answered)."""
        return run_coroutine(self.post_async(**request))

    def post_many(self, requests: list[dict], concurrency: int) -> list[tuple[dict, str]]:
        """``post`` for each request, at most ``concurrency`` at a time; the first failure cancels the rest and raises."""
        async def bounded(limit, request):
            async with limit:
                return await self.post_async(**request)

        async def gather():
            limit = asyncio.Semaphore(concurrency)
            tasks = [asyncio.ensure_future(bounded(limit, request)) for request in requests]
            try:
                return await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()

        return run_coroutine(gather())

    async def post_async(self, **request) -> tuple[dict, str]:
        start = time.monotonic()
        deadline, failures = start + self.timeout_s, []
        for round_index in range(self.retries + 1):
            if round_index:
                pause = self.backoff_s * 2 ** (round_index - 1) * self._random.uniform(1.0, 1.25)
                await asyncio.sleep(max(0.0, min(pause, deadline - time.monotonic())))
            for url in self._order():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    return await asyncio.wait_for(self._attempt(url, remaining, request), remaining), url
                except asyncio.TimeoutError:
                    failures.append(f"{url}: no complete reply before the deadline")
                except _Transient as err:
                    failures.append(f"{url}: {err}")
                    if err.refused:
                        self._down_until[url] = time.monotonic() + DOWN_FOR_S
            if time.monotonic() >= deadline:
                break
        raise ConnectionError(f"{self.what}: no usable answer from {', '.join(self.urls)} after {len(failures)} attempt(s) "
                              f"in {time.monotonic() - start:.1f} s (deadline timeout_s={self.timeout_s:g} s, retries={self.retries}): "
                              f"{'; '.join(failures) or 'no attempt fit in the deadline'}" + (f"; {self.hint}" if self.hint else ""))

    def _order(self) -> list[str]:
        """This round's replicas: rotated by one per call, the ones that refused lately last."""
        start, now = self._next, time.monotonic()
        self._next = (start + 1) % len(self.urls)
        rotated = self.urls[start:] + self.urls[:start]
        return sorted(rotated, key=lambda url: self._down_until.get(url, 0.0) > now)

    def _http(self):
        """This process's httpx.AsyncClient (made on the client loop)."""
        if self._client is None or self._client[0] != os.getpid():
            httpx = require("httpx")
            self._client = (os.getpid(), httpx.AsyncClient(trust_env=False, follow_redirects=False, headers=self.headers))
        return self._client[1]

    async def _attempt(self, url: str, remaining: float, request: dict) -> dict:
        httpx = require("httpx")
        timeout = httpx.Timeout(remaining, connect=min(CONNECT_TIMEOUT_S, remaining))
        try:
            async with self._http().stream("POST", url, timeout=timeout, **request) as response:
                status, reason = response.status_code, response.reason_phrase
                if 300 <= status < 400:
                    raise ValueError(f"{self.what}: {url} answered {status} {reason} redirecting to "
                                     f"{response.headers.get('location', '(no location)')!r}; redirects are not followed: "
                                     "give the service's own URL")
                body = await self._read(response, url)
        except httpx.ConnectError as err:
            raise _Transient(f"cannot connect ({err or type(err).__name__})", refused=True) from None
        except httpx.TransportError as err:  # timeouts, reset or dropped connections, truncated bodies
            raise _Transient(f"{type(err).__name__}: {err or 'no detail'}") from None
        if status == 429 or status >= 500:
            raise _Transient(f"{status} {reason}: {_error_text(body)}")
        if status >= 400:
            raise ValueError(f"{self.what}: {url} rejected the request ({status} {reason}): {_error_text(body)}")
        return parse_json_object(body, url, self.what)

    async def _read(self, response, url: str) -> bytes:
        """The body, or ValueError as soon as it passes max_response_bytes (announced or read)."""
        cap, announced = self.max_response_bytes, response.headers.get("content-length", "")
        over = f"over the cap max_response_bytes={cap} (config: reward.http_max_response_bytes)"
        if announced.isdigit() and int(announced) > cap:
            raise ValueError(f"{self.what}: {url} announced a reply of {int(announced)} bytes, {over}; not read")
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > cap:
                raise ValueError(f"{self.what}: {url} sent a reply of more than {cap} bytes, {over}; stopped reading")
            chunks.append(chunk)
        return b"".join(chunks)


def _error_text(body: bytes) -> str:
    """The "error" of a JSON error reply, else the start of the body."""
    try:
        reply = json.loads(body)
    except ValueError:
        return preview(body)
    return str(reply["error"])[:PREVIEW_CHARS] if isinstance(reply, dict) and "error" in reply else preview(body)
