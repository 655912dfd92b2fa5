"""A reward served by a separate process over HTTP on this machine (loopback only), for reward
models too heavy to share the trainer's process or GPU.

Server: ``python -m progrpo_fast.rewards.http --reward NAME [--path MODEL] --port 8765`` or, in
Python, ``serve_reward(reward)`` / ``RewardServer``. Client: ``HTTPReward("http://127.0.0.1:8765")``.

Protocol: GET /health -> 200 {"status": "ok", "reward": name}. POST /score with the body
    4-byte big-endian header length | JSON header {"prompts": [...], "shape": [B, 3, H, W]}
    | B*3*H*W bytes of uint8 pixels, C order (pixels = round(255 * image))
-> 200 {"scores": [B floats]}; 400 {"error": ...} for a bad request or a ValueError of the
reward; 500 {"error": ...} for any other failure. Images are sent as uint8 (what a PIL-based
scorer would see), so the served reward scores round(255 * x) / 255.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import torch

from .base import Reward

START_HINT = "start a server with: python -m progrpo_fast.rewards.http --reward NAME [--path MODEL_PATH] --port PORT"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def quantize(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> uint8 array round(255 * x)."""
    return (images.detach() * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


def encode_request(images: torch.Tensor, prompts: list[str]) -> bytes:
    pixels = quantize(images)
    header = json.dumps({"prompts": list(prompts), "shape": list(pixels.shape)}).encode()
    return struct.pack(">I", len(header)) + header + pixels.tobytes()


def decode_request(body: bytes) -> tuple[torch.Tensor, list[str]]:
    """Inverse of encode_request: float32 images in [0, 1] and the prompts; ValueError if malformed."""
    if len(body) < 4:
        raise ValueError("request body too short: expected a 4-byte header length")
    (length,) = struct.unpack(">I", body[:4])
    try:
        header = json.loads(body[4:4 + length])
        shape, prompts = [int(n) for n in header["shape"]], header["prompts"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"bad request header (expected JSON with 'prompts' and 'shape'): {error}") from None
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"shape must be [B, 3, H, W], got {shape}")
    pixels = body[4 + length:]
    if len(pixels) != int(np.prod(shape)):
        raise ValueError(f"expected {int(np.prod(shape))} pixel bytes for shape {shape}, got {len(pixels)}")
    images = torch.from_numpy(np.frombuffer(pixels, dtype=np.uint8).reshape(shape).copy()).float() / 255
    return images, prompts


class RewardServer:
    """A threaded HTTP server for one reward on a loopback address; port 0 picks a free port.
    Requests are scored one at a time (a lock guards the reward). Use as a context manager or
    call start() / close()."""

    def __init__(self, reward, host: str = "127.0.0.1", port: int = 0):
        if not is_loopback(host):
            raise ValueError(f"reward servers listen on loopback addresses only (127.0.0.1, ::1, localhost), got {host!r}")
        self.reward, self.lock = reward, threading.Lock()
        handler = type("Handler", (_Handler,), {"owner": self})
        server_class = type("Server", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET,
                                                               "daemon_threads": True})
        self.httpd = server_class((host, port), handler)
        self.host, self.port = host, self.httpd.server_address[1]
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> RewardServer:
        self.thread = threading.Thread(target=self.httpd.serve_forever, name=f"reward-server-{self.port}", daemon=True)
        self.thread.start()
        return self

    def close(self) -> None:
        if self.thread is not None:
            self.httpd.shutdown()
            self.thread.join()
            self.thread = None
        self.httpd.server_close()

    def __enter__(self) -> RewardServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


class _Handler(BaseHTTPRequestHandler):
    owner: RewardServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # quiet: one line per request would flood training logs
        pass

    def reply(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path != "/health":
            return self.reply(404, {"error": f"unknown path {self.path}; use GET /health or POST /score"})
        self.reply(200, {"status": "ok", "reward": getattr(self.owner.reward, "name", type(self.owner.reward).__name__)})

    def do_POST(self):
        if self.path != "/score":
            return self.reply(404, {"error": f"unknown path {self.path}; use POST /score"})
        try:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            images, prompts = decode_request(body)
            with self.owner.lock:
                scores = self.owner.reward(images, prompts)
            scores = torch.as_tensor(scores, dtype=torch.float32).cpu()
        except ValueError as error:
            return self.reply(400, {"error": str(error)})
        except Exception as error:  # reported to the client, which raises it
            return self.reply(500, {"error": f"{type(error).__name__}: {error}"})
        self.reply(200, {"scores": scores.tolist()})


def serve_reward(reward, host: str = "127.0.0.1", port: int = 0) -> int:
    """Serves `reward` from a daemon thread of this process; returns the bound port."""
    return RewardServer(reward, host, port).start().port


class HTTPReward(Reward):
    """Client of a RewardServer: the reward interface over POST /score.

    url: http://127.0.0.1:PORT (the /score path is added when the URL has none).
    timeout: seconds per attempt; retries: further attempts after a connection failure or a
    timeout (with 0.5 s, 1 s, ... pauses). ConnectionError names the URL and how to start a server."""

    def __init__(self, url: str, timeout: float = 120.0, retries: int = 2, name: str = "http"):
        parts = urlsplit(url or "")
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"http reward: url must look like http://127.0.0.1:PORT, got {url!r}")
        if not is_loopback(parts.hostname):
            raise ValueError("http reward: only loopback servers (127.0.0.1, ::1, localhost) are allowed, "
                             f"got {parts.hostname!r} in {url!r}")
        if timeout <= 0 or retries < 0:
            raise ValueError(f"http reward: timeout must be > 0 and retries >= 0, got {timeout}, {retries}")
        self.url = urlunsplit(parts._replace(path=parts.path if parts.path not in ("", "/") else "/score"))
        self.timeout, self.retries, self.name = float(timeout), int(retries), name

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        request = urllib.request.Request(self.url, data=encode_request(images, prompts), method="POST",
                                         headers={"Content-Type": "application/octet-stream"})
        payload = self._send(request)
        scores = payload.get("scores")
        if not isinstance(scores, list) or len(scores) != images.shape[0]:
            raise ValueError(f"http reward: {self.url} returned {str(payload)[:200]} for {images.shape[0]} images")
        return torch.tensor(scores, dtype=torch.float32)

    def _send(self, request: urllib.request.Request) -> dict:
        failure = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(0.5 * 2 ** (attempt - 1))
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as error:
                message = _error_message(error)
                if error.code < 500:
                    raise ValueError(f"http reward: {self.url} rejected the request ({error.code}): {message}") from None
                raise RuntimeError(f"http reward: the server at {self.url} failed ({error.code}): {message}") from None
            except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
                failure = getattr(error, "reason", error)
        raise ConnectionError(f"http reward: no answer from {self.url} after {self.retries + 1} attempt(s) "
                              f"(timeout {self.timeout:g} s each): {failure}; {START_HINT}")


def _error_message(error: urllib.error.HTTPError) -> str:
    try:
        return json.loads(error.read()).get("error", "")
    except (ValueError, AttributeError):
        return str(error)


def main(argv=None, *, registry: dict | None = None, prog: str = "python -m progrpo_fast.rewards.http") -> None:
    """Serves one reward by name; ``registry`` as for `build_reward` (default: this package's
    rewards; ``progrpo-fast serve-reward`` passes the tasks' rewards too)."""
    from . import MODEL_REWARDS, build_reward

    parser = argparse.ArgumentParser(prog=prog, description="Serve a reward over HTTP on a loopback address.")
    parser.add_argument("--reward", required=True, help="a reward name, e.g. jpeg_compressibility, pickscore, hpsv2")
    parser.add_argument("--path", default=None, help="local model path of a model reward")
    parser.add_argument("--device", default=None, help="device of a model reward (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"], help="dtype of a model reward")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    args = parser.parse_args(argv)
    kwargs = {"path": args.path} if args.path is not None else {}
    if args.reward in MODEL_REWARDS:
        kwargs["device"] = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        kwargs.update({"dtype": args.dtype} if args.dtype else {})
    server = RewardServer(build_reward(args.reward, registry=registry, **kwargs), args.host, args.port)
    print(f"serving reward {args.reward!r} at {server.url}/score (GET {server.url}/health); Ctrl-C stops", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()


if __name__ == "__main__":
    main()
