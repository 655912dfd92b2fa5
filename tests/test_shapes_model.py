"""The built-in tiny SD3 model: stock-pipeline sampling, save/load round trip, shipped assets, tokenizer."""
from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from progrpo_fast.models import shapes_model as sm  # noqa: E402
from progrpo_fast.tasks.shapes import caption, sample_scene  # noqa: E402
from progrpo_fast.tasks.tokenizer import WordTokenizer  # noqa: E402


def sample(pipe, prompts, steps=2, guidance_scale=sm.GUIDANCE_SCALE, seed=0):
    return pipe(prompts, height=sm.RESOLUTION, width=sm.RESOLUTION, num_inference_steps=steps,
                guidance_scale=guidance_scale, max_sequence_length=sm.T5_TOKENS,
                generator=torch.Generator().manual_seed(seed), output_type="pt").images


@pytest.fixture(scope="module")
def random_pipe():
    return sm.build_shapes_pipeline(seed=0)


def test_stock_pipeline_samples_with_cfg_and_empty_prompt(random_pipe):
    assert isinstance(random_pipe, diffusers.StableDiffusion3Pipeline)
    images = sample(random_pipe, ["two red circles left of a blue square", "a green triangle"])
    assert images.shape == (2, 3, sm.RESOLUTION, sm.RESOLUTION)
    assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    empty = sample(random_pipe, [""], guidance_scale=1.0)  # the CFG negative prompt on its own
    assert empty.shape == (1, 3, sm.RESOLUTION, sm.RESOLUTION)
    assert not torch.equal(sample(random_pipe, ["a red circle"]), sample(random_pipe, ["three blue squares"]))


def test_latent_and_token_shapes(random_pipe):
    assert random_pipe.vae_scale_factor * sm.LATENT_SIZE == sm.RESOLUTION
    embeds, _, pooled, _ = random_pipe.encode_prompt(["a red circle"], None, None, do_classifier_free_guidance=False,
                                                     max_sequence_length=sm.T5_TOKENS)
    assert embeds.shape == (1, sm.TOKENIZER_MAX_LENGTH + sm.T5_TOKENS, random_pipe.transformer.config.joint_attention_dim)
    assert pooled.shape == (1, random_pipe.transformer.config.pooled_projection_dim)


def test_save_load_round_trip(random_pipe, tmp_path):
    random_pipe.save_pretrained(tmp_path / "pipe", safe_serialization=True)
    loaded = sm.load_shapes_pipeline(tmp_path / "pipe")
    prompts = ["three yellow triangles right of three green circles", "a blue square"]
    assert torch.equal(sample(random_pipe, prompts), sample(loaded, prompts))
    assert loaded.tokenizer("a red circle").input_ids == random_pipe.tokenizer("a red circle").input_ids


def test_missing_path_error_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="pretrain_shapes.py"):
        sm.load_shapes_pipeline(tmp_path / "nowhere")


def test_tokenizer_matches_task_tokenizer(random_pipe):
    task = WordTokenizer()
    tok = random_pipe.tokenizer
    captions = [caption(sample_scene(seed)) for seed in range(50)] + ["a red circle", "Two  GREEN squares"]
    ids = tok(captions, padding="max_length", max_length=sm.TOKENIZER_MAX_LENGTH, truncation=True,
              return_tensors="pt").input_ids
    expected, _ = task.encode(captions)
    bos, eos = tok.bos_token_id, tok.eos_token_id
    assert (bos, eos, tok.pad_token_id, tok.unk_token_id) == (task.vocab_size, task.vocab_size + 1, 0, 1)
    for row, want in zip(ids.tolist(), expected.tolist()):
        words = [i for i in want if i != task.pad_id]
        assert row == [bos, *words, eos] + [0] * (len(row) - len(words) - 2)
    assert tok.batch_decode(ids[:1], skip_special_tokens=True) == [captions[0]]
    empty = tok([""], padding="max_length", max_length=sm.TOKENIZER_MAX_LENGTH, return_tensors="pt").input_ids
    assert empty[0, :2].tolist() == [bos, eos]
    assert tok(["a red dog"]).input_ids[0][3] == tok.unk_token_id
    # the CLIP encoders pool at the first <eos>
    assert random_pipe.text_encoder.config.eos_token_id == eos != 2
    assert random_pipe.text_encoder.config.vocab_size == len(tok)


@pytest.mark.skipif(not (sm.SHAPES_MODEL_DIR / "model_index.json").is_file(),
                    reason="shipped weights absent (python scripts/pretrain_shapes.py writes them)")
def test_shipped_assets_load_and_sample():
    pipe = sm.load_shapes_pipeline()
    assert isinstance(pipe, diffusers.StableDiffusion3Pipeline)
    images = sample(pipe, ["a red circle", "two blue squares above a green triangle", "three yellow triangles"],
                    steps=sm.NUM_STEPS)
    assert images.shape == (3, 3, sm.RESOLUTION, sm.RESOLUTION)
    assert torch.isfinite(images).all()
    size = sum(f.stat().st_size for f in sm.SHAPES_MODEL_DIR.rglob("*") if f.is_file())
    assert size <= 20 * 2**20


def test_sample_cli_writes_an_enlarged_grid_of_the_shipped_model(tmp_path):
    from PIL import Image

    from progrpo_fast.cli import main

    out = tmp_path / "samples.png"
    assert main(["sample", "--config", "shapes", "--prompt", "a red circle", "--prompt", "two blue squares",
                 "--per-prompt", "3", "--out", str(out)]) == 0
    tile = sm.RESOLUTION * (128 // sm.RESOLUTION)  # 32 px images drawn at 128 px
    assert Image.open(out).size == (3 * tile, 2 * tile)
