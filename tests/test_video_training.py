"""The whole video path trains end to end on a CPU: the tiny Wan model, expand-and-prune with the
reward proxy on decoded videos, the moving-shape video reward plus temporal consistency, the GRPO
update, evaluation before and after."""
import math

from progrpo_fast.models.tiny import tiny_wan_pipeline
from progrpo_fast.models.wan import WanDenoiser
from progrpo_fast.train.build import build_reward
from progrpo_fast.train.checkpoint import CheckpointStore
from progrpo_fast.train.config import load_config
from progrpo_fast.train.run import train

VIDEO_TASK = ["model.kind=wan", "model.resolution=32", "model.width=32", "model.num_frames=9", "model.max_sequence_length=16",
              "model.guidance_scale=3.0", "sampler.schedule=4:2=2@4", "sampler.noise_steps=[0, 1]", "sampler.prompts_per_iteration=2",
              "sampler.proxy=reward", "reward.weights={moving_shapes: 1.0, temporal_consistency: 0.2}", "prompts.source=shapes_video",
              "train.iterations=2", "train.lora_rank=4", "train.lora_alpha=8", "train.minibatch_rows=4", "train.lr=1e-2",
              "train.clip_range=0.2", "log.progress=false", "log.eval_prompts=1", "log.eval_per_prompt=2", "log.checkpoint_every=1"]


def test_video_grpo_trains_end_to_end_on_cpu(tmp_path):
    config = load_config(None, [*VIDEO_TASK, f"log.out_dir={tmp_path}"], check_paths=False)
    model = WanDenoiser(tiny_wan_pipeline(), guidance_scale=3.0, num_frames=9, height=32, width=32, max_sequence_length=16)
    summary = train(config, model=model, reward=build_reward(config))
    first, last = summary["history"]
    for metrics in summary["history"]:
        assert math.isfinite(metrics["reward_mean"]) and math.isfinite(metrics["reward_temporal_consistency"])
        assert 0 <= metrics["reward_moving_shapes"] <= 1
        assert metrics["first_ratio_abs_error"] < 1e-5  # the trainer replays the sampler's video transitions
        assert metrics["trajectory_steps"] == 2 * (4 * 2 + 2 * 2)
    assert summary["trajectory_steps_per_prompt"] == 12 and summary["naive_trajectory_steps_per_prompt"] == 16
    _, state = CheckpointStore(tmp_path / "checkpoints").latest()
    lora_b = {name: w for name, w in state["trainable"].items() if "lora_B" in name}
    assert lora_b and any(float(w.abs().max()) > 0 for w in lora_b.values()), "lora_B starts at 0: the update moved it"
    assert math.isfinite(summary["eval_after"]["reward_mean"]) and (tmp_path / "before_after.png").is_file()
