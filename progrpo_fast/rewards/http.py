"""A reward scored by a reward service (``progrpo-fast serve-reward``, see rewards.service) on
this or another node, through the robust client of rewards.client.

Client: ``HTTPReward("http://10.0.0.5:8000", token=...)``; several replicas:
``HTTPReward("http://a:8000,http://b:8000")`` or a list.

Wire format: POST /score with the body
    4-byte big-endian header length | JSON header {"prompts": [...], "shape": [B, 3, H, W]}
    | B*3*H*W bytes of uint8 pixels, C order (pixels = round(255 * image))
-> 200 {"scores": [B finite numbers]}; 400 {"error": ...} for a bad request or a ValueError of the
reward, 401 without the right token, 413 for a body over the server's cap, 500 {"error": ...}
for any other failure. Images travel as uint8 (what a PIL-based scorer would see), so the served
reward scores round(255 * x) / 255.
"""
from __future__ import annotations

import json
import struct

import numpy as np
import torch

from .base import Reward
from .client import ServiceClient, is_real, parse_urls, preview, with_path

START_HINT = ("start a reward service there with: progrpo-fast serve-reward --reward NAME [--path MODEL_PATH] "
              "--host 0.0.0.0 --port PORT (a token in PROGRPO_FAST_REWARD_TOKEN off loopback)")


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
    if len(shape) != 4 or min(shape) < 1 or shape[1] != 3:
        raise ValueError(f"shape must be [B, 3, H, W], got {shape}")
    if not isinstance(prompts, list) or len(prompts) != shape[0] or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts must be a list of {shape[0]} strings (one per image), got {preview(prompts)}")
    pixels = body[4 + length:]
    if len(pixels) != int(np.prod(shape)):
        raise ValueError(f"expected {int(np.prod(shape))} pixel bytes for shape {shape}, got {len(pixels)}")
    images = torch.from_numpy(np.frombuffer(pixels, dtype=np.uint8).reshape(shape).copy()).float() / 255
    return images, prompts


def check_scores(reply: dict, count: int, url: str, what: str) -> list[float]:
    """reply["scores"] if it is a list of ``count`` finite numbers (not booleans); ValueError naming ``url`` otherwise."""
    scores = reply.get("scores")
    expected = f'expected {{"scores": [{count} finite numbers]}}'
    if not isinstance(scores, list):
        raise ValueError(f"{what}: {url} replied {preview(json.dumps(reply))}: {expected}")
    if len(scores) != count:
        raise ValueError(f"{what}: {url} replied {len(scores)} scores for {count} images: {expected}")
    for i, score in enumerate(scores):
        if not is_real(score):
            raise ValueError(f"{what}: {url} replied {json.dumps(score)} as score {i}: {expected}")
    return [float(score) for score in scores]


class HTTPReward(Reward):
    """Client of a reward service: the reward interface over POST /score (wire format above).

    url: ``http(s)://HOST:PORT`` (the /score path is added when the URL has none), several
    replicas comma-separated or as a list. timeout_s: total deadline of one call, retries
    included; retries, backoff_s, max_response_bytes, token: see rewards.client.ServiceClient."""

    def __init__(self, url, *, timeout_s: float = 120.0, retries: int = 2, backoff_s: float = 0.5,
                 max_response_bytes: int = 1 << 20, token: str | None = None, name: str = "http"):
        self.name = name
        urls = [with_path(u, "/score") for u in parse_urls(url, "url")]
        self.client = ServiceClient(urls, what=f"reward {name!r}", timeout_s=timeout_s, retries=retries, backoff_s=backoff_s,
                                    max_response_bytes=max_response_bytes, token=token, hint=START_HINT)

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        reply, url = self.client.post(content=encode_request(images, prompts), headers={"Content-Type": "application/octet-stream"})
        return torch.tensor(check_scores(reply, images.shape[0], url, self.client.what), dtype=torch.float32)
