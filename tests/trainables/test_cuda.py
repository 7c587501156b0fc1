"""The CUDA paths of training and sampling: bf16 autocast with channels-last and fused Adam, MFU
against the GPU's listed peak, the same weights and samples as on the CPU, compiled training and
sampling, the bf16 guidance gradient.

Marked gpu: `make test` deselects them and CI has no GPU. Run them with `make test-gpu` on a
machine with CUDA (bench/gpu_session.sh does, with the benchmarks); docs/benchmarks.md says when
they last ran there.
"""

import copy

import pytest
import torch

from trainables.config import from_flat
from trainables.data.images import tiny_images
from trainables.data.toy import make_toy
from trainables.fit import CHECKPOINT_FILE, TrainingSet, load_checkpoint, train_artifact
from trainables.flops import peak_tflops
from trainables.methods import get_method

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

CUDA = torch.device("cuda")
TOY = {
    "train.steps": 20,
    "train.steps_per_epoch": 10,
    "train.batch_size": 32,
    "model.hidden": 16,
    "model.depth": 1,
    "sample.num_steps": 6,
    "sample.num_per_class": 8,
}


def _toy(method: str, **extra):
    data = make_toy("gmm2", 200, 100, seed=0)
    config = from_flat({"method": method, "data.label_percent": 20, **TOY, **extra}, base="toy")
    return config, TrainingSet.split(data.x, data.y, 2, 20, 0)


def _weights(net) -> torch.Tensor:
    return torch.cat([p.detach().float().cpu().flatten() for p in net.state_dict().values()])


def _toy_networks(config, split, device) -> dict:
    """CG's score model and classifier trained on `device`, keyed as the samplers take them."""
    score, classifier = get_method("CG").artifacts
    nets = {"score": train_artifact(score, config, split, device=device)}
    nets["classifier"] = train_artifact(classifier, config, split, device=device)
    return nets


def test_bf16_channels_last_image_training_on_cuda_uses_fused_adam_and_logs_mfu(tmp_path):
    """The GPU preset's training settings on tiny images: finite losses for the score model and
    the CE+SC classifier (its double backward under autocast), weights kept in fp32 and
    channels-last, Adam fused, and an MFU against the GPU's listed peak in every epoch."""
    flat = {
        "method": "CG-SC-all",
        "data.label_percent": 25,
        "train.steps": 20,
        "train.steps_per_epoch": 10,
        "train.batch_size": 16,
        "train.precision": "bf16",
        "train.channels_last": True,
    }
    config = from_flat(flat, base="tiny-images")
    data = tiny_images(64, 32, 16, 0)
    split = TrainingSet.split(data.x, data.y, 4, 25, 0)
    peak = peak_tflops(CUDA, "bf16", 0.0)
    for artifact in get_method("CG-SC-all").artifacts:
        seen: list[dict] = []
        folder = tmp_path / artifact.name
        net = train_artifact(
            artifact, config, split, device=CUDA, checkpoint_dir=folder, callback=seen.append
        )
        assert len(seen) == 2
        assert all(torch.isfinite(torch.tensor(m[f"{artifact.network}/loss"])) for m in seen)
        conv = next(m.weight for m in net.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.device.type == "cuda" and conv.dtype == torch.float32
        assert conv.is_contiguous(memory_format=torch.channels_last)
        saved = load_checkpoint(folder / CHECKPOINT_FILE)
        assert saved["optimizer"]["param_groups"][0]["fused"] is True
        for m in seen:
            assert m[f"{artifact.network}/tflops"] > 0
            if peak is None:  # a GPU the platform has no listed peak for: TFLOP/s, no MFU
                assert f"{artifact.network}/mfu" not in m
            else:
                assert 0 < m[f"{artifact.network}/mfu"] < 1


def test_fp32_training_on_cuda_reaches_the_cpu_weights():
    """The batches and noise are drawn on the CPU: 20 fp32 steps of the toy score model and the
    CE+SC classifier give the CPU's weights on the GPU (fused against foreach Adam and kernel
    rounding apart)."""
    config, split = _toy("CG-SC-all")
    for artifact in get_method("CG-SC-all").artifacts:
        on_cpu = train_artifact(artifact, config, split)
        on_gpu = train_artifact(artifact, config, split, device=CUDA)
        torch.testing.assert_close(_weights(on_gpu), _weights(on_cpu), rtol=1e-3, atol=1e-4)


def test_guided_samples_on_cuda_are_the_cpu_samples():
    """The prior and every sampler step's noise are drawn on the CPU, so the same networks give
    the same guided samples on either device."""
    from trainables.evaluation.sampling import sample_classes

    config, split = _toy("CG")
    nets = _toy_networks(config, split, "cpu")
    on_cpu, y = sample_classes(config, nets, 2, 2)
    gpu_nets = {name: copy.deepcopy(net).to(CUDA) for name, net in nets.items()}
    on_gpu, y_gpu = sample_classes(config, gpu_nets, 2, 2, device=CUDA)
    assert torch.equal(y_gpu.cpu(), y)
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-3, atol=1e-3)


def test_compiled_training_and_sampling_on_cuda_match_eager():
    """train.compile and sample.compile on the GPU (Triton kernels): the DSM score model's weights
    and CG's guided samples equal the eager ones, float rounding apart, and dynamo compiled."""
    from torch._dynamo.utils import counters

    from trainables.evaluation.sampling import sample_classes

    config, split = _toy("CG")
    compiled_config, _ = _toy("CG", **{"train.compile": True, "sample.compile": True})
    score = get_method("CG").artifacts[0]
    eager = train_artifact(score, config, split, device=CUDA)
    counters.clear()
    compiled = train_artifact(score, compiled_config, split, device=CUDA)
    assert counters["stats"]["unique_graphs"] >= 1
    torch.testing.assert_close(_weights(compiled), _weights(eager), rtol=1e-4, atol=1e-5)
    nets = _toy_networks(config, split, CUDA)
    plain, _ = sample_classes(config, nets, 2, 2, device=CUDA)
    counters.clear()
    fast, _ = sample_classes(compiled_config, nets, 2, 2, device=CUDA)
    assert counters["stats"]["unique_graphs"] >= 2  # the score model and the classifier
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)


def test_bf16_guidance_gradient_on_cuda_points_where_the_fp32_one_does():
    """sample.guidance_precision bf16 on the GPU: the classifier's input gradient differs from
    fp32 (the knob acts) and keeps its direction (cosine > 0.99 at every noise level)."""
    from trainables.guidance import classifier_log_posterior_grad

    config, split = _toy("CG")
    classifier = train_artifact(get_method("CG").artifacts[1], config, split, device=CUDA)
    test = make_toy("gmm2", 200, 256, seed=0)
    x, y = test.test_x.to(CUDA), test.test_y.to(CUDA)
    for level in (0.05, 0.2, 1.0):
        sigma = torch.full((len(x),), level, device=CUDA)
        noisy = x + level * torch.randn_like(x)
        full = classifier_log_posterior_grad(classifier, noisy, sigma, y, "fp32")
        half = classifier_log_posterior_grad(classifier, noisy, sigma, y, "bf16")
        assert half.dtype == torch.float32 and not torch.equal(half, full)
        cosine = torch.nn.functional.cosine_similarity(half, full, dim=1)
        assert cosine.mean() > 0.99, (level, cosine.mean().item())


def test_training_steps_on_cuda_never_wait_for_the_gpu():
    """Item 1's pinned-memory data and "no host syncs in the step": after a first step, drawing a
    batch (pinned, non-blocking copies) and a bf16 channels-last CE+SC step with fused Adam run
    under torch.cuda.set_sync_debug_mode("error"), which raises on any synchronising call (a
    blocking copy, .item(), torch.nonzero, a boolean mask)."""
    from trainables import fit
    from trainables.data.batches import BatchSampler
    from trainables.methods import artifact_config
    from trainables.sde import VESDE

    flat = {"method": "CG-SC-all", "data.label_percent": 25, "train.precision": "bf16"}
    config = from_flat({**flat, "train.channels_last": True}, base="tiny-images")
    data = tiny_images(64, 32, 16, 0)
    split = TrainingSet.split(data.x, data.y, 4, 25, 0)
    artifact = get_method("CG-SC-all").artifacts[1]
    config = artifact_config(artifact, config)
    state = fit._setup(artifact, config, split, {}, CUDA)
    sampler = BatchSampler(split.labeled_idx, len(split.x), 16, artifact.row_usage, 0)
    sde, dist = VESDE.from_config(config.sde), fit.Distributed()

    def step():
        rows = sampler.batch(state.step)
        uniform = sampler.uniform_mask(len(rows))
        batch, noise = fit._draw_batch(state, config, split, rows, sde, dist, CUDA, uniform)
        return fit._optimise(state, artifact, config, batch, noise, dist)

    step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        logged = [step() for _ in range(3)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.isfinite(m["loss"]).item() for m in logged)
    _assert_the_cuda_batch_is_the_cpu_batch(fit, state, config, split, sampler, sde)


def _assert_the_cuda_batch_is_the_cpu_batch(fit, state, config, split, sampler, sde) -> None:
    """The same draw on the CPU and through pinned memory to the GPU: equal values, the batch's
    layout, equal row subsets."""
    rows = sampler.batch(0)
    draws = []
    for device in ("cpu", CUDA):
        state.generator.manual_seed(7)
        args = (state, config, split, rows, sde, fit.Distributed(), torch.device(device))
        draws.append(fit._draw_batch(*args, sampler.uniform_mask(len(rows))))
    (cpu, cpu_noise), (gpu, gpu_noise) = draws
    assert gpu.x.is_contiguous(memory_format=state.memory)
    assert set(gpu.subsets) == set(cpu.subsets)
    same = [
        torch.equal(a.cpu(), b)
        for a, b in ((gpu.x, cpu.x), (gpu.y, cpu.y), (gpu_noise.z, cpu_noise.z))
    ]
    same += [torch.equal(gpu.subsets[k].cpu(), cpu.subsets[k]) for k in cpu.subsets]
    assert all(same)


def test_guided_sampler_steps_on_cuda_never_wait_for_the_gpu():
    """Item 3: CG's guided PC steps (classifier gradient included) with the noise drawn on the CPU
    and sent through pinned memory run under torch.cuda.set_sync_debug_mode("error")."""
    from trainables.methods import guided_score_fn, model_fns
    from trainables.samplers import pc_sampler
    from trainables.sde import VESDE

    config, split = _toy("CG")
    fns = model_fns(_toy_networks(config, split, CUDA), num_classes=2)
    y = torch.arange(2, device=CUDA).repeat_interleave(8)
    score_fn = guided_score_fn(get_method("CG"), fns, y, 2.0)
    sde = VESDE.from_config(config.sde)
    x = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(0)).to(CUDA)
    sigmas = sde.discretize(6)
    pc_sampler(score_fn, x, sigmas, generator=torch.Generator().manual_seed(1))  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = pc_sampler(score_fn, x, sigmas, generator=torch.Generator().manual_seed(1))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.device.type == "cuda" and torch.isfinite(out).all()
