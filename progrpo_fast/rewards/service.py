"""The reward service: one reward behind HTTP on an ASGI stack (a starlette app served by uvicorn),
for reward models that run on another GPU or node than the trainer; ``HTTPReward`` is its client.

    PROGRPO_FAST_REWARD_TOKEN=$(openssl rand -hex 32) \\
    progrpo-fast serve-reward --reward pickscore --path /models/PickScore_v1 --host 0.0.0.0 --port 8000

Routes: GET /health -> {"status": "ok", "reward", "model", "version", the batching settings and
the request and reward-call counts}; POST /score (wire format in rewards.http). Concurrent /score
requests are gathered into one reward call, up to max_batch images or max_wait_ms after the first
(requests with other image sizes go to calls of their own, a request over max_batch runs alone),
and the scores are split back; one reward call runs at a time, in a worker thread. If a gathered
call fails, each of its requests is scored alone, so one bad request fails only itself. Binding an
address other than loopback needs a token; with one, every request needs
``Authorization: Bearer <token>`` (compared in constant time; 401 otherwise). Bodies over
max_request_bytes get 413. In Python: ``RewardServer(reward, host, port, token=...)`` (a context
manager, or start() / close(); serve() blocks) and ``serve_reward``; ``AppServer`` serves any ASGI app.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import ipaddress
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass

import torch

from progrpo_fast.ops._checks import is_int

from .base import check_rewards
from .client import check_token, is_real, require
from .http import decode_request

TOKEN_ENV = "PROGRPO_FAST_REWARD_TOKEN"
AUTH_HINT = (f"send 'Authorization: Bearer <token>' (the trainer reads the token from the environment variable named by "
             f"reward.http_token_env, default {TOKEN_ENV})")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """ValueError unless ``host`` is loopback or a token is set (and usable)."""
    check_token(token, "token")
    if not is_loopback(host) and token is None:
        raise ValueError(f"refusing to serve on {host!r} without a token: anyone who reaches that address could use the reward. "
                         f"Set a shared secret in {TOKEN_ENV} (e.g. export {TOKEN_ENV}=$(openssl rand -hex 32)) or pass --token, "
                         "and the same variable on the trainer; or bind a loopback address (--host 127.0.0.1)")


@dataclass
class _Job:
    images: torch.Tensor
    prompts: list[str]
    future: asyncio.Future


class Batcher:
    """Gathers concurrent requests into reward calls (see the module docstring); counts requests and calls."""

    def __init__(self, reward, max_batch: int, max_wait_s: float):
        self.reward, self.max_batch, self.max_wait_s = reward, max_batch, max_wait_s
        self.name = getattr(reward, "name", type(reward).__name__)
        self.requests = self.calls = 0
        self._queue: asyncio.Queue | None = None
        self._carry: _Job | None = None  # the request that did not fit the last batch: first of the next

    async def score(self, images: torch.Tensor, prompts: list[str]) -> list[float]:
        future = asyncio.get_running_loop().create_future()
        self.requests += 1
        self._queue.put_nowait(_Job(images, prompts, future))
        return await future

    @contextlib.asynccontextmanager
    async def running(self):
        """Runs the worker while the context is open (the app's lifespan)."""
        self._queue = asyncio.Queue()
        worker = asyncio.ensure_future(self._work())
        try:
            yield
        finally:
            worker.cancel()

    async def _work(self) -> None:
        while True:
            jobs = await self._gather()
            groups: dict[tuple, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(tuple(job.images.shape[1:]), []).append(job)
            for group in groups.values():
                results = await asyncio.to_thread(self._score_group, group)
                for job, result in zip(group, results):
                    if not job.future.done():  # the request may have been dropped meanwhile
                        (job.future.set_exception if isinstance(result, Exception) else job.future.set_result)(result)

    async def _gather(self) -> list[_Job]:
        loop = asyncio.get_running_loop()
        first, self._carry = self._carry or await self._queue.get(), None
        jobs, count, end = [first], len(first.prompts), loop.time() + self.max_wait_s
        while count < self.max_batch:
            remaining = end - loop.time()
            try:  # past the wait, still take what is already queued
                job = self._queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(self._queue.get(), remaining)
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
            if count + len(job.prompts) > self.max_batch:
                self._carry = job
                break
            jobs.append(job)
            count += len(job.prompts)
        return jobs

    def _score_group(self, jobs: list[_Job]) -> list[list[float] | Exception]:
        """Scores same-size requests in one call; each alone if that call fails."""
        try:
            scores = self._call(torch.cat([job.images for job in jobs]), [p for job in jobs for p in job.prompts])
        except Exception as err:
            if len(jobs) == 1:
                return [err]
            return [result for job in jobs for result in self._score_group([job])]
        offsets = [0]
        for job in jobs:
            offsets.append(offsets[-1] + len(job.prompts))
        return [scores[a:b] for a, b in zip(offsets[:-1], offsets[1:])]

    def _call(self, images: torch.Tensor, prompts: list[str]) -> list[float]:
        self.calls += 1
        scores = self.reward(images, prompts)
        try:
            return check_rewards(scores, len(prompts), self.name).float().cpu().tolist()
        except ValueError as err:  # the reward's fault, not the request's: a 500
            raise RuntimeError(str(err)) from None


async def _read_body(request, cap: int) -> bytes | None:
    """The request body, or None once it passes ``cap`` bytes (announced or read)."""
    announced = request.headers.get("content-length", "")
    if announced.isdigit() and int(announced) > cap:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def build_app(batcher: Batcher, *, token: str | None, max_request_bytes: int, info: dict):
    """The starlette app of the service: GET /health, POST /score."""
    Starlette = require("starlette.applications").Starlette
    JSONResponse = require("starlette.responses").JSONResponse
    Route = require("starlette.routing").Route
    expected = f"Bearer {token}".encode() if token else None

    def error(status: int, message: str, **headers) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers or None)

    def denied(request) -> JSONResponse | None:
        if expected is None or hmac.compare_digest(request.headers.get("authorization", "").encode(), expected):
            return None
        return error(401, f"missing or wrong token: {AUTH_HINT}", **{"WWW-Authenticate": "Bearer"})

    async def health(request):
        return denied(request) or JSONResponse({"status": "ok", **info, "requests": batcher.requests, "reward_calls": batcher.calls})

    async def score(request):
        if (refusal := denied(request)) is not None:
            return refusal
        body = await _read_body(request, max_request_bytes)
        if body is None:
            return error(413, f"request body over the server's cap of {max_request_bytes} bytes (serve-reward --max-request-bytes); "
                              "send fewer or smaller images per call")
        try:
            images, prompts = decode_request(body)
            return JSONResponse({"scores": await batcher.score(images, prompts)})
        except ValueError as err:
            return error(400, str(err))
        except Exception as err:  # reported to the client, which retries and then raises it
            return error(500, f"{type(err).__name__}: {err}")

    async def unknown(request, exc):
        return error(exc.status_code, f"{request.method} {request.url.path} is not served here; use GET /health or POST /score")

    return Starlette(routes=[Route("/health", health, methods=["GET"]), Route("/score", score, methods=["POST"])],
                     exception_handlers={404: unknown, 405: unknown}, lifespan=lambda app: batcher.running())


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); ValueError naming them if that fails."""
    sock = None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        return sock
    except OSError as err:
        if sock is not None:
            sock.close()
        raise ValueError(f"cannot listen on host {host!r} port {port}: {err}") from None


class AppServer:
    """An ASGI app served by uvicorn on (host, port) (port 0 picks a free one): start() serves from
    a daemon thread, serve() blocks; a context manager."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        uvicorn = require("uvicorn")
        self.socket = _listen(host, port)
        self.host, self.port = host, self.socket.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, http="h11", loop="asyncio", lifespan="on", log_level="warning",
                                                    access_log=False, timeout_graceful_shutdown=5))
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def serve(self) -> None:
        """Serves in this thread until Ctrl-C / SIGTERM (uvicorn's handlers, main thread only)."""
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self.socket.close()

    def start(self):
        """Serves from a daemon thread; returns self once the server accepts requests."""
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, name=f"reward-server-{self.port}",
                                       daemon=True)
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(f"the server on port {self.port} stopped while starting (see the log above)")
            time.sleep(0.005)
        return self

    def close(self) -> None:
        if self.thread is not None:
            self.server.should_exit = True
            self.thread.join()
            self.thread = None
        self.socket.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


class RewardServer(AppServer):
    """Serves ``reward`` on (host, port) (see the module docstring); ``batcher`` counts requests
    and reward calls. model: what /health reports as the model (e.g. the weights' path)."""

    def __init__(self, reward, host: str = "127.0.0.1", port: int = 0, *, token: str | None = None, max_batch: int = 64,
                 max_wait_ms: float = 10.0, max_request_bytes: int = 1 << 29, model: str | None = None):
        for name, value, ok, expected in (
            ("host", host, isinstance(host, str) and host != "", "a host name or address"),
            ("port", port, is_int(port) and 0 <= port <= 65535, "an int in [0, 65535]"),
            ("max_batch", max_batch, is_int(max_batch) and max_batch >= 1, "an int >= 1"),
            ("max_wait_ms", max_wait_ms, is_real(max_wait_ms) and max_wait_ms >= 0, "a finite number >= 0"),
            ("max_request_bytes", max_request_bytes, is_int(max_request_bytes) and max_request_bytes >= 1, "an int >= 1"),
        ):
            if not ok:
                raise ValueError(f"reward server: {name} must be {expected}, got {value!r}")
        check_bind(host, token)
        from progrpo_fast import __version__

        self.batcher = Batcher(reward, max_batch, max_wait_ms / 1000)
        info = {"reward": self.batcher.name, "model": model, "version": __version__, "max_batch": max_batch,
                "max_wait_ms": max_wait_ms, "max_request_bytes": max_request_bytes, "token_required": token is not None}
        super().__init__(build_app(self.batcher, token=token, max_request_bytes=max_request_bytes, info=info), host, port)


def serve_reward(reward, host: str = "127.0.0.1", port: int = 0, **options) -> int:
    """Serves ``reward`` from a daemon thread of this process (options: as RewardServer's); returns the bound port."""
    return RewardServer(reward, host, port, **options).start().port


def main(argv=None, *, registry: dict | None = None, prog: str = "python -m progrpo_fast.rewards.service") -> None:
    """Serves one reward by name; ``registry`` as for `build_reward` (default: this package's
    rewards; ``progrpo-fast serve-reward`` passes the tasks' rewards too)."""
    from . import MODEL_REWARDS, build_reward

    parser = argparse.ArgumentParser(prog=prog, description="Serve a reward over HTTP (starlette on uvicorn) for trainers on this "
                                                            "or other nodes.")
    parser.add_argument("--reward", required=True, help="a reward name, e.g. jpeg_compressibility, pickscore, hpsv2")
    parser.add_argument("--path", default=None, help="local model path of a model reward")
    parser.add_argument("--device", default=None, help="device of a model reward (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"], help="dtype of a model reward")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind: 0.0.0.0 (all IPv4), :: (all IPv6) or one "
                                                           "address; other than loopback a token is required")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--token", default=None, help=f"shared secret clients send as a bearer token (default: ${TOKEN_ENV}; "
                                                      "prefer the variable: a command line is visible to other users)")
    parser.add_argument("--max-batch", type=int, default=64, help="most images gathered into one reward call")
    parser.add_argument("--max-wait-ms", type=float, default=10.0, help="how long the first request waits for others to join it")
    parser.add_argument("--max-request-bytes", type=int, default=1 << 29, help="413 for request bodies over this (default 512 MiB)")
    args = parser.parse_args(argv)
    token = args.token or os.environ.get(TOKEN_ENV) or None
    check_bind(args.host, token)  # before a model loads
    kwargs = {"path": args.path} if args.path is not None else {}
    if args.reward in MODEL_REWARDS:
        kwargs["device"] = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        kwargs.update({"dtype": args.dtype} if args.dtype else {})
    server = RewardServer(build_reward(args.reward, registry=registry, **kwargs), args.host, args.port, token=token,
                          max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_request_bytes=args.max_request_bytes,
                          model=args.path)
    if not is_loopback(args.host):
        print("note: plain HTTP: the token and the images cross the network unencrypted; keep the service on a private network "
              "or behind a TLS-terminating proxy", flush=True)
    print(f"serving reward {args.reward!r} at {server.url}/score (GET {server.url}/health)"
          f"{', bearer token required' if token else ''}; Ctrl-C stops", flush=True)
    server.serve()


if __name__ == "__main__":
    try:
        main()
    except (ValueError, ImportError) as err:
        sys.exit(f"python -m progrpo_fast.rewards.service: error: {err}")
