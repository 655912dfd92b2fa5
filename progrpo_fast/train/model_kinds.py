"""Every value of config.model.kind in one table, ``MODEL_KINDS``: how the kind's Denoiser adapter
is built and the facts config validation checks (flow or diffusion, image or video, whether it
needs a model.path, latent packing). Config validation (train.config) and model building
(train.build) both read it; adding a kind is one entry here.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelKind:
    """One model.kind.

    name: the config value.
    build: (config.model, device, torch dtype) -> the Denoiser adapter.
    flow: a flow-matching model (sampler.method sde, cps or ode); False: a diffusion (epsilon)
        model, sampled with DDIM only.
    video: generates videos: model.width and model.num_frames apply, image rewards score frames.
    download: the Hub repository whose local copy model.path must name (the hint when it is
        missing); None: the kind needs no path (shipped or random weights).
    random_weights_of: the kind builds random weights at this loading kind's published size and
        takes no model.path; None: it loads weights.
    packed_name: the model's name when its latents are 2x2-packed (model.resolution must be a
        multiple of 16); None: no packing.
    listed_flow_model: named in the list of flow models of the wrong-sampler.method message
        (the other flow kinds name themselves there).
    xformers: model.attention=xformers switches the pipeline to xFormers attention (the shapes
        and sd35m_random kinds keep torch attention).
    """

    name: str
    build: Callable
    flow: bool = True
    video: bool = False
    download: str | None = None
    random_weights_of: str | None = None
    packed_name: str | None = None
    listed_flow_model: bool = False
    xformers: bool = True


# ------------------------------------------------------------------------------------- builders
def _build_shapes(model_cfg, device, dtype):
    from progrpo_fast.models import shapes_model
    from progrpo_fast.models.sd3 import SD3Denoiser

    pipe = shapes_model.load_shapes_pipeline(model_cfg.path or shapes_model.SHAPES_MODEL_DIR, device=device, dtype=dtype)
    return SD3Denoiser(pipe, resolution=model_cfg.resolution or shapes_model.RESOLUTION, guidance_scale=model_cfg.guidance_scale,
                       max_sequence_length=model_cfg.max_sequence_length or shapes_model.T5_TOKENS)


def _build_sd35m_random(model_cfg, device, dtype):
    from progrpo_fast.models import tiny
    from progrpo_fast.models.sd3 import SD3Denoiser

    pipe = tiny.sd35_medium_sized_pipeline(device=device).to(dtype=dtype)
    return SD3Denoiser(pipe, resolution=model_cfg.resolution or 512, guidance_scale=model_cfg.guidance_scale,
                       max_sequence_length=model_cfg.max_sequence_length or 256)


def _pretrained(module: str, adapter_name: str, default_tokens: int | None) -> Callable:
    """The builder of an SD3 / FLUX / SD1 kind: the adapter ``adapter_name`` of
    progrpo_fast.models.``module`` loaded from model.path (``default_tokens``: T5 tokens when
    model.max_sequence_length is null; None: the adapter takes no such argument)."""

    def build(model_cfg, device, dtype):
        adapter = getattr(importlib.import_module(f"progrpo_fast.models.{module}"), adapter_name)
        common = {"guidance_scale": model_cfg.guidance_scale, "resolution": model_cfg.resolution}
        if default_tokens is not None:
            common["max_sequence_length"] = model_cfg.max_sequence_length or default_tokens
        return adapter.from_pretrained(model_cfg.path, device=device, dtype=dtype, **common)

    return build


def _qwen_image_adapter(model_cfg):
    from progrpo_fast.models.qwen_image import QwenImageDenoiser

    return QwenImageDenoiser, {"guidance_scale": model_cfg.guidance_scale, "resolution": model_cfg.resolution,
                               "max_sequence_length": model_cfg.max_sequence_length or 512}


def _wan_adapter(model_cfg):
    from progrpo_fast.models.wan import WanDenoiser

    height = model_cfg.resolution or 480
    width = model_cfg.width or (832 if model_cfg.resolution is None else height)
    return WanDenoiser, {"guidance_scale": model_cfg.guidance_scale, "num_frames": model_cfg.num_frames or 81, "height": height,
                         "width": width, "max_sequence_length": model_cfg.max_sequence_length or 512}


def _loaded(adapter_of: Callable) -> Callable:
    """The builder of a Qwen-Image / Wan kind that loads model.path."""

    def build(model_cfg, device, dtype):
        adapter, kwargs = adapter_of(model_cfg)
        return adapter.from_pretrained(model_cfg.path, device=device, dtype=dtype, **kwargs)

    return build


def _random(adapter_of: Callable, sized_pipeline: str) -> Callable:
    """The builder of a Qwen-Image / Wan kind with random weights at a published size
    (``sized_pipeline``: the progrpo_fast.models.tiny function that builds the pipeline)."""

    def build(model_cfg, device, dtype):
        from progrpo_fast.models import tiny

        adapter, kwargs = adapter_of(model_cfg)
        return adapter(getattr(tiny, sized_pipeline)(device=device).to(dtype=dtype), **kwargs)

    return build


# ----------------------------------------------------------------------------------------- table
MODEL_KINDS: dict[str, ModelKind] = {kind.name: kind for kind in (
    ModelKind("shapes", _build_shapes, listed_flow_model=True, xformers=False),
    ModelKind("sd3", _pretrained("sd3", "SD3Denoiser", 256), download="stabilityai/stable-diffusion-3.5-medium", listed_flow_model=True),
    ModelKind("flux", _pretrained("flux", "FluxDenoiser", 512), download="black-forest-labs/FLUX.1-dev", packed_name="FLUX",
              listed_flow_model=True),
    ModelKind("sd1", _pretrained("sd1", "SD1Denoiser", None), flow=False, download="CompVis/stable-diffusion-v1-4"),
    ModelKind("qwen_image", _loaded(_qwen_image_adapter), download="Qwen/Qwen-Image", packed_name="Qwen-Image"),
    ModelKind("wan", _loaded(_wan_adapter), video=True, download="Wan-AI/Wan2.1-T2V-1.3B-Diffusers"),
    ModelKind("sd35m_random", _build_sd35m_random, random_weights_of="sd3", xformers=False),
    ModelKind("qwen_image_random", _random(_qwen_image_adapter, "qwen_image_sized_pipeline"), random_weights_of="qwen_image",
              packed_name="Qwen-Image"),
    ModelKind("wan21_1p3b_random", _random(_wan_adapter, "wan21_1p3b_sized_pipeline"), video=True, random_weights_of="wan"),
)}


def kind_names(**facts) -> list[str]:
    """The kinds whose fields equal ``facts`` (e.g. ``kind_names(video=True)``), in table order."""
    return [name for name, kind in MODEL_KINDS.items() if all(getattr(kind, key) == value for key, value in facts.items())]
