"""The methods the benchmarks compare (naive GRPO, static OVF, Pro-GRPO with each proxy) and how
each becomes a config and a trainer."""
from __future__ import annotations

from dataclasses import dataclass

from progrpo_fast.sampling.schedule import PruneSchedule

PRUNING_PROXIES = ("reward", "latent", "probe", "hidden", "random")


@dataclass(frozen=True)
class Method:
    """One way to run a GRPO iteration: a prune schedule, the proxy at its checkpoints, or static
    OVF (sample G_max to the end, keep the schedule's final K by exact OVF on the final rewards).
    ``id_stride``: trajectory ids p * id_stride + j (None: the schedule's G_max), so a naive group
    of G takes the first G trajectories (same noise) of a G_max group. ``recompute``: the trainer
    recomputes the old log-probs in its own batch layout (train.recompute_old_logprobs)."""

    name: str
    schedule: str
    proxy: str = "latent"
    static_ovf: bool = False
    id_stride: int | None = None
    recompute: bool = False

    def overrides(self) -> list[str]:
        return [f"sampler.schedule={self.schedule}", f"sampler.proxy={self.proxy}",
                f"sampler.static_ovf={'true' if self.static_ovf else 'false'}",
                f"sampler.trajectory_id_stride={'null' if self.id_stride is None else self.id_stride}",
                f"train.recompute_old_logprobs={'true' if self.recompute else 'false'}"]

    @property
    def is_naive(self) -> bool:
        return PruneSchedule.from_string(self.schedule).is_naive


def standard_methods(group_size: int, num_steps: int, checkpoints: tuple[int, int], naive_sizes=None) -> list[Method]:
    """Naive GRPO at G (and each of ``naive_sizes``), static OVF and Pro-GRPO with the latent,
    reward, probe and hidden proxies, all expanding to G_max = 2G and keeping K = G / 2: the
    paper's pattern (48 -> 24 -> 12 at steps {5, 7} of 10 against G = 24)."""
    g, (c1, c2) = group_size, checkpoints
    pruned = f"{2 * g}:{c1}={g},{c2}={g // 2}@{num_steps}"
    naive = [Method(f"naive-{n}", f"{n}@{num_steps}") for n in (naive_sizes or (g,))]
    return [*naive, Method("static-ovf", pruned, static_ovf=True),
            *(Method(f"pro-grpo-{proxy}", pruned, proxy=proxy) for proxy in ("latent", "reward", "probe", "hidden"))]


def paired_methods(schedule: str, proxies=PRUNING_PROXIES) -> list[Method]:
    """The methods of one pruned ``schedule`` (G_max -> ... -> K) on paired noise: naive GRPO at
    G = G_max and G = K (its K trajectories are the first K of each G_max group), static OVF, and
    Pro-GRPO with each of ``proxies``."""
    pruned = PruneSchedule.from_string(schedule)
    g_max, k, steps = pruned.group_size_max, pruned.final_group_size, pruned.num_steps
    return [Method(f"naive-{g_max}", f"{g_max}@{steps}"), Method(f"naive-{k}", f"{k}@{steps}", id_stride=g_max),
            Method("static-ovf", schedule, static_ovf=True), *(Method(f"pro-grpo-{proxy}", schedule, proxy=proxy) for proxy in proxies)]


def throughput_methods(group_size: int = 24) -> list[Method]:
    """The throughput table's methods: standard_methods at G = group_size over 10 steps with
    checkpoints {5, 7} (G = 24: the paper's SD3.5 setting, 48 -> 24 -> 12), naive GRPO at G and
    2G, and Pro-GRPO with the reward proxy recomputing the old log-probs."""
    methods = standard_methods(group_size, 10, (5, 7), naive_sizes=(group_size, 2 * group_size))
    pruned = next(m.schedule for m in methods if m.name == "pro-grpo-reward")
    return [*methods, Method("pro-grpo-reward-recompute", pruned, proxy="reward", recompute=True)]


THROUGHPUT_METHODS = throughput_methods()


def select_methods(methods: list[Method], names: str | None) -> list[Method]:
    """The methods named in the comma-separated ``names`` (in that order), or all when None."""
    if names is None:
        return methods
    by_name = {m.name: m for m in methods}
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in by_name]
    if unknown or not wanted:
        raise ValueError(f"--methods must name one or more of {', '.join(by_name)}, got {names!r}")
    return [by_name[name] for name in wanted]


def method_config(base: str | None, method: Method, overrides=()):
    """The config of ``method``: the base with a constant learning rate (a decaying one would shape
    each method's curve by its own iteration count, i.e. by the budget), the overrides, then the
    method's own keys (which win)."""
    from progrpo_fast.train.config import load_config

    return load_config(base, ["train.lr_schedule=constant", *overrides, *method.overrides()])


def build_trainer(config):
    """A Trainer of ``config`` (with train.deterministic, the process's arithmetic fixed first)."""
    from progrpo_fast.train.build import build_model, build_prompts, build_reward
    from progrpo_fast.train.determinism import make_deterministic
    from progrpo_fast.train.trainer import Trainer

    if config.train.deterministic:
        make_deterministic()
    model = build_model(config.model)
    reward = build_reward(config)
    return Trainer(config, model, reward, build_prompts(config))


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)
