"""Data parallelism without DDP: 2 gloo ranks train exactly what one process trains on the same
batches."""

import multiprocessing as mp
import os

import pytest
import torch
from cli_helpers import free_port

from trainables.cache import ArtifactCache
from trainables.config import from_flat
from trainables.data.toy import make_toy
from trainables.fit import Distributed, TrainingSet, train_artifact
from trainables.methods import get_method

FAST = {
    "train.steps": 12,
    "train.steps_per_epoch": 6,
    "train.batch_size": 32,
    "model.hidden": 16,
    "model.depth": 1,
    "data.label_percent": 20,
}


def _setup(method):
    data = make_toy("gmm2", 200, 50, seed=0)
    config = from_flat({"method": method, **FAST}, base="toy")
    return config, TrainingSet.split(data.x, data.y, 2, 20, 0)


def _rank(rank, port, method, position, out_dir, cache_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        config, split = _setup(method)
        group = Distributed.from_torch()
        artifact = get_method(method).artifacts[position]
        net = train_artifact(artifact, config, split, distributed=group)
        torch.save(net.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
        # The cache under data parallelism: rank 0 locks and decides, every rank trains or loads.
        cache = ArtifactCache(cache_dir)
        flags = []
        for _ in range(2):
            _, _, reused = cache.get_or_train(
                artifact,
                config,
                lambda folder: train_artifact(
                    artifact, config, split, checkpoint_dir=folder, distributed=group
                ),
                dim=2,
                num_classes=2,
                distributed=group,
            )
            flags.append(reused)
        torch.save(flags, os.path.join(out_dir, f"flags{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("method, position", [("CG-SC-all", 1), ("Joint-SC", 0)])
def test_two_ranks_match_one_process(tmp_path, method, position):
    config, split = _setup(method)
    single = train_artifact(get_method(method).artifacts[position], config, split)
    port = free_port()
    ctx = mp.get_context("fork")
    procs = [
        ctx.Process(
            target=_rank, args=(r, port, method, position, str(tmp_path), str(tmp_path / "cache"))
        )
        for r in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name, value in single.state_dict().items():
        # Both ranks hold the same weights, equal to one process on the whole batch (up to
        # rounding).
        torch.testing.assert_close(ranks[0][name], ranks[1][name], rtol=0, atol=0)
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-4, atol=1e-5)
    assert torch.load(tmp_path / "flags0.pt") == torch.load(tmp_path / "flags1.pt") == [False, True]


def test_shards_split_every_row_of_a_batch_once():
    idx = torch.arange(10)
    shards = [Distributed(r, 3).shard(idx) for r in range(3)]
    assert sorted(torch.cat(shards).tolist()) == list(range(10))


def _conv_step(rows: slice, fused: bool) -> torch.nn.Module:
    """One Adam step of a channels-last conv net on rows of a fixed batch; the gradients averaged
    over the ranks when a process group is up."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.SiLU(), torch.nn.Conv2d(8, 4, 3))
    net.to(memory_format=torch.channels_last)
    x = torch.randn(8, 3, 8, 8).to(memory_format=torch.channels_last)
    net(x[rows]).square().mean().backward()
    Distributed.from_torch().average_gradients(list(net.parameters()))
    torch.optim.Adam(net.parameters(), lr=0.1, fused=fused).step()
    return net


def _adam_rank(rank, port, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        net = _conv_step(slice(4 * rank, 4 * rank + 4), fused=True)
        torch.save(net.state_dict(), os.path.join(out_dir, f"adam{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_averaged_gradients_keep_a_channels_last_layout_for_fused_adam(tmp_path):
    # Fused Adam (the GPU's) walks a parameter and its gradient as flat memory: an averaged
    # gradient in another layout than its channels-last weight pairs the wrong elements. Two gloo
    # ranks, each on half the batch, must take the step one process takes on the whole batch.
    single = _conv_step(slice(0, 8), fused=False).state_dict()
    ctx = mp.get_context("fork")
    port = free_port()
    procs = [ctx.Process(target=_adam_rank, args=(r, port, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    for rank in range(2):
        got = torch.load(tmp_path / f"adam{rank}.pt")
        for name, value in single.items():
            torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-6)
