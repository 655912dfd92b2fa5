"""Rewards: weight-free ones, model rewards on tiny random-weight models built from configs, saved
to a tmp folder and loaded back through the real loading code, weighted sums, checks, HTTP."""
import contextlib
import json
import math
import os
import subprocess
import sys

import httpx
import pytest
import torch
import torch.nn.functional as F

from progrpo_fast.rewards import (
    HTTPReward,
    JpegCompressibility,
    MLPHead,
    RewardServer,
    WeightedReward,
    check_rewards,
    serve_reward,
)
from progrpo_fast.rewards.http import encode_request
from progrpo_fast.rewards.modeling import clip_pixels
from progrpo_fast.tasks import ShapesReward, caption, render, sample_scene
from progrpo_fast.train.reward_registry import REWARDS, build_reward

PROMPTS = ["a red circle", "two blue squares", "a cat", "a red circle"]
WIDTH = 32  # hidden size of every tiny tower


def smooth_images(batch: int = 4, size: int = 40, seed: int = 0) -> torch.Tensor:
    """Upsampled noise: images with structure at several scales, in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(batch, 3, 8, 8, generator=gen), size=(size, size), mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------- tiny models
def clip_tokenizer(folder):
    """A real CLIPTokenizer over printable ASCII characters (no merges): <|startoftext|> and
    <|endoftext|> take the two largest ids, as in CLIP."""
    from transformers import CLIPTokenizer

    chars = [chr(c) for c in range(ord("!"), ord("~") + 1)]
    vocab = {token: i for i, token in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>")


def tiny_clip(tokenizer, hidden_act="quick_gelu", seed=0):
    from transformers import CLIPConfig, CLIPModel

    vocab = len(tokenizer)
    common = dict(hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=2, num_attention_heads=4, hidden_act=hidden_act)
    config = CLIPConfig(text_config=dict(vocab_size=vocab, max_position_embeddings=32, bos_token_id=vocab - 2, eos_token_id=vocab - 1,
                                         pad_token_id=vocab - 1, **common),
                        vision_config=dict(image_size=32, patch_size=8, **common), projection_dim=16)
    torch.manual_seed(seed)
    return CLIPModel(config).eval()


def bert_tokenizer(folder, blip_tokens=True):
    from transformers import BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + "a an the red green blue circle square squares two of cat dog".split()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"))
    if blip_tokens:
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


def tiny_blip(vocab_size, seed=0):
    from transformers import BlipConfig, BlipForImageTextRetrieval

    common = dict(hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=2, num_attention_heads=4)
    config = BlipConfig(text_config=dict(vocab_size=vocab_size, encoder_hidden_size=WIDTH, max_position_embeddings=64, **common),
                        vision_config=dict(image_size=32, patch_size=8, layer_norm_eps=1e-6, **common), image_text_hidden_size=16)
    torch.manual_seed(seed)
    return BlipForImageTextRetrieval(config).eval()


def random_head(width, seed=1):
    torch.manual_seed(seed)
    head = MLPHead(width)
    for param in head.parameters():  # non-zero biases so every layer matters
        torch.nn.init.normal_(param, std=0.3)
    return head.eval()


def to_open_clip(state):
    """CLIPModel state dict -> open_clip keys (the inverse of hps.open_clip_to_transformers)."""
    out = {"logit_scale": state["logit_scale"], "visual.proj": state["visual_projection.weight"].t(),
           "text_projection": state["text_projection.weight"].t()}
    top = {"vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
           "vision_model.embeddings.class_embedding": "visual.class_embedding",
           "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
           "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
           "text_model.embeddings.position_embedding.weight": "positional_embedding"}
    out.update({new: state[old] for old, new in top.items()})
    for kind in ("weight", "bias"):
        out[f"visual.ln_pre.{kind}"] = state[f"vision_model.pre_layrnorm.{kind}"]
        out[f"visual.ln_post.{kind}"] = state[f"vision_model.post_layernorm.{kind}"]
        out[f"ln_final.{kind}"] = state[f"text_model.final_layer_norm.{kind}"]
        for src, dst in (("vision_model.encoder", "visual.transformer"), ("text_model.encoder", "transformer")):
            for i in range(2):
                s, d = f"{src}.layers.{i}.", f"{dst}.resblocks.{i}."
                for old, new in (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("self_attn.out_proj", "attn.out_proj"),
                                 ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                    out[f"{d}{new}.{kind}"] = state[f"{s}{old}.{kind}"]
                out[f"{d}attn.in_proj_{kind}"] = torch.cat([state[f"{s}self_attn.{p}_proj.{kind}"] for p in "qkv"])
    out["attn_mask"] = torch.full((32, 32), float("-inf")).triu(1)
    return {f"module.{key}": value for key, value in out.items()}


def to_imagereward(blip_state, head_state):
    """BlipForImageTextRetrieval + head state dicts -> the public ImageReward.pt keys (inverse of
    imagereward.imagereward_to_transformers)."""
    top = {"embeddings.class_embedding": "cls_token", "embeddings.position_embedding": "pos_embed",
           "embeddings.patch_embedding.weight": "patch_embed.proj.weight", "embeddings.patch_embedding.bias": "patch_embed.proj.bias",
           "post_layernorm.weight": "norm.weight", "post_layernorm.bias": "norm.bias"}
    block = {"layer_norm1": "norm1", "layer_norm2": "norm2", "self_attn.qkv": "attn.qkv", "self_attn.projection": "attn.proj",
             "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    out = {f"mlp.{key}": value for key, value in head_state.items()}
    for key, value in blip_state.items():
        if key.startswith("vision_model."):
            rest = key.removeprefix("vision_model.")
            if rest in top:
                out[f"blip.visual_encoder.{top[rest]}"] = value
            else:
                _, _, i, *name, kind = rest.split(".")
                out[f"blip.visual_encoder.blocks.{i}.{block['.'.join(name)]}.{kind}"] = value
        elif key.startswith(("text_encoder.", "vision_proj.", "text_proj.")):
            out[f"blip.{key}"] = value
    out["blip.text_encoder.embeddings.position_ids"] = torch.arange(64)[None]
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Folders (and checkpoint files) of every model reward, with the in-memory references."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("reward_models")
    tokenizer = clip_tokenizer(root / "clip_tokenizer_files")
    built = {"root": root}

    clip = tiny_clip(tokenizer)
    clip.save_pretrained(root / "clip")
    tokenizer.save_pretrained(root / "clip")
    built["clip"] = (clip, tokenizer)

    # aesthetic: a CLIP folder with the LAION head file name inside
    aesthetic_head = random_head(16)
    clip.save_pretrained(root / "aesthetic")
    torch.save(aesthetic_head.state_dict(), root / "aesthetic" / "sac+logos+ava1-l14-linearMSE.pth")
    built["aesthetic_head"] = aesthetic_head

    # hpsv2: exact-GELU CLIP (as open_clip ViT-H-14), as a folder and as an open_clip .pt with the tokenizer beside it
    hps = tiny_clip(tokenizer, hidden_act="gelu", seed=2)
    hps.save_pretrained(root / "hps")
    tokenizer.save_pretrained(root / "hps")
    (root / "hps_pt").mkdir()
    torch.save({"epoch": 1, "state_dict": to_open_clip(hps.state_dict())}, root / "hps_pt" / "HPS_v2.1_compressed.pt")
    tokenizer.save_pretrained(root / "hps_pt" / "tokenizer")
    built["hps"] = hps

    # imagereward: a converted folder, and the public-format .pt with a plain BERT tokenizer folder
    bert = bert_tokenizer(root / "bert_files")
    blip, head = tiny_blip(len(bert)), random_head(WIDTH, seed=3)
    blip.save_pretrained(root / "imagereward")
    bert.save_pretrained(root / "imagereward")
    save_file(head.state_dict(), str(root / "imagereward" / "imagereward_head.safetensors"))
    torch.save(to_imagereward(blip.state_dict(), head.state_dict()), root / "ImageReward.pt")
    bert_tokenizer(root / "bert_plain", blip_tokens=False).save_pretrained(root / "bert_plain")
    built["imagereward"] = (blip, head, bert)
    return built


MODEL_CASES = {
    "clipscore": lambda m: build_reward("clipscore", path=m["root"] / "clip"),
    "pickscore": lambda m: build_reward("pickscore", path=m["root"] / "clip"),
    "aesthetic": lambda m: build_reward("aesthetic", path=m["root"] / "aesthetic"),
    "hpsv2": lambda m: build_reward("hpsv2", path=m["root"] / "hps"),
    "hpsv2_open_clip_pt": lambda m: build_reward("hpsv2", path=m["root"] / "hps_pt" / "HPS_v2.1_compressed.pt",
                                                 vision_heads=4, text_heads=4),
    "imagereward": lambda m: build_reward("imagereward", path=m["root"] / "imagereward"),
    "imagereward_public_pt": lambda m: build_reward("imagereward", path=m["root"] / "ImageReward.pt",
                                                    tokenizer_path=m["root"] / "bert_plain", vision_heads=4, text_heads=4),
}


@pytest.fixture(scope="module")
def loaded(models):
    return {case: make(models) for case, make in MODEL_CASES.items()}


# --------------------------------------------------------------------------- model rewards
@pytest.mark.parametrize("case", MODEL_CASES)
def test_model_reward_shape_determinism_and_batch_order(loaded, case):
    reward = loaded[case]
    images = smooth_images()
    values = reward(images, PROMPTS)
    assert values.shape == (4,) and values.dtype == torch.float32 and torch.isfinite(values).all()
    assert torch.equal(values, reward(images, PROMPTS))
    assert values.unique().numel() > 1
    order = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(reward(images[order], [PROMPTS[i] for i in order]), values[order], rtol=1e-5, atol=1e-5)


def test_clipscore_and_pickscore_match_clipmodel_forward(models, loaded):
    clip, tokenizer = models["clip"]
    images = smooth_images(size=48)
    tokens = tokenizer(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = clip(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=clip_pixels(images, 32))
    cosine = (out.image_embeds * out.text_embeds).sum(-1)
    torch.testing.assert_close(loaded["clipscore"](images, PROMPTS), (100 * cosine).clamp(min=0), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(loaded["pickscore"](images, PROMPTS), out.logits_per_image.diagonal(), rtol=1e-5, atol=1e-4)


def test_aesthetic_is_the_head_on_the_normalised_image_embedding(models, loaded):
    clip, _ = models["clip"]
    images = smooth_images()
    with torch.no_grad():
        embedding = F.normalize(clip.visual_projection(clip.vision_model(pixel_values=clip_pixels(images, 32)).pooler_output), dim=-1)
        expected = models["aesthetic_head"](embedding)
    torch.testing.assert_close(loaded["aesthetic"](images, PROMPTS), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(loaded["aesthetic"](images, PROMPTS), loaded["aesthetic"](images, ["other"] * 4))  # prompt-free


def test_hpsv2_open_clip_checkpoint_equals_the_clip_folder(loaded):
    images = smooth_images(size=24)  # upsampled to 32: the pad fit is a plain resize for squares
    reference = loaded["hpsv2"](images, PROMPTS)
    torch.testing.assert_close(loaded["hpsv2_open_clip_pt"](images, PROMPTS), reference, rtol=1e-5, atol=1e-4)
    wide = smooth_images(size=48)[..., 8:40, :]  # 32 x 48: the longer side is fitted, the rest padded black
    assert torch.isfinite(loaded["hpsv2"](wide, PROMPTS)).all()


def test_imagereward_matches_blip_forward_and_the_public_checkpoint(models, loaded):
    blip, head, bert = models["imagereward"]
    images = smooth_images()
    tokens = bert(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    with torch.no_grad():
        image_tokens = blip.vision_model(pixel_values=clip_pixels(images, 32)).last_hidden_state
        hidden = blip.text_encoder(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                                   encoder_hidden_states=image_tokens).last_hidden_state[:, 0]
        expected = (head(hidden) - 0.16717362830052426) / 1.0333394966054072
    torch.testing.assert_close(loaded["imagereward"](images, PROMPTS), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loaded["imagereward_public_pt"](images, PROMPTS), expected, rtol=1e-5, atol=1e-5)


def test_conversion_commands_write_loadable_folders(models, tmp_path):
    from progrpo_fast.rewards import hps, imagereward

    root, images = models["root"], smooth_images()
    hps.main(["--checkpoint", str(root / "hps_pt" / "HPS_v2.1_compressed.pt"), "--tokenizer", str(root / "hps"),
              "--out", str(tmp_path / "hps"), "--vision-heads", "4", "--text-heads", "4"])
    imagereward.main(["--checkpoint", str(root / "ImageReward.pt"), "--tokenizer", str(root / "bert_plain"),
                      "--out", str(tmp_path / "ir"), "--vision-heads", "4", "--text-heads", "4"])
    torch.testing.assert_close(build_reward("hpsv2", path=tmp_path / "hps")(images, PROMPTS),
                               build_reward("hpsv2", path=root / "hps")(images, PROMPTS), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(build_reward("imagereward", path=tmp_path / "ir")(images, PROMPTS),
                               build_reward("imagereward", path=root / "imagereward")(images, PROMPTS), rtol=1e-5, atol=1e-5)


def test_clip_pixels_match_clip_image_processor():
    from transformers import CLIPImageProcessor

    image = smooth_images(1, size=64)[..., :, 4:60]  # 64 x 56: resize the shorter side, centre crop
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pil = (image[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    expected = processor(images=pil, return_tensors="pt")["pixel_values"]
    assert (clip_pixels(image, 32) - expected).abs().max() < 0.05  # PIL bicubic on uint8 vs torch antialiased bicubic: ~0.02


def test_model_rewards_follow_the_images_dtype_request(models):
    reward = build_reward("clipscore", path=models["root"] / "clip", dtype="bf16")
    values = reward(smooth_images(), PROMPTS)
    assert values.dtype == torch.float32 and torch.isfinite(values).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_model_reward_follows_the_images_to_the_gpu(models):
    reward, images = build_reward("pickscore", path=models["root"] / "clip"), smooth_images()
    on_cpu = reward(images, PROMPTS)
    on_gpu = reward(images.cuda(), PROMPTS)
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-4, atol=1e-3)


def test_model_reward_loading_errors(models, tmp_path):
    with pytest.raises(ValueError, match="reward.paths.pickscore"):
        build_reward("pickscore")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_reward("hpsv2", path=tmp_path / "missing.pt")
    models["clip"][0].save_pretrained(tmp_path / "no_tokenizer")
    with pytest.raises(ValueError, match="tokenizer_path"):
        build_reward("pickscore", path=tmp_path / "no_tokenizer")
    with pytest.raises(ValueError, match="no head file"):
        build_reward("aesthetic", path=tmp_path / "no_tokenizer")
    with pytest.raises(ValueError, match="imagereward_head"):
        build_reward("imagereward", path=tmp_path / "no_tokenizer")
    with pytest.raises(ValueError, match="unknown reward"):
        build_reward("nope")
    with pytest.raises(ValueError, match="takes no path"):
        build_reward("jpeg_compressibility", path="x")


# --------------------------------------------------------------------------- weight-free rewards
def test_jpeg_flat_image_is_more_compressible_than_noise():
    images = torch.cat([torch.full((1, 3, 64, 64), 0.5), torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))])
    compress = build_reward("jpeg_compressibility")(images, ["", ""])
    incompress = build_reward("jpeg_incompressibility")(images, ["", ""])
    assert compress[0] > compress[1] and torch.equal(incompress, -compress)
    assert 0 < -compress[0] < 2 and -compress[1] > 5  # kB


def test_shapes_reward_wraps_the_task_scorer():
    scenes = [sample_scene(seed) for seed in range(3)]
    images = torch.stack([render(scene, generator=i) for i, scene in enumerate(scenes)])
    prompts = [caption(scene) for scene in scenes]
    values = build_reward("shapes")(images, prompts)
    assert torch.equal(values, ShapesReward()(images, prompts)) and values.min() > 0.9


@pytest.mark.parametrize("bad, prompts, match", [
    (torch.rand(2, 4, 8, 8), ["a", "b"], r"\(B, 3, H, W\)"),
    (torch.rand(3, 8, 8), ["a", "b"], r"\(B, 3, H, W\)"),
    (torch.rand(2, 3, 8, 8) + 1, ["a", "b"], r"\[0, 1\]"),
    (torch.full((2, 3, 8, 8), float("nan")), ["a", "b"], "NaN"),
    (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), ["a", "b"], "floating"),
    (torch.rand(2, 3, 8, 8), ["a"], "2 images"),
    (torch.rand(2, 3, 8, 8), "ab", "list of strings"),
])
def test_bad_inputs_raise_clear_errors(loaded, bad, prompts, match):
    for reward in (JpegCompressibility(), build_reward("shapes"), loaded["clipscore"],
                   WeightedReward({"j": 1.0}, {"j": JpegCompressibility()})):
        with pytest.raises(ValueError, match=match):
            reward(bad, prompts)


# --------------------------------------------------------------------------- checks and sums
@pytest.mark.parametrize("values, match", [
    (torch.tensor([1.0, float("nan"), 2.0]), r"1 non-finite value\(s\) of 3: rows \[1\]"),
    (torch.tensor([1.0, 2.0, float("inf")]), "non-finite"),
    (torch.zeros(3, 1), r"shape \(3, 1\) for 3 images"),
    (torch.zeros(2), r"expected \(3,\)"),
    ([0.0, 1.0, 2.0], "returned a list"),
    (torch.zeros(3, dtype=torch.long), "floating"),
])
def test_check_rewards_names_the_reward_and_what_it_returned(values, match):
    with pytest.raises(ValueError, match=f"reward 'judge'.*{match}"):
        check_rewards(values, 3, "judge")


def test_check_rewards_passes_good_values():
    values = torch.tensor([0.5, -1.0, 3.0])
    assert check_rewards(values, 3, "judge") is values


def test_weighted_reward_sums_its_components():
    scenes = [sample_scene(seed) for seed in range(2)]
    images, prompts = torch.stack([render(scene) for scene in scenes]), [caption(scene) for scene in scenes]
    jpeg, shapes = JpegCompressibility(), build_reward("shapes")
    weighted = WeightedReward({"jpeg_compressibility": 0.5, "shapes": 2.0}, {"jpeg_compressibility": jpeg, "shapes": shapes})
    components = weighted.components(images, prompts)
    assert set(components) == {"jpeg_compressibility", "shapes"} and weighted.weights == {"jpeg_compressibility": 0.5, "shapes": 2.0}
    assert torch.equal(components["shapes"], shapes(images, prompts))
    torch.testing.assert_close(weighted(images, prompts), 0.5 * jpeg(images, prompts) + 2.0 * shapes(images, prompts))


def test_weighted_reward_errors():
    def broken(images, prompts):
        return torch.full((images.shape[0],), float("nan"))

    with pytest.raises(ValueError, match="one weight per reward"):
        WeightedReward({"a": 1.0}, {"b": JpegCompressibility()})
    with pytest.raises(ValueError, match="finite number"):
        WeightedReward({"a": math.inf}, {"a": JpegCompressibility()})
    with pytest.raises(ValueError, match="reward 'broken' returned 2 non-finite"):
        WeightedReward({"jpeg": 1.0, "broken": 1.0}, {"jpeg": JpegCompressibility(), "broken": broken})(torch.rand(2, 3, 8, 8), ["a", "b"])


def test_registry_names():
    assert set(REWARDS) == {"jpeg_compressibility", "jpeg_incompressibility", "shapes", "pickscore", "hpsv2", "imagereward",
                            "clipscore", "aesthetic", "http", "vlm_judge", "temporal_consistency", "moving_shapes"}


# --------------------------------------------------------------------------- HTTP
# the service and its client in depth: tests/test_reward_service.py
def test_http_round_trip_equals_the_local_reward():
    local, images = JpegCompressibility(), smooth_images(3)
    with RewardServer(local) as server:
        assert httpx.get(f"{server.url}/health", timeout=5).json()["reward"] == "jpeg_compressibility"
        remote = build_reward("http", url=server.url)
        assert torch.equal(remote(images, PROMPTS[:3]), local(images, PROMPTS[:3]))
        reply = httpx.post(f"{server.url}/score", content=encode_request(images, PROMPTS[:2]), timeout=5)
        assert reply.status_code == 400 and "prompts must be a list of 3 strings" in reply.json()["error"]  # the server checks requests too


def test_serve_reward_returns_the_bound_port():
    port = serve_reward(JpegCompressibility())  # a daemon thread: lives until the test process ends
    images = smooth_images(2)
    assert torch.equal(HTTPReward(f"http://localhost:{port}/score")(images, ["a", "b"]), JpegCompressibility()(images, ["a", "b"]))


def test_http_reward_needs_a_url():
    with pytest.raises(ValueError, match=r"reward 'http' needs url \(config: reward\.http_url="):
        build_reward("http")
    with pytest.raises(ValueError, match=r"reward 'vlm_judge' needs url and model \(config: reward\.vlm_url="):
        build_reward("vlm_judge", url="http://127.0.0.1:8001")


@contextlib.contextmanager
def served(command: list[str], reward: str, env: dict | None = None):
    """Starts a reward server command on a free loopback port; yields its URL; stops it."""
    process = subprocess.Popen([sys.executable, "-m", *command, "--reward", reward, "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    try:
        line = process.stdout.readline()
        assert line.startswith(f"serving reward '{reward}' at http://127.0.0.1:"), line + process.stderr.read()
        yield line.split(" at ")[1].split()[0]
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_http_server_command_with_a_token():
    with served(["progrpo_fast.rewards.service"], "jpeg_incompressibility", env={"PROGRPO_FAST_REWARD_TOKEN": "secret-1"}) as url:
        images = smooth_images(2)
        with pytest.raises(ValueError, match="401"):
            HTTPReward(url, timeout_s=10)(images, ["a", "b"])
        remote = HTTPReward(url, timeout_s=10, token="secret-1")
        assert torch.equal(remote(images, ["a", "b"]), build_reward("jpeg_incompressibility")(images, ["a", "b"]))


def test_cli_serves_a_task_reward():
    """`progrpo-fast serve-reward` knows the tasks' rewards too (rewards itself knows no task)."""
    from progrpo_fast.tasks import ShapesScore, caption, sample_scene

    with served(["progrpo_fast", "serve-reward"], "shapes") as url:
        images = smooth_images(2)
        prompts = [caption(sample_scene(i)) for i in range(2)]
        assert torch.equal(HTTPReward(url, timeout_s=10)(images, prompts), ShapesScore()(images, prompts))
