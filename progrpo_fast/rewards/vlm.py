"""A vision-language model as the judge: each image is sent with its prompt to an OpenAI-compatible
chat endpoint (what vLLM and SGLang serve), and the number in the reply becomes the reward.

    vllm serve Qwen/Qwen2.5-VL-7B-Instruct --port 8001 --api-key $PROGRPO_FAST_VLM_TOKEN
    VLMJudge("http://gpu-node:8001", model="Qwen/Qwen2.5-VL-7B-Instruct", token=...)

Per image: POST {url}/v1/chat/completions with one user message holding the image as a
``data:image/png;base64,...`` URI (pixels round(255 * x)) and ``template`` with ``{prompt}``
replaced by the image's prompt; temperature 0. Score: the first match of ``score_regex`` in the
reply's text (its first group if it has one) read as a number v, which must lie in
``score_range`` = (low, high); reward = (v - low) / (high - low) in [0, 1]. A reply without a
match, or with a number out of range, raises ValueError quoting the URL and the reply.
Requests go ``concurrency`` at a time through rewards.client (deadline, retries, failover, cap).
"""
from __future__ import annotations

import base64
import io
import re

import torch
from PIL import Image

from progrpo_fast.ops._checks import is_int

from .base import Reward
from .client import ServiceClient, is_real, parse_urls, preview
from .http import quantize

DEFAULT_TEMPLATE = ('How well does this image match the description "{prompt}"? Rate it from 0 (not at all) to 10 '
                    "(perfectly). Answer with the number only.")
DEFAULT_SCORE_REGEX = r"-?\d+(?:\.\d+)?"
DEFAULT_SCORE_RANGE = (0.0, 10.0)


def check_judge_options(template: str, score_regex: str, score_range, name=lambda option: option) -> re.Pattern:
    """The compiled score_regex; ValueError naming the option that is unusable as ``name(option)``."""
    if not isinstance(template, str) or "{prompt}" not in template:
        raise ValueError(f"{name('template')} must be a string containing {{prompt}} (where each image's prompt goes), got {template!r}")
    if not isinstance(score_regex, str):
        raise ValueError(f"{name('score_regex')} must be a regular expression string, got {score_regex!r}")
    try:
        pattern = re.compile(score_regex)
    except re.error as err:
        raise ValueError(f"{name('score_regex')} {score_regex!r} is not a valid regular expression: {err}") from None
    if (not isinstance(score_range, (list, tuple)) or len(score_range) != 2 or not all(is_real(v) for v in score_range)
            or not score_range[0] < score_range[1]):
        raise ValueError(f"{name('score_range')} must be two finite numbers low < high, got {score_range!r}")
    return pattern


def completions_url(url: str) -> str:
    """The chat-completions endpoint of a server URL: http://h:8001, http://h:8001/v1 and the full
    .../v1/chat/completions all give http://h:8001/v1/chat/completions."""
    base = url.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    return base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")


def png_data_uri(pixels) -> str:
    """(3, H, W) uint8 array -> a data:image/png;base64 URI."""
    buffer = io.BytesIO()
    Image.fromarray(pixels.transpose(1, 2, 0)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class VLMJudge(Reward):
    """The score a VLM on an OpenAI-compatible server gives each image (see the module docstring).

    url: server URL(s) (replicas comma-separated or a list); model: the served model's name;
    concurrency: requests in flight at once; max_tokens: reply length limit; timeout_s (per
    request, retries included), retries, backoff_s, max_response_bytes, token (the server's API
    key, sent as a bearer token): see rewards.client.ServiceClient."""

    name = "vlm_judge"

    def __init__(self, url, *, model: str, template: str = DEFAULT_TEMPLATE, score_regex: str = DEFAULT_SCORE_REGEX,
                 score_range=DEFAULT_SCORE_RANGE, concurrency: int = 8, max_tokens: int = 16, timeout_s: float = 120.0,
                 retries: int = 2, backoff_s: float = 0.5, max_response_bytes: int = 1 << 20, token: str | None = None):
        if not isinstance(model, str) or not model:
            raise ValueError(f"vlm_judge: model must be the served model's name (as in GET /v1/models), got {model!r}")
        self.pattern = check_judge_options(template, score_regex, score_range, lambda option: f"vlm_judge: {option}")
        for option, value in (("concurrency", concurrency), ("max_tokens", max_tokens)):
            if not is_int(value) or value < 1:
                raise ValueError(f"vlm_judge: {option} must be an int >= 1, got {value!r}")
        self.model, self.template, self.concurrency, self.max_tokens = model, template, concurrency, max_tokens
        self.low, self.high = float(score_range[0]), float(score_range[1])
        self.client = ServiceClient([completions_url(u) for u in parse_urls(url, "url")], what="reward 'vlm_judge'",
                                    timeout_s=timeout_s, retries=retries, backoff_s=backoff_s,
                                    max_response_bytes=max_response_bytes, token=token)

    def request(self, pixels, prompt: str) -> dict:
        """The chat-completions body for one image ((3, H, W) uint8) and its prompt."""
        content = [{"type": "image_url", "image_url": {"url": png_data_uri(pixels)}},
                   {"type": "text", "text": self.template.replace("{prompt}", prompt)}]
        return {"model": self.model, "messages": [{"role": "user", "content": content}], "max_tokens": self.max_tokens,
                "temperature": 0.0}

    def parse(self, reply: dict, url: str) -> float:
        """The reward in [0, 1] of one chat-completions reply; ValueError quoting the URL and the reply."""
        what = self.client.what
        try:
            text = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            text = None
        if not isinstance(text, str):
            raise ValueError(f"{what}: {url} replied without choices[0].message.content text: {preview(reply)}")
        match = self.pattern.search(text)
        if match is None:
            raise ValueError(f"{what}: no score in the reply of {url} (score_regex {self.pattern.pattern!r} found no match): "
                             f"{preview(text)}")
        found = match.group(1) if self.pattern.groups else match.group(0)
        try:
            value = float(found)
        except (TypeError, ValueError):
            raise ValueError(f"{what}: score_regex matched {found!r}, not a number, in the reply of {url}: {preview(text)}") from None
        if not self.low <= value <= self.high:
            raise ValueError(f"{what}: the score {value:g} in the reply of {url} is outside score_range [{self.low:g}, {self.high:g}]: "
                             f"{preview(text)}")
        return (value - self.low) / (self.high - self.low)

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        requests = [{"json": self.request(pixels, prompt)} for pixels, prompt in zip(quantize(images), prompts)]
        replies = self.client.post_many(requests, self.concurrency)
        return torch.tensor([self.parse(reply, url) for reply, url in replies], dtype=torch.float32)
