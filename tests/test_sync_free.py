"""Between its first step and its return a sampling call reads nothing back to the host. Inside
sample() every Tensor -> Python conversion raises, and so does every op whose output shape depends
on tensor values (nonzero, masked_select, boolean-mask indexing, unique, ...: each a host sync on
CUDA). Prompt encoding, which tokenizes on the host, runs before the first step and is exempt."""
from __future__ import annotations

import contextlib

import pytest
import torch
from torch.overrides import TorchFunctionMode

from progrpo_fast.models.flux import FluxDenoiser
from progrpo_fast.models.qwen_image import QwenImageDenoiser
from progrpo_fast.models.sd1 import SD1Denoiser
from progrpo_fast.models.sd3 import SD3Denoiser
from progrpo_fast.models.tiny import tiny_flux_pipeline, tiny_qwen_image_pipeline, tiny_sd1_pipeline, tiny_sd3_pipeline, tiny_wan_pipeline
from progrpo_fast.models.wan import WanDenoiser
from progrpo_fast.sampling import PruneSchedule
from progrpo_fast.sampling.graphs import GraphSampler
from progrpo_fast.sampling.proxies import HiddenProbeProxy, LatentProxy, ProbeProxy, RandomProxy
from progrpo_fast.sampling.sampler import ExpandPruneSampler

CONVERSIONS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy")
DATA_DEPENDENT = {torch.nonzero, torch.Tensor.nonzero, torch.argwhere, torch.Tensor.argwhere, torch.masked_select,
                  torch.Tensor.masked_select, torch.unique, torch.Tensor.unique, torch.unique_consecutive,
                  torch.Tensor.unique_consecutive, torch.equal, torch.Tensor.equal, torch.Tensor.cpu}
PROMPTS = ["a red circle", "two blue squares"]


def data_dependent(func, args, kwargs) -> bool:
    """Whether the call's output shape (or result) depends on tensor values."""
    if func in DATA_DEPENDENT:
        return True
    if func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__):
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)
    if func is torch.where:
        return len(args) + len(kwargs) == 1  # where(condition) is nonzero
    if func in (torch.repeat_interleave, torch.Tensor.repeat_interleave):
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
        return isinstance(repeats, torch.Tensor) and repeats.numel() > 1
    return False


class DataDependentOps(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.enabled = True

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.enabled and data_dependent(func, args, kwargs):
            raise AssertionError(f"{getattr(func, '__qualname__', func)} inside a sampling call "
                                 "(its output shape needs a host sync on CUDA)")
        return func(*args, **kwargs)


class HostConversionGuard:
    """While active, every Tensor -> Python conversion and every data-dependent op raises;
    ``allowed()`` lifts both for a block."""

    def __init__(self):
        self.saved = {name: getattr(torch.Tensor, name) for name in CONVERSIONS}
        self.ops = DataDependentOps()

    def _forbid(self):
        def raiser(name):
            def forbidden(self, *args, **kwargs):
                raise AssertionError(f"Tensor.{name}() inside a sampling call (a host sync on CUDA)")
            return forbidden

        for name in CONVERSIONS:
            setattr(torch.Tensor, name, raiser(name))
        self.ops.enabled = True

    def _restore(self):
        for name, method in self.saved.items():
            setattr(torch.Tensor, name, method)
        self.ops.enabled = False

    @contextlib.contextmanager
    def active(self):
        self._forbid()
        try:
            with self.ops:
                yield self
        finally:
            self._restore()

    @contextlib.contextmanager
    def allowed(self):
        self._restore()
        try:
            yield
        finally:
            self._forbid()


def guarded_encode(model, guard):
    encode = model.encode

    def encode_on_host(prompts):
        with guard.allowed():
            return encode(prompts)

    model.encode = encode_on_host
    return model


def test_guard_catches_conversions_and_data_dependent_ops():
    guard = HostConversionGuard()
    x = torch.arange(4.0)
    for call, what in ((lambda: x[0].item(), "Tensor.item"), (lambda: bool(x.sum()), "Tensor.__bool__"), (lambda: x[x > 1], "__getitem__"),
                       (lambda: torch.nonzero(x), "nonzero"), (lambda: x.masked_select(x > 1), "masked_select"),
                       (lambda: torch.where(x > 1), "where"),
                       (lambda: x.repeat_interleave(torch.tensor([1, 2, 0, 1])), "repeat_interleave")):
        with guard.active(), pytest.raises(AssertionError, match=what):
            call()
    with guard.active():
        x[torch.tensor([0, 2])], torch.where(x > 1, x, 0), x.repeat_interleave(2)  # static shapes pass
    assert x[0].item() == 0.0 and x[x > 1].numel() == 2


def fitted(proxy, model, schedule, method):
    """``proxy`` after learning from two rollouts, so that sampling takes its fitted branch."""
    sampler = ExpandPruneSampler(model, schedule, proxy, method=method)
    for seed in (0, 1):
        rollout = sampler.sample(PROMPTS, seed=seed)
        proxy.observe(rollout, rollout.final_latents.flatten(1).mean(1))
    assert schedule.is_naive or proxy.graph_key()[-1], "a fitted checkpoint"
    return proxy


ADAPTERS = {
    "sd3": (tiny_sd3_pipeline, SD3Denoiser, dict(max_sequence_length=4, resolution=16), "sde"),
    "flux": (tiny_flux_pipeline, FluxDenoiser, dict(max_sequence_length=8, resolution=16, true_cfg_scale=2.0), "cps"),
    "sd1": (tiny_sd1_pipeline, SD1Denoiser, dict(resolution=16), "ddim"),
    "qwen_image": (tiny_qwen_image_pipeline, QwenImageDenoiser, dict(resolution=32, max_sequence_length=64), "sde"),
    "wan": (tiny_wan_pipeline, WanDenoiser, dict(num_frames=9, height=32, width=32, max_sequence_length=16), "sde"),
}
SCHEDULES = {"two checkpoints": "6:1=4,2=2@4", "keep 1": "4:2=1@4", "naive": "4@4"}
CASES = [("sd3", proxy, schedule) for proxy in ("latent", "random", "probe", "hidden") for schedule in SCHEDULES]
CASES += [(name, proxy, "two checkpoints") for name in ("flux", "sd1", "qwen_image", "wan") for proxy in ("latent", "probe", "hidden")]


@pytest.mark.parametrize("name, proxy, schedule", CASES)
@pytest.mark.parametrize("sampler_class", [ExpandPruneSampler, GraphSampler])
def test_sampling_makes_no_host_conversion(sampler_class, name, proxy, schedule):
    make_pipe, adapter, kwargs, method = ADAPTERS[name]
    pipe = make_pipe()
    pipe.set_progress_bar_config(disable=True)
    model = adapter(pipe, **kwargs)
    plan = PruneSchedule.from_string(SCHEDULES[schedule])
    chosen = {"latent": lambda: LatentProxy(grid=2), "random": RandomProxy,
              "probe": lambda: fitted(ProbeProxy(grid=2, min_samples=4), model, plan, method),
              "hidden": lambda: fitted(HiddenProbeProxy(model.network, min_samples=4), model, plan, method)}[proxy]()
    sampler = sampler_class(model, plan, chosen, method=method, noise_steps=[0, 1] if name == "sd3" else None)
    guard = HostConversionGuard()
    guarded_encode(model, guard)
    with guard.active():
        first = sampler.sample(PROMPTS, seed=3)
        second = sampler.sample(PROMPTS, seed=4)
    assert first.latents.shape[0] == len(PROMPTS) * plan.final_group_size
    assert not torch.equal(first.final_latents, second.final_latents)
