"""The hidden-feature probe proxy (sampler.proxy=hidden): features from a forward hook, random
selection until fitted, within-group ridge fit (from the features the prune log keeps) that
recovers a planted relation, persistent in-place weights and graph_key, no host sync in __call__,
state round trip, the trainer's use."""
import pytest
import torch

from progrpo_fast.sampling.proxies import Checkpoint, HiddenProbeProxy, RandomProxy, build_proxy, group_means, pool_block_output

GROUP, KEEP, DIM = 8, 3, 8


class Blocks(torch.nn.Module):
    """A network whose one block returns (context, image) token streams like an MMDiT block."""

    def __init__(self):
        super().__init__()
        self.transformer_blocks = torch.nn.ModuleList([torch.nn.Identity()])

    def forward(self, tokens):  # (B, N, DIM / 2): context and image streams
        return self.transformer_blocks[0](split(tokens))


def checkpoint(rows, step=2, seed=0):
    return Checkpoint(step, torch.zeros(rows, 4, 2, 2), ["p"], torch.zeros(rows, dtype=torch.int64), torch.arange(rows), GROUP, KEEP,
                      seed, None)


def observe(proxy, ckpt, selection, rewards):
    """proxy.observe on a rollout of one checkpoint whose survivors are ``selection``'s rows."""
    from types import SimpleNamespace

    from progrpo_fast.sampling.sampler import PruneRecord

    kept = ckpt.trajectory_ids[selection.index]
    record = PruneRecord(ckpt.step, ckpt.trajectory_ids.shape[0], selection.scores, kept.view(-1, ckpt.keep), selection.variance_all,
                         selection.variance_kept, selection.features[selection.index])
    return proxy.observe(SimpleNamespace(prune_log=[record], trajectory_ids=kept, prompt_index=selection.index // ckpt.group_size), rewards)


def split(tokens):  # two streams of DIM / 4 features: mean and max pooling make DIM features
    return tokens[..., : DIM // 4], tokens[..., DIM // 4 : DIM // 2]


def run_pass(network, tokens):
    network(tokens)
    return pool_block_output(split(tokens))


def test_group_means_and_pooling():
    values = torch.tensor([[1.0], [3.0], [10.0], [20.0]])
    assert group_means(values, torch.tensor([0, 0, 1, 1])).flatten().tolist() == [2.0, 2.0, 15.0, 15.0]
    tokens = torch.arange(30.0).view(2, 5, 3)
    pooled = pool_block_output((tokens, torch.zeros(2, 4, 3, 3), None))
    assert pooled.shape == (2, 2 * 3 + 2 * 4)  # mean and max of each stream: tokens over N, maps over H x W
    assert torch.equal(pooled[:, :3], tokens.mean(1)) and torch.equal(pooled[:, 3:6], tokens[:, -1]) and pooled[:, 6:].eq(0).all()


def test_features_come_from_the_latest_pass_and_cfg_halves_sit_side_by_side():
    network = Blocks()
    proxy = HiddenProbeProxy(network)
    with pytest.raises(ValueError, match="has seen no network pass"):
        proxy.features(4)
    tokens = torch.randn(8, 5, DIM // 2)
    expected = run_pass(network, tokens)
    assert torch.equal(proxy.features(8), expected)
    assert torch.equal(proxy.features(4), torch.cat([expected[:4], expected[4:]], 1))  # [uncond | cond]
    with pytest.raises(ValueError, match="had 8 rows, the checkpoint 3"):
        proxy.features(3)


@pytest.mark.parametrize("cfg", [False, True])
def test_the_calls_inside_one_pass_are_its_row_chunks(cfg):
    """sampler.forward_rows splits a pass into calls of 3, 3, 1 rows (under CFG each call holds
    its chunk's [negative; positive] halves): the features equal those of one call."""
    network = Blocks()
    proxy = HiddenProbeProxy(network)
    halves = torch.randn(2 if cfg else 1, 7, 5, DIM // 2)
    whole = run_pass(network, halves.flatten(0, 1))
    expected = proxy.features(7)
    with proxy.one_pass():
        for start in (0, 3, 6):
            run_pass(network, halves[:, start : start + 3].flatten(0, 1))
    assert len(proxy.latest) == 3 and torch.equal(proxy.features(7), expected)
    assert torch.equal(expected, torch.cat(whole.chunk(2), 1) if cfg else whole)
    run_pass(network, halves[:, :2].flatten(0, 1))  # a call outside one_pass starts a new pass
    assert len(proxy.latest) == 1 and proxy.features(2).shape[0] == 2


def test_unfitted_selects_like_the_random_proxy_then_recovers_a_planted_linear_relation():
    gen = torch.Generator().manual_seed(0)
    network = Blocks()
    proxy = HiddenProbeProxy(network, ridge=1e-3, min_samples=40)
    w_true = torch.randn(DIM, generator=gen)
    fitted_keys = []
    for rollout in range(6):
        tokens = torch.randn(4 * GROUP, 3, DIM // 2, generator=gen)
        features = run_pass(network, tokens)
        ckpt = checkpoint(4 * GROUP, seed=rollout)
        selection = proxy(ckpt)
        if rollout == 0:
            assert torch.equal(selection.index, RandomProxy()(ckpt).index) and proxy.graph_key() == ()
        survivors = ckpt.trajectory_ids[selection.index]
        offsets = 100 * torch.arange(4).repeat_interleave(KEEP).float()  # per-group levels the fit must ignore
        observe(proxy, ckpt, selection, features[survivors] @ w_true + offsets)
        fitted_keys.append(proxy.graph_key())
    assert fitted_keys[0] == () and fitted_keys[-1] == (2,)  # 12 pairs per rollout: fitted after the 4th
    weights = proxy.weights[2]
    cosine = torch.nn.functional.cosine_similarity(weights, w_true, dim=0)
    assert cosine > 0.95, cosine
    tokens = torch.randn(4 * GROUP, 3, DIM // 2, generator=gen)
    features = run_pass(network, tokens)
    from progrpo_fast import ops

    oracle = ops.prune_select(features @ w_true, GROUP, KEEP)
    ckpt = checkpoint(4 * GROUP)
    selection = proxy(ckpt)
    assert torch.equal(selection.index, oracle)
    observe(proxy, ckpt, selection, torch.zeros(4 * KEEP))
    assert proxy.weights[2] is weights  # refitted in place: a captured graph keeps reading the same tensor


def test_call_does_no_host_sync(monkeypatch):
    network = Blocks()
    proxy = HiddenProbeProxy(network, min_samples=1)
    features = run_pass(network, torch.randn(2 * GROUP, 1, DIM // 2))
    ckpt = checkpoint(2 * GROUP)
    selection = proxy(ckpt)
    observe(proxy, ckpt, selection, features[selection.index].sum(1))

    def refuse(*args, **kwargs):
        raise AssertionError("host sync inside HiddenProbeProxy.__call__")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    selection = proxy(checkpoint(2 * GROUP))
    monkeypatch.undo()
    assert selection.index.shape == (2 * KEEP,) and selection.scores is not None


def test_state_round_trip_gives_the_same_selection():
    network = Blocks()
    proxy = HiddenProbeProxy(network, min_samples=1)
    run_pass(network, torch.randn(2 * GROUP, 1, DIM // 2))
    ckpt = checkpoint(2 * GROUP)
    observe(proxy, ckpt, proxy(ckpt), torch.tensor([0.1, 0.5, 0.9, 0.2, 0.3, 0.8]))
    copy = HiddenProbeProxy(Blocks(), min_samples=1)
    copy.load_state_dict(proxy.state_dict())
    copy.latest = proxy.latest
    assert torch.equal(copy(checkpoint(2 * GROUP)).index, proxy(checkpoint(2 * GROUP)).index)
    assert copy.graph_key() == proxy.graph_key() == (2,)


def test_build_proxy_needs_what_each_proxy_reads():
    with pytest.raises(ValueError, match="needs network="):
        build_proxy("hidden")
    with pytest.raises(ValueError, match="needs reward="):
        build_proxy("reward")
    with pytest.raises(ValueError, match="unknown proxy 'decoded'"):
        build_proxy("decoded")
    assert isinstance(build_proxy("hidden", network=Blocks()), HiddenProbeProxy)


def test_trainer_feeds_the_hidden_proxy_its_survivors(tmp_path):
    from progrpo_fast.models.sd3 import SD3Denoiser
    from progrpo_fast.models.tiny import tiny_sd3_pipeline
    from progrpo_fast.train.config import load_config
    from progrpo_fast.train.trainer import Trainer

    class Brightness:
        weights = {"bright": 1.0}

        def components(self, images, prompts):
            return {"bright": images.mean((1, 2, 3))}

    cfg = load_config(None, ["sampler.schedule=6:2=3@4", "sampler.proxy=hidden", "sampler.prompts_per_iteration=2", "train.lora_rank=4",
                             "train.minibatch_rows=6", "log.eval_prompts=0", f"log.out_dir={tmp_path}"])
    trainer = Trainer(cfg, SD3Denoiser(tiny_sd3_pipeline(), max_sequence_length=4, resolution=16), Brightness(),
                      lambda it, rank, n: ["a red circle"] * n)
    trainer.train_iteration()
    assert isinstance(trainer.proxy, HiddenProbeProxy) and trainer.proxy.buffers[2][1].shape == (6,)  # 2 prompts x 3 survivors
    assert trainer.state_dict()["probe"]["buffers"][2][0].shape[0] == 6
