"""Config: YAML round trip, overrides, every validation error, presets."""
import pytest
import yaml

from progrpo_fast.train.config import Config, apply_overrides, available_presets, load_config

PRESETS = ["shapes", "shapes_naive", "sd35m_pickscore", "sd35m_pickscore_flash", "sd35m_pickscore_naive", "sd14_hpsv2",
           "qwen_image_pickscore", "wan21_t2v"]


def raises(match: str):
    return pytest.raises(ValueError, match=match)


# ------------------------------------------------------------------------------- round trips
def test_defaults_validate_and_round_trip_through_yaml(tmp_path):
    config = Config().validate()
    path = tmp_path / "run.yaml"
    path.write_text(config.to_yaml())
    assert Config.from_yaml(path) == config
    assert Config.from_dict(yaml.safe_load(config.to_yaml())) == config


def test_round_trip_keeps_non_default_values(tmp_path):
    config = apply_overrides(Config(), [
        "model.kind=sd3", "model.resolution=512", "train.ema_decay=0.99", "train.adam_betas=[0.8, 0.9]",
        "reward.weights={pickscore: 1.0, clip: 0.5}", "train.mixed_precision=no", "sampler.schedule=24@10",
    ])
    path = tmp_path / "run.yaml"
    path.write_text(config.to_yaml())
    loaded = Config.from_yaml(path)
    assert loaded == config
    assert loaded.train.adam_betas == (0.8, 0.9)
    assert loaded.train.mixed_precision == "no"


def test_partial_dict_keeps_defaults_and_yaml_float_strings_parse():
    config = Config.from_dict({"train": {"lr": "1e-4"}, "log": None})
    assert config.train.lr == 1e-4
    assert config.train.lora_rank == Config().train.lora_rank


# -------------------------------------------------------------------------------- overrides
def test_overrides_scalars_nested_dicts_and_lists():
    config = apply_overrides(Config(), [
        "train.lr=1e-4",
        "sampler.schedule=48:5=24,7=12@10",
        "reward.weights={pickscore: 1.0}",
        "reward.paths.pickscore=/models/pickscore",
        "train.lora_targets=[to_q, to_v]",
        "train.ema_decay=null",
        "train.lora_alpha=16",
        "log.out_dir=2024",
    ])
    assert config.train.lr == 1e-4 and isinstance(config.train.lr, float)
    assert config.sampler.schedule == "48:5=24,7=12@10"
    assert config.reward.weights == {"pickscore": 1.0}
    assert config.reward.paths == {"pickscore": "/models/pickscore"}
    assert config.train.lora_targets == ["to_q", "to_v"]
    assert config.train.ema_decay is None
    assert config.train.lora_alpha == 16
    assert config.log.out_dir == "2024"  # string fields keep the text as written


def test_override_dict_entry_adds_to_the_dict_and_later_overrides_win():
    config = apply_overrides(Config(), ["reward.weights.pickscore=0.5", "train.lr=1e-3", "train.lr=2e-3"])
    assert config.reward.weights == {"shapes": 1.0, "pickscore": 0.5}
    assert config.train.lr == 2e-3


def test_apply_overrides_leaves_the_input_alone():
    config = Config()
    apply_overrides(config, ["train.lr=1e-2", "reward.weights.x=2"])
    assert config == Config()


# ------------------------------------------------------------------------------- errors
def test_unknown_key_lists_the_valid_ones():
    with raises(r"unknown config key 'train\.lrr' \(did you mean 'lr'\?\); valid keys in 'train': iterations, seed, lr, "):
        apply_overrides(Config(), ["train.lrr=1"])
    with raises(r"unknown config key 'model\.colour'.*valid keys in 'model': kind, path, dtype"):
        Config.from_dict({"model": {"colour": "red"}})


def test_unknown_section_lists_the_valid_ones():
    with raises(r"unknown config section 'trian' \(did you mean 'train'\?\); valid sections: model, sampler, reward, train, log, prompts"):
        apply_overrides(Config(), ["trian.lr=1"])
    with raises(r"config section 'train' must be a mapping"):
        Config.from_dict({"train": 3})


@pytest.mark.parametrize("override, message", [
    ("train.lr=abc", r"override 'train.lr=abc': config key 'train\.lr' expects a float, got 'abc' \(str\)"),
    ("train.iterations=2.5", r"config key 'train\.iterations' expects an int, got 2\.5"),
    ("train.lora=maybe", r"config key 'train\.lora' expects a bool \(true/false\), got 'maybe'"),
    ("train.adam_betas=[0.9]", r"config key 'train\.adam_betas' expects a list of 2 floats"),
    ("train.lora_targets=to_q", r"config key 'train\.lora_targets' expects a list of strings"),
    ("reward.weights=[1, 2]", r"config key 'reward\.weights' expects a mapping of strings to floats"),
    ("reward.weights={pickscore: high}", r"config key 'reward\.weights\.pickscore' expects a float, got 'high'"),
    ("sampler.method=euler", r"config key 'sampler\.method' expects one of 'sde', 'cps', 'ode', 'ddim', got 'euler'"),
    ("train.lr=.nan", r"config key 'train\.lr' expects a float, got nan \(float\) \(finite numbers only\)"),
])
def test_wrong_types_name_the_key_and_the_expected_type(override, message):
    with raises(message):
        apply_overrides(Config(), [override])


def test_yaml_boolean_for_a_string_choice_gets_a_quoting_hint():
    with raises(r"'train\.mixed_precision' expects one of 'no', 'bf16', 'fp16', got False \(bool\) \(quote strings"):
        Config.from_dict({"train": {"mixed_precision": False}})


@pytest.mark.parametrize("override, message", [
    ("train.lr=0", r"config key 'train\.lr' must be > 0, got 0\.0"),
    ("train.timestep_fraction=1.5", r"config key 'train\.timestep_fraction' must be in \(0, 1\], got 1\.5"),
    ("train.ema_decay=1", r"config key 'train\.ema_decay' must be null or in \(0, 1\), got 1\.0"),
    ("train.adam_betas=[0.9, 1.0]", r"config key 'train\.adam_betas' must be two values in \[0, 1\)"),
    ("model.resolution=500", r"config key 'model\.resolution' must be null or a multiple of 8"),
    ("log.keep_last=0", r"config key 'log\.keep_last' must be >= 1, got 0"),
    ("sampler.eta=-0.1", r"config key 'sampler\.eta' must be >= 0"),
    ("train.iterations=-1", r"config key 'train\.iterations' must be >= 1, got -1"),
    ("sampler.trajectory_id_stride=0", r"config key 'sampler\.trajectory_id_stride' must be null or >= 1, got 0"),
    ("sampler.forward_rows=0", r"config key 'sampler\.forward_rows' must be null or >= 1, got 0"),
])
def test_out_of_range_values(override, message):
    with raises(message):
        apply_overrides(Config(), [override])


@pytest.mark.parametrize("overrides, message", [
    (["sampler.schedule=48:5=50@10"], r"config key 'sampler\.schedule' is invalid: keep must be strictly decreasing"),
    (["sampler.schedule=48-24@10"], r"config key 'sampler\.schedule' is invalid: prune schedule '48-24@10' must look like"),
    (["sampler.schedule=16:9=8@10"], r"config key 'sampler\.schedule' is invalid: checkpoints must be ints in \[1, num_steps - 1\)"),
    (["sampler.static_ovf=true", "sampler.schedule=24@10"], r"sampler\.static_ovf=true needs a pruned schedule"),
    (["sampler.method=cps", "sampler.eta=1.5"], r"'sampler\.eta' must be <= 1 with method 'cps'"),
    (["sampler.noise_steps=[4]"], r"'sampler\.noise_steps' must be null or a non-empty list of steps in \[0, 4\)"),
    (["sampler.noise_steps=[]"], r"'sampler\.noise_steps' must be null or a non-empty list"),
    (["sampler.schedule=16:3=8@8", "sampler.trajectory_id_stride=8"],
     r"'sampler\.trajectory_id_stride' must be null or >= the schedule's G_max = 16"),
])
def test_bad_schedules_and_sampler_settings(overrides, message):
    with raises(message):
        apply_overrides(Config(), overrides)


def test_method_and_model_kind_must_match():
    with raises(r"sampler\.method='ddim' needs model\.kind='sd1'; flow models \(shapes, sd3, flux\) take one of sde, cps, ode"):
        apply_overrides(Config(), ["sampler.method=ddim"])
    with raises(r"model\.kind='sd1' .* samples with DDIM only: set sampler\.method=ddim \(got 'sde'\)"):
        apply_overrides(Config(), ["model.kind=sd1"])
    config = apply_overrides(Config(), ["model.kind=sd1", "sampler.method=ddim", "sampler.eta=1.0"])
    assert config.sampler.method == "ddim"
    with raises(r"multiple of 16 for FLUX"):
        apply_overrides(Config(), ["model.kind=flux", "model.resolution=520"])


def test_reward_consistency():
    with raises(r"'reward\.weights' must name at least one reward"):
        apply_overrides(Config(), ["reward.weights={}"])
    with raises(r"uses the 'http' reward but reward\.http_url is not set"):
        apply_overrides(Config(), ["reward.weights={http: 1.0}"])
    with raises(r"'reward\.http_url' must start with http:// or https://"):
        apply_overrides(Config(), ["reward.http_url=localhost:8000"])
    with raises(r"'train\.lora_targets' must name at least one module"):
        apply_overrides(Config(), ["train.lora_targets=[]"])


def test_malformed_overrides():
    for override in ["train.lr", "lr=1", "train.=1", "=1"]:
        with raises(r"must look like SECTION\.KEY=VALUE"):
            apply_overrides(Config(), [override])
    with raises(r"only dict keys take a third part"):
        apply_overrides(Config(), ["train.lr.x=1"])
    with raises(r"the value is not valid YAML"):
        apply_overrides(Config(), ["reward.weights={a: 1"])


def test_missing_model_path_says_how_to_fix_it(tmp_path):
    config = apply_overrides(Config(), ["model.kind=sd3"])
    with raises(r"'model\.path' is required for model\.kind='sd3': set it to a local diffusers folder, e\.g\. model\.path=.*"
                r"huggingface-cli download stabilityai/stable-diffusion-3\.5-medium"):
        config.validate()
    with raises(r"'model\.path': '.*nowhere' is not a directory"):
        apply_overrides(config, [f"model.path={tmp_path / 'nowhere'}"]).validate()
    with raises(r"holds no model_index\.json"):
        apply_overrides(config, [f"model.path={tmp_path}"]).validate()
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusion3Pipeline"}')
    apply_overrides(config, [f"model.path={tmp_path}"]).validate()


def test_prompt_file_must_exist_and_hold_a_prompt(tmp_path):
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n  \n")
    with raises(rf"the prompt file '{empty}' holds no prompt"):
        apply_overrides(Config(), [f"prompts.source={empty}"]).validate()
    with raises(r"no prompt file '.*missing\.txt'"):
        apply_overrides(Config(), [f"prompts.source={tmp_path / 'missing.txt'}"]).validate()
    empty.write_text("a red circle\n")
    apply_overrides(Config(), [f"prompts.source={empty}"]).validate()


def test_reward_paths_must_exist(tmp_path):
    with raises(r"'reward\.paths\.pickscore': '.*absent' does not exist"):
        apply_overrides(Config(), [f"reward.paths.pickscore={tmp_path / 'absent'}"]).validate()


def test_check_paths_false_skips_only_the_file_checks():
    config = apply_overrides(Config(), ["model.kind=sd3", "prompts.source=/no/such/file.txt"])
    config.validate(check_paths=False)
    config.train.lr = -1.0
    with raises(r"'train\.lr' must be > 0"):
        config.validate(check_paths=False)


def test_validate_normalises_attribute_assignments():
    config = Config()
    config.train.lr = "2e-4"
    config.train.adam_betas = [0.9, 0.95]
    config.validate()
    assert config.train.lr == 2e-4 and config.train.adam_betas == (0.9, 0.95)


# --------------------------------------------------------------------------------- presets
def test_all_presets_ship():
    assert sorted(available_presets()) == sorted(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_load_and_validate_with_paths_deferred(preset):
    config = load_config(preset, [], check_paths=False)
    assert Config.from_dict(config.to_dict()) == config


def test_shapes_preset_is_the_builtin_default_and_trains_as_is():
    assert load_config("shapes", []) == Config() == load_config(None, [])


def test_gpu_presets_need_a_model_path_at_load_time(tmp_path):
    with raises(r"'model\.path' is required for model\.kind='sd3'"):
        load_config("sd35m_pickscore", [])
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusion3Pipeline"}')
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a cat\n")
    config = load_config("sd35m_pickscore", [f"model.path={tmp_path}", f"prompts.source={prompts}"])
    assert config.model.path == str(tmp_path)


def test_preset_contents():
    flow = load_config("sd35m_pickscore", [], check_paths=False)
    assert (flow.sampler.schedule, flow.model.resolution, flow.model.guidance_scale) == ("48:5=24,7=12@10", 512, 4.5)
    assert (flow.train.lora_rank, flow.train.lora_alpha, flow.train.lr, flow.train.clip_range) == (32, 64, 3e-4, 1e-4)
    assert (flow.train.beta_kl, flow.sampler.eta, flow.reward.weights) == (0.04, 0.7, {"pickscore": 1.0})
    flash = load_config("sd35m_pickscore_flash", [], check_paths=False)
    assert flash.sampler.schedule == "24:5=16,7=12@10" and flash.train == flow.train
    naive = load_config("sd35m_pickscore_naive", [], check_paths=False)
    assert naive.sampler.schedule == "24@10" and naive.model == flow.model
    sd14 = load_config("sd14_hpsv2", [], check_paths=False)
    assert (sd14.model.kind, sd14.sampler.method, sd14.sampler.eta) == ("sd1", "ddim", 1.0)
    assert (sd14.sampler.schedule, sd14.model.resolution, sd14.model.guidance_scale) == ("48:30=32,40=8@50", 512, 7.5)
    assert load_config("shapes_naive", [], check_paths=False).sampler.schedule == "8@5"
    shapes = load_config("shapes", [])
    assert shapes == load_config(None, []), "the shapes preset spells out the built-in defaults"
    assert (shapes.sampler.noise_steps, shapes.train.timestep_fraction, shapes.prompts.pool,
            shapes.model.guidance_scale) == ([0, 1], 1.0, 512, 1.0)
    assert flow.sampler.noise_steps is None and sd14.sampler.noise_steps is None, "the paper's presets add noise at every step"


def test_extends_merges_sections_key_by_key(tmp_path):
    (tmp_path / "base.yaml").write_text("extends: sd35m_pickscore\ntrain: {lr: 1.0e-4}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\ntrain: {seed: 7}\nreward: {weights: {clip: 1.0}}\n")
    config = Config.from_yaml(tmp_path / "child.yaml")
    assert (config.train.lr, config.train.seed, config.train.lora_rank) == (1e-4, 7, 32)
    assert config.reward.weights == {"clip": 1.0}  # values replace, sections merge
    assert config.model.kind == "sd3"


def test_config_file_errors(tmp_path):
    with raises(r"no config file or preset named 'nope'; presets: qwen_image_pickscore, sd14_hpsv2, sd35m_pickscore"):
        load_config("nope", [])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with raises(rf"config file {bad} is not valid YAML"):
        Config.from_yaml(bad)
    bad.write_text("- train\n")
    with raises(r"must hold a mapping of sections"):
        Config.from_yaml(bad)
    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: loop.yaml\n")
    with raises(r"'extends' cycle"):
        Config.from_yaml(loop)


# ------------------------------------------------------------------ Qwen-Image and Wan (issue 13)
def test_qwen_image_and_wan_presets_follow_the_papers_pattern():
    qwen = load_config("qwen_image_pickscore", check_paths=False)
    assert qwen.model.kind == "qwen_image" and qwen.sampler.schedule == "32:5=16,7=8@10" and qwen.train.gradient_checkpointing
    wan = load_config("wan21_t2v", check_paths=False)
    assert wan.model.kind == "wan" and wan.model.num_frames == 33 and (wan.model.resolution, wan.model.width) == (240, 416)
    assert wan.sampler.schedule == "16:10=8,14=4@20" and wan.reward.frame_stride == 8
    assert set(wan.reward.weights) == {"pickscore", "temporal_consistency"}
    with raises(r"config key 'model.path' is required for model.kind='wan'.*Wan-AI/Wan2.1-T2V-1.3B-Diffusers"):
        load_config("wan21_t2v")


def test_video_and_memory_keys():
    config = apply_overrides(Config(), ["sampler.history_device=cpu", "sampler.history_dtype=bf16", "train.gradient_checkpointing=true"])
    assert (config.sampler.history_device, config.sampler.history_dtype, config.train.gradient_checkpointing) == ("cpu", "bf16", True)
    with raises(r"'sampler\.history_device' expects one of 'model', 'cpu'"):
        apply_overrides(Config(), ["sampler.history_device=cuda"])
    with raises(r"'model\.num_frames' must be null or 4k \+ 1 frames"):
        apply_overrides(Config(), ["model.kind=wan", "model.num_frames=32"])
    with raises(r"'model\.num_frames' applies to video models"):
        apply_overrides(Config(), ["model.num_frames=33"])
    with raises(r"model\.kind='qwen_image' is a flow model and takes one of sde, cps, ode"):
        apply_overrides(Config(), ["model.kind=qwen_image", "sampler.method=ddim"])
    with raises(r"multiple of 16 for Qwen-Image"):
        apply_overrides(Config(), ["model.kind=qwen_image", "model.resolution=520"])
    assert apply_overrides(Config(), ["prompts.source=shapes_video"]).validate().prompts.source == "shapes_video"


@pytest.mark.parametrize("kind", ["qwen_image_random", "wan21_1p3b_random"])
def test_published_size_random_kinds_take_no_path(kind, tmp_path):
    assert load_config(None, [f"model.kind={kind}"]).model.path is None
    with raises("builds random weights and takes no model.path"):
        load_config(None, [f"model.kind={kind}", f"model.path={tmp_path}"])
