"""The reward service and its clients against real uvicorn servers on 127.0.0.1: the served reward
(batching, token, size cap, /health), the client against misbehaving servers (slow drip, 5xx,
oversized, redirects, bad replies, dead replicas, proxies in the environment), the VLM judge
against a fake OpenAI-compatible server, and the config keys that build them."""
import asyncio
import base64
import io
import re
import resource
import socket
import threading
import time

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from starlette.applications import Starlette
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from progrpo_fast import cli
from progrpo_fast.rewards import HTTPReward, JpegCompressibility, Reward, RewardServer, VLMJudge
from progrpo_fast.rewards.http import quantize
from progrpo_fast.rewards.service import AppServer
from progrpo_fast.train.build import build_reward
from progrpo_fast.train.config import Config, apply_overrides

TOKEN = "test-token-0123456789"


def images(batch: int = 1, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def in_threads(calls) -> list:
    """Runs each zero-argument call in its own thread, all released at once; their results or exceptions."""
    results, barrier = [None] * len(calls), threading.Barrier(len(calls))

    def run(i):
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as err:
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


class Picky(Reward):
    """Mean brightness; the prompt "bad" is refused (ValueError), "crash" fails (RuntimeError)."""

    name = "picky"

    def score(self, images, prompts):
        if "bad" in prompts:
            raise ValueError("cannot score the prompt 'bad'")
        if "crash" in prompts:
            raise RuntimeError("CUDA out of memory (simulated)")
        return images.mean(dim=(1, 2, 3))


# --------------------------------------------------------------------------- the served reward
@pytest.fixture(scope="module")
def jpeg_server():
    with RewardServer(JpegCompressibility(), model="(none)") as server:
        yield server


def test_round_trip_equals_the_local_reward(jpeg_server):
    batch = images(3, 24)
    remote = HTTPReward(jpeg_server.url, timeout_s=10)
    assert torch.equal(remote(batch, ["a", "b", "c"]), JpegCompressibility()(batch, ["a", "b", "c"]))


def test_health_reports_the_reward_version_and_counts(jpeg_server):
    import progrpo_fast

    health = httpx.get(f"{jpeg_server.url}/health", timeout=5).json()
    assert health["status"] == "ok" and health["reward"] == "jpeg_compressibility" and health["model"] == "(none)"
    assert health["version"] == progrpo_fast.__version__ and health["max_batch"] == 64 and health["token_required"] is False
    assert health["requests"] >= 0 and health["reward_calls"] <= health["requests"]
    missing = httpx.get(f"{jpeg_server.url}/nope", timeout=5)
    assert missing.status_code == 404 and "use GET /health or POST /score" in missing.json()["error"]


def test_concurrent_requests_are_batched_into_fewer_reward_calls():
    with RewardServer(JpegCompressibility(), max_wait_ms=300, max_batch=64) as server:
        batch = images(8, 16)
        results = in_threads([lambda i=i: HTTPReward(server.url, timeout_s=10)(batch[i:i + 1], ["x"]) for i in range(8)])
        health = httpx.get(f"{server.url}/health", timeout=5).json()
    expected = JpegCompressibility()(batch, ["x"] * 8)
    assert all(torch.equal(result, expected[i:i + 1]) for i, result in enumerate(results)), results
    assert health["requests"] == 8 and health["reward_calls"] < 8, health
    print(f"8 concurrent single-image requests -> {health['reward_calls']} reward call(s)")


def test_max_batch_and_image_sizes_split_the_calls():
    with RewardServer(JpegCompressibility(), max_wait_ms=300, max_batch=4) as server:
        calls = [lambda: HTTPReward(server.url)(images(3, 16), ["x"] * 3), lambda: HTTPReward(server.url)(images(3, 16), ["x"] * 3),
                 lambda: HTTPReward(server.url)(images(1, 24), ["x"])]
        results = in_threads(calls)
        health = httpx.get(f"{server.url}/health", timeout=5).json()
    assert [tuple(r.shape) for r in results] == [(3,), (3,), (1,)]
    assert health["reward_calls"] == 3, health  # 3 + 3 images exceed max_batch=4; the 24-px image is a call of its own


def test_one_bad_request_fails_only_itself():
    with RewardServer(Picky(), max_wait_ms=300) as server:
        batch = images(4, 8)
        prompts = ["a", "bad", "c", "d"]
        results = in_threads([lambda i=i: HTTPReward(server.url, retries=0)(batch[i:i + 1], [prompts[i]]) for i in range(4)])
    assert isinstance(results[1], ValueError) and "(400 Bad Request): cannot score the prompt 'bad'" in str(results[1])
    for i in (0, 2, 3):
        assert torch.allclose(results[i], quantize(batch[i:i + 1]).astype(np.float32).mean() / 255 * torch.ones(1), atol=1e-6)


def test_a_failing_reward_is_a_500_that_the_client_retries_then_reports():
    with RewardServer(Picky()) as server:
        start = time.perf_counter()
        with pytest.raises(ConnectionError, match=r"after 2 attempt\(s\).*500 Internal Server Error: RuntimeError: CUDA out of memory"):
            HTTPReward(server.url, retries=1, backoff_s=0.05, timeout_s=5)(images(1), ["crash"])
        assert time.perf_counter() - start < 3


def test_token_is_required_and_checked():
    with RewardServer(JpegCompressibility(), token=TOKEN) as server:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            reply = httpx.get(f"{server.url}/health", headers=headers, timeout=5)
            assert reply.status_code == 401 and reply.headers["www-authenticate"] == "Bearer", headers
            assert "PROGRPO_FAST_REWARD_TOKEN" in reply.json()["error"]
        assert httpx.get(f"{server.url}/health", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5).json()["token_required"]
        start = time.perf_counter()
        with pytest.raises(ValueError, match=rf"{re.escape(server.url)}/score rejected the request \(401 Unauthorized\): missing or wrong"):
            HTTPReward(server.url, retries=3, backoff_s=1)(images(1), ["a"])
        assert time.perf_counter() - start < 1, "a 4xx is not retried"
        batch = images(2)
        assert torch.equal(HTTPReward(server.url, token=TOKEN)(batch, ["a", "b"]), JpegCompressibility()(batch, ["a", "b"]))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "reward-node.example"])
def test_a_non_loopback_address_needs_a_token(host):
    with pytest.raises(ValueError, match=rf"refusing to serve on '{re.escape(host)}' without a token.*PROGRPO_FAST_REWARD_TOKEN.*--token"):
        RewardServer(JpegCompressibility(), host=host)


def test_the_command_refuses_a_public_address_without_a_token(monkeypatch, capsys):
    monkeypatch.delenv("PROGRPO_FAST_REWARD_TOKEN", raising=False)
    assert cli.main(["serve-reward", "--reward", "jpeg_compressibility", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "refusing to serve on '0.0.0.0' without a token" in capsys.readouterr().err


def test_request_size_cap_is_a_413():
    with RewardServer(JpegCompressibility(), max_request_bytes=1000) as server:
        with pytest.raises(ValueError, match=r"rejected the request \(413 [^)]*\): request body over the server's cap of 1000 bytes"):
            HTTPReward(server.url)(images(1, 32), ["a"])
        assert httpx.post(f"{server.url}/score", content=b"x" * 999, timeout=5).status_code == 400  # under the cap: decoded


def test_server_options_are_checked():
    for kwargs, match in (({"max_batch": 0}, "max_batch must be an int >= 1"), ({"port": 70000}, r"port must be an int in \[0, 65535\]"),
                          ({"max_wait_ms": float("nan")}, "max_wait_ms must be a finite number"),
                          ({"token": "has space"}, "token must be a non-empty string of printable ASCII")):
        with pytest.raises(ValueError, match=match):
            RewardServer(JpegCompressibility(), **kwargs)


# --------------------------------------------------------------------------- misbehaving servers
REPLIES = {  # path -> (body, what the error says)
    "null": (b'{"scores": null}', r'replied .*expected \{"scores": \[1 finite numbers\]\}'),
    "null-item": (b'{"scores": [null]}', "replied null as score 0"),
    "bool": (b'{"scores": [true]}', "replied true as score 0"),
    "string": (b'{"scores": ["0.5"]}', r'replied "0\.5" as score 0'),
    "infinite": (b'{"scores": [1e999]}', "replied Infinity as score 0"),
    "nan": (b'{"scores": [NaN]}', "invalid JSON .*NaN is not a number JSON allows"),
    "list": (b"[0.5]", "replied with a JSON list where an object was expected"),
    "length": (b'{"scores": [0.5, 0.5]}', "replied 2 scores for 1 images"),
    "missing": (b'{"score": [0.5]}', r'expected \{"scores"'),
    "truncated": (b'{"scores": [0.5', "replied with invalid JSON"),
    "html": (b"<html>Bad Gateway</html>", "replied with invalid JSON .*<html>Bad Gateway"),
}


@pytest.fixture(scope="module")
def bad_server():
    """Misbehaving endpoints; ``hits`` counts requests per path."""
    hits = {}

    def counted(handler):
        async def endpoint(request):
            hits[request.url.path] = hits.get(request.url.path, 0) + 1
            return await handler(request, hits[request.url.path])
        return endpoint

    async def drip(request, hit):  # headers at once, then a byte every 0.1 s, forever
        async def body():
            yield b'{"scores": ['
            while True:
                await asyncio.sleep(0.1)
                yield b" "
        return StreamingResponse(body(), media_type="application/json")

    async def stall(request, hit):  # never answers (returns once the client has gone)
        while not await request.is_disconnected():
            await asyncio.sleep(0.05)

    async def busy(request, hit):  # 503 twice, then the scores
        return JSONResponse({"error": "warming up"}, 503) if hit <= 2 else JSONResponse({"scores": [0.25]})

    async def fail(request, hit):
        return JSONResponse({"error": "model crashed"}, 500)

    async def huge(request, hit):  # 600 MB, with or without announcing it
        async def body():
            chunk = b"0" * (1 << 20)
            for _ in range(600):
                yield chunk
                await asyncio.sleep(0)  # lets the server see a client that left
        headers = {"content-length": str(600 << 20)} if request.url.path.endswith("announced") else None
        return StreamingResponse(body(), headers=headers, media_type="application/json")

    async def redirect(request, hit):
        return RedirectResponse("http://127.0.0.1:9/elsewhere", 307)

    async def canned(request, hit):
        return Response(REPLIES[request.path_params["kind"]][0], media_type="application/json")

    async def cut(request, hit):  # announces 100 bytes, sends 12, closes: a truncated transfer
        return Response(b'{"scores": [', headers={"content-length": "100"})

    routes = [Route(f"/{name}", counted(handler), methods=["POST"]) for name, handler in
              (("drip", drip), ("stall", stall), ("busy", busy), ("fail", fail), ("huge", huge), ("huge-announced", huge),
               ("redirect", redirect), ("cut", cut))]
    routes.append(Route("/reply/{kind}", counted(canned), methods=["POST"]))
    with AppServer(Starlette(routes=routes)) as server:
        server.hits = hits
        yield server


@pytest.mark.parametrize("path", ["drip", "stall"])
def test_a_slow_server_fails_at_the_total_deadline(bad_server, path):
    reward = HTTPReward(f"{bad_server.url}/{path}", timeout_s=1.0, retries=2, backoff_s=0.1)
    start = time.perf_counter()
    with pytest.raises(ConnectionError, match=rf"after 1 attempt\(s\) in 1\.\d s \(deadline timeout_s=1 s, retries=2\): "
                                              rf"{bad_server.url}/{path}: no complete reply before the deadline"):
        reward(images(1), ["a"])
    elapsed = time.perf_counter() - start
    print(f"{path}: failed after {elapsed:.3f} s (deadline 1 s)")
    assert 1.0 <= elapsed < 1.5


def test_503_is_retried_until_it_answers(bad_server):
    start = time.perf_counter()
    scores = HTTPReward(f"{bad_server.url}/busy", retries=2, backoff_s=0.05, timeout_s=5)(images(1), ["a"])
    assert scores.tolist() == [0.25] and bad_server.hits["/busy"] == 3
    assert time.perf_counter() - start < 1


def test_500_forever_fails_after_the_retries(bad_server):
    with pytest.raises(ConnectionError, match=r"after 3 attempt\(s\).*retries=2\).*500 Internal Server Error: model crashed"):
        HTTPReward(f"{bad_server.url}/fail", retries=2, backoff_s=0.05, timeout_s=5)(images(1), ["a"])
    assert bad_server.hits["/fail"] == 3


@pytest.mark.parametrize("path, match", [("huge", "sent a reply of more than 1048576 bytes, over the cap .*; stopped reading"),
                                         ("huge-announced", "announced a reply of 629145600 bytes, over the cap .*; not read")])
def test_an_oversized_reply_is_capped(bad_server, path, match):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    with pytest.raises(ValueError, match=rf"{bad_server.url}/{path} {match}") as error:
        HTTPReward(f"{bad_server.url}/{path}", timeout_s=10)(images(1), ["a"])
    assert time.perf_counter() - start < 2 and "(config: reward.http_max_response_bytes)" in str(error.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 100 * 1024, "the reply was buffered"


def test_a_redirect_is_refused(bad_server):
    with pytest.raises(ValueError, match=rf"{bad_server.url}/redirect answered 307 Temporary Redirect redirecting to "
                                         r"'http://127.0.0.1:9/elsewhere'; redirects are not followed"):
        HTTPReward(f"{bad_server.url}/redirect")(images(1), ["a"])


@pytest.mark.parametrize("kind", REPLIES)
def test_a_bad_reply_is_a_clear_error_naming_the_url(bad_server, kind):
    url = f"{bad_server.url}/reply/{kind}"
    with pytest.raises(ValueError, match=rf"reward 'http': {re.escape(url)} .*{REPLIES[kind][1]}"):
        HTTPReward(url, retries=2)(images(1), ["a"])
    assert bad_server.hits[f"/reply/{kind}"] == 1, "a bad reply is not retried"


def test_a_truncated_transfer_is_retried_then_reported(bad_server):
    with pytest.raises(ConnectionError, match=rf"{bad_server.url}/cut: RemoteProtocolError"):
        HTTPReward(f"{bad_server.url}/cut", retries=1, backoff_s=0.05, timeout_s=5)(images(1), ["a"])
    assert bad_server.hits["/cut"] == 2


def test_a_dead_replica_is_skipped(jpeg_server):
    dead = f"http://127.0.0.1:{free_port()}"
    reward = HTTPReward([dead, jpeg_server.url], retries=0, timeout_s=5)
    batch = images(2)
    for _ in range(3):  # rotation starts at the dead one, then the refusing replica goes last
        assert torch.equal(reward(batch, ["a", "b"]), JpegCompressibility()(batch, ["a", "b"]))
    assert reward.client.urls == [f"{dead}/score", f"{jpeg_server.url}/score"]


def test_all_replicas_dead_names_them_and_how_to_start_one():
    dead = [f"http://127.0.0.1:{free_port()}", f"http://localhost:{free_port()}/score"]
    start = time.perf_counter()
    with pytest.raises(ConnectionError, match=rf"no usable answer from {dead[0]}/score, {dead[1]} after 4 attempt\(s\).*"
                                              r"cannot connect.*progrpo-fast serve-reward"):
        HTTPReward(",".join(dead), retries=1, backoff_s=0.05, timeout_s=5)(images(1), ["a"])
    assert time.perf_counter() - start < 2


def test_proxy_variables_are_ignored(jpeg_server, monkeypatch):
    proxy = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, proxy)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    batch = images(1)
    assert torch.equal(HTTPReward(jpeg_server.url, retries=0, timeout_s=5)(batch, ["a"]), JpegCompressibility()(batch, ["a"]))


def test_the_client_works_inside_a_running_event_loop(jpeg_server):
    batch = images(1)

    async def inside():
        return HTTPReward(jpeg_server.url)(batch, ["a"])

    assert torch.equal(asyncio.run(inside()), JpegCompressibility()(batch, ["a"]))


@pytest.mark.parametrize("kwargs, match", [
    ({"url": "localhost:8000"}, "url must start with http:// or https://"),
    ({"url": []}, "url must name at least one URL"),
    ({"url": "http://a:99999"}, "is not a valid URL"),
    ({"url": "http://user:pw@a:1"}, "must have no query, fragment or user:password"),
    ({"timeout_s": 0}, "timeout_s must be a finite number > 0"),
    ({"retries": -1}, "retries must be an int >= 0"),
    ({"retries": True}, "retries must be an int >= 0"),
    ({"backoff_s": float("inf")}, "backoff_s must be a finite number >= 0"),
    ({"max_response_bytes": 0}, "max_response_bytes must be an int >= 1"),
    ({"token": "two words"}, "token must be a non-empty string of printable ASCII without spaces"),
])
def test_client_options_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HTTPReward(**{"url": "http://127.0.0.1:8000", **kwargs})


# --------------------------------------------------------------------------- the VLM judge
@pytest.fixture(scope="module")
def judge():
    """A fake OpenAI-compatible judge: answers 'Score: 10 * mean brightness/10' ("unrateable" prompts: no number)."""
    seen = {"auth": [], "models": [], "texts": [], "in_flight": 0, "most_in_flight": 0}

    async def completions(request):
        seen["in_flight"] += 1
        seen["most_in_flight"] = max(seen["most_in_flight"], seen["in_flight"])
        body = await request.json()
        seen["auth"].append(request.headers.get("authorization"))
        seen["models"].append(body["model"])
        image, text = body["messages"][0]["content"]
        seen["texts"].append(text["text"])
        png = base64.b64decode(image["image_url"]["url"].removeprefix("data:image/png;base64,"))
        brightness = np.asarray(Image.open(io.BytesIO(png))).astype(np.float64).mean() / 255
        await asyncio.sleep(0.05)
        seen["in_flight"] -= 1
        answer = "I cannot rate this image." if "unrateable" in text["text"] else f"Score: {10 * brightness:.6f}/10"
        return JSONResponse({"id": "chatcmpl-1", "object": "chat.completion", "model": body["model"],
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}]})

    with AppServer(Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])) as server:
        server.seen = seen
        yield server


def test_vlm_judge_scores_each_image_end_to_end(judge):
    batch = images(6, 12, seed=3)
    reward = VLMJudge(f"{judge.url}/v1", model="fake-vl", template="Rate '{prompt}' from 0 to 10.", concurrency=2, token=TOKEN)
    scores = reward(batch, [f"prompt {i}" for i in range(6)])
    expected = torch.from_numpy(quantize(batch).astype(np.float64).mean(axis=(1, 2, 3)) / 255).float()
    assert torch.allclose(scores, expected, atol=1e-5), (scores, expected)
    assert sorted(judge.seen["texts"][-6:]) == [f"Rate 'prompt {i}' from 0 to 10." for i in range(6)]
    assert set(judge.seen["auth"][-6:]) == {f"Bearer {TOKEN}"} and set(judge.seen["models"][-6:]) == {"fake-vl"}
    assert judge.seen["most_in_flight"] == 2


def test_vlm_judge_unparseable_and_out_of_range_replies(judge):
    reward = VLMJudge(judge.url, model="fake-vl")
    url = f"{judge.url}/v1/chat/completions"
    with pytest.raises(ValueError, match=rf"no score in the reply of {re.escape(url)} .*'I cannot rate this image\.'"):
        reward(images(2), ["fine", "unrateable"])
    strict = VLMJudge(judge.url, model="fake-vl", score_regex=r"Score: ([\d.]+)", score_range=(0, 1))
    with pytest.raises(ValueError, match=r"the score \S+ in the reply of .* is outside score_range \[0, 1\]"):
        strict(torch.ones(1, 3, 8, 8), ["white"])


@pytest.mark.parametrize("kwargs, match", [
    ({"model": ""}, "vlm_judge: model must be the served model's name"),
    ({"template": "no placeholder"}, r"vlm_judge: template must be a string containing \{prompt\}"),
    ({"score_regex": "("}, "vlm_judge: score_regex '\\(' is not a valid regular expression"),
    ({"score_range": (1, 1)}, "vlm_judge: score_range must be two finite numbers low < high"),
    ({"concurrency": 0}, "vlm_judge: concurrency must be an int >= 1"),
])
def test_vlm_judge_options_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VLMJudge(**{"url": "http://127.0.0.1:8001", "model": "m", **kwargs})


# --------------------------------------------------------------------------- config keys
def test_config_builds_the_service_rewards(monkeypatch):
    monkeypatch.setenv("PROGRPO_FAST_REWARD_TOKEN", TOKEN)
    monkeypatch.delenv("JUDGE_KEY", raising=False)
    config = apply_overrides(Config(), [
        "reward.weights={http: 1.0, vlm_judge: 0.5}", "reward.http_url=http://a:8000, https://b:8443/score",
        "reward.http_timeout_s=5", "reward.http_retries=0", "reward.http_max_response_bytes=4096",
        "reward.vlm_url=http://judge:8001/v1", "reward.vlm_model=Qwen/Qwen2.5-VL-7B-Instruct", "reward.vlm_score_range=[1, 5]",
        "reward.vlm_token_env=JUDGE_KEY"])
    rewards = build_reward(config).rewards
    client = rewards["http"].client
    assert client.urls == ["http://a:8000/score", "https://b:8443/score"] and client.timeout_s == 5 and client.retries == 0
    assert client.max_response_bytes == 4096 and client.headers["Authorization"] == f"Bearer {TOKEN}"
    judge = rewards["vlm_judge"]
    assert judge.client.urls == ["http://judge:8001/v1/chat/completions"] and (judge.low, judge.high) == (1, 5)
    assert "Authorization" not in judge.client.headers and judge.model == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert "http_token_env: PROGRPO_FAST_REWARD_TOKEN" in config.to_yaml() and TOKEN not in config.to_yaml()


@pytest.mark.parametrize("overrides, match", [
    (["reward.http_url=http://a:8000,localhost:1"], r"'reward\.http_url' must start with http:// or https://.*'localhost:1'"),
    (["reward.http_timeout_s=0"], r"'reward\.http_timeout_s' must be > 0"),
    (["reward.http_retries=-1"], r"'reward\.http_retries' must be >= 0"),
    (["reward.http_token_env=not-a-name"], r"'reward\.http_token_env' must be null or an environment variable name"),
    (["reward.weights={vlm_judge: 1.0}", "reward.vlm_url=http://j:1"], r"uses the 'vlm_judge' reward: set reward\.vlm_url.*vlm_model"),
    (["reward.vlm_template=Rate it"], r"config key 'reward\.vlm_template' must be a string containing \{prompt\}"),
    (["reward.vlm_score_regex=(["], r"config key 'reward\.vlm_score_regex' '\(\[' is not a valid regular expression"),
    (["reward.vlm_score_range=[10, 0]"], r"config key 'reward\.vlm_score_range' must be two finite numbers low < high"),
])
def test_config_errors_name_the_key(overrides, match):
    with pytest.raises(ValueError, match=match):
        apply_overrides(Config(), overrides)
