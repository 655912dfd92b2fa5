"""Run as a script (TRITON_INTERPRET unset): records every Triton launch that the host functions of
progrpo_fast.kernels make on small CPU tensors, instead of running it, and compiles each distinct
launch (signature, constexprs, launch options) for sm_90 with Triton's own compiler and ptxas. No
GPU needed. Prints one JSON object: the kernels compiled, the kernels defined, the failures."""
import importlib
import json
import os
import pkgutil

os.environ["TRITON_INTERPRET"] = "0"

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

POINTER = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float64: "*fp64", torch.int64: "*i64",
           torch.int32: "*i32", torch.int16: "*i16", torch.uint8: "*u8", torch.int8: "*i8", torch.bool: "*i1"}
LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "enable_fp_fusion")
launches = []


def record(self, *args, grid, warmup, **kwargs):
    launches.append((self, args, kwargs))


def argument_type(value) -> str:
    if isinstance(value, torch.Tensor):
        return POINTER[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"unexpected kernel argument {type(value).__name__}")


def exercise(kernels) -> None:
    """Every host function on shapes that reach each of its launch branches."""
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        for shape in ((16, 4, 8, 8), (12, 3, 5, 7), (8, 4, 3, 8, 8)):
            x = torch.randn(shape, generator=gen).to(dtype)
            kernels.pool_latents(x, 2)
            kernels.prune_select(x, 4, 2, 2)
            kernels.group_variance(x, 4)
            kernels.compact_(torch.tensor([1, 3, 5]), [x])
    for n, k in ((8, 3), (48, 24), (64, 12), (200, 40)):
        scores = torch.randn(4, n, generator=gen)
        kernels.ovf_select(scores, k)
        kernels.prune_select(scores.flatten(), n, k, 4)
        for d in (1, 3, 64, 300):
            kernels.variance_select(torch.randn(2, n, d, generator=gen), k)
    kernels.keyed_noise(torch.tensor(5), torch.arange(3), 1, (3, 4, 8, 8))


def main() -> None:
    JITFunction.run = record
    import progrpo_fast.kernels as kernels

    exercise(kernels)
    defined = set()
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"progrpo_fast.kernels.{info.name}")
        defined |= {name for name, value in vars(module).items() if isinstance(value, JITFunction) and name.endswith("_kernel")}
    seen, failures = set(), []
    for fn, args, kwargs in launches:
        bound = {**dict(zip(fn.arg_names, args)), **{k: v for k, v in kwargs.items() if k in fn.arg_names}}
        constexprs = {p.name: bound[p.name] for p in fn.params if p.is_constexpr}
        signature = {p.name: "constexpr" if p.is_constexpr else argument_type(bound[p.name]) for p in fn.params}
        options = {k: v for k, v in kwargs.items() if k in LAUNCH_OPTIONS}
        key = (fn.__name__, tuple(signature.items()), tuple(constexprs.items()), tuple(options.items()))
        if key in seen:
            continue
        seen.add(key)
        try:
            triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs), target=GPUTarget("cuda", 90, 32), options=options)
        except Exception as err:  # a compile error of any kind is a finding
            failures.append(f"{fn.__name__} {constexprs} {options}: {type(err).__name__}: {str(err)[-1500:]}")
    print(json.dumps({"compiled": sorted({key[0] for key in seen}), "defined": sorted(defined), "launches": len(seen),
                      "failures": failures}))


if __name__ == "__main__":
    main()
