"""progrpo-fast: a fast engine for Pro-GRPO (expand-and-prune GRPO for diffusion/flow models).

The public names below load lazily (PEP 562): ``import progrpo_fast`` imports neither torch nor
diffusers; ``from progrpo_fast import ExpandPruneSampler`` imports only what that name needs."""
__version__ = "0.1.0"

# public name -> the module that defines it (a module itself where the name is the module's)
_LAZY = {
    "ops": "progrpo_fast.ops",
    "PruneSchedule": "progrpo_fast.sampling.schedule",
    "Denoiser": "progrpo_fast.sampling.denoiser",
    "ExpandPruneSampler": "progrpo_fast.sampling.sampler",
    "GraphSampler": "progrpo_fast.sampling.graphs",
    "build_sampler": "progrpo_fast.sampling.graphs",
    "Proxy": "progrpo_fast.sampling.proxies",
    "LatentProxy": "progrpo_fast.sampling.proxies",
    "RewardProxy": "progrpo_fast.sampling.proxies",
    "ProbeProxy": "progrpo_fast.sampling.proxies",
    "RandomProxy": "progrpo_fast.sampling.proxies",
    "HiddenProbeProxy": "progrpo_fast.sampling.proxies",
    "build_proxy": "progrpo_fast.sampling.proxies",
    "SD3Denoiser": "progrpo_fast.models.sd3",
    "FluxDenoiser": "progrpo_fast.models.flux",
    "SD1Denoiser": "progrpo_fast.models.sd1",
    "QwenImageDenoiser": "progrpo_fast.models.qwen_image",
    "WanDenoiser": "progrpo_fast.models.wan",
    "PruneCallback": "progrpo_fast.models.pipeline_hook",
    "StepPruner": "progrpo_fast.integrations.stepping",
    "keyed_noise": "progrpo_fast.sampling.sde",
    "keyed_generators": "progrpo_fast.integrations.stepping",
    "RankLocalGroupSampler": "progrpo_fast.integrations.distributed",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    module = importlib.import_module(module_name)
    value = module if module_name == f"{__name__}.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
