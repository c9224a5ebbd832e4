"""The flow-matching plugin on tiny seeded models: loss, ODE samplers, NFE, inversion, reflow, the registry."""

import json
import types

import pytest
import torch

from genlab import GenlabError
from genlab_flow import Flow, FlowReflow, nfe, time_grid
from genlab_flow.network import TIME_SCALE, VelocityUNet

TINY = dict(sample_size=8, block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=8)

LATENT_TINY = {k: v for k, v in TINY.items() if k != "sample_size"}  # the latent's size is measured


def tiny_net(**kw):
    torch.manual_seed(0)
    net = VelocityUNet(**{**TINY, **kw}).eval()
    with torch.no_grad():  # a fresh UNet's velocity is loud; a trained one is smoother
        net.conv_out.weight.mul_(0.1)
    return net


@pytest.fixture
def model():
    return Flow.from_network(tiny_net())


class GaussianFlow(torch.nn.Module):
    """The exact velocity field for data x_0 ~ N(mu, s^2 I) (in [-1, 1] pixel space) under
    x_t = (1 - t) x_0 + t eps: a stand-in for a perfectly trained flow. Its ODE carries noise z to
    exactly mu + s z, so samplers can be checked against the true answer."""

    def __init__(self, mu=-0.1, s=0.25):
        super().__init__()
        self.mu, self.s = mu, s
        self.config = types.SimpleNamespace(first_stage_model=None, in_channels=1, sample_size=8, scale_factor=1.0)
        self.calls = 0

    def velocity(self, x, t):
        self.calls += 1
        t = t.view(-1, 1, 1, 1).to(x.dtype)
        var = (1 - t) ** 2 * self.s**2 + t**2
        centred = x - (1 - t) * self.mu
        return (t - (1 - t) * self.s**2) * centred / var - self.mu  # E[eps | x_t] - E[x_0 | x_t]


@pytest.fixture
def gaussian():
    return Flow.from_network(GaussianFlow())


def test_flow_loss_is_the_velocity_error_on_the_straight_line(model):
    x0 = torch.rand(6, 1, 8, 8) * 2 - 1
    eps = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        loss, _ = model.flow_loss(model.network, x0, eps, torch.Generator().manual_seed(3))
    # the same t from the same generator, then x_t and the target by hand
    t = torch.rand(6, generator=torch.Generator().manual_seed(3))
    x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
    with torch.no_grad():
        predicted = model.network(x_t, t * TIME_SCALE).sample
    assert float(loss) == pytest.approx(float(((predicted - (eps - x0)) ** 2).mean()), rel=1e-5)
    # logit-normal times: sigmoid of a standard normal draw
    logit = Flow.from_network(tiny_net(time_sampling="logit-normal"))
    with torch.no_grad():
        loss, _ = logit.flow_loss(logit.network, x0, eps, torch.Generator().manual_seed(3))
    t = torch.sigmoid(torch.randn(6, generator=torch.Generator().manual_seed(3)))
    x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
    with torch.no_grad():
        predicted = logit.network(x_t, t * TIME_SCALE).sample
    assert float(loss) == pytest.approx(float(((predicted - (eps - x0)) ** 2).mean()), rel=1e-5)


def test_training_from_the_pixels_lowers_the_loss():
    from genlab import load_dataset

    torch.manual_seed(0)
    net = VelocityUNet(**TINY)
    model = Flow.from_network(net)
    data = load_dataset("digits", "train")
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        batch = {"images": data.images[torch.randint(len(data), (32,), generator=generator)]}
        loss, _ = model.training_loss(net, batch, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_euler_is_diffusers_flow_match_euler_on_an_even_grid(model):
    from diffusers import FlowMatchEulerDiscreteScheduler

    steps = 5
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(sigmas=time_grid(steps)[:-1])
    x = noise.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(model.network(x, t.expand(len(x))).sample, t, x).prev_sample
        ours = model.solve(noise, steps, "euler")
    assert torch.allclose(ours, x, atol=1e-5)


def test_samplers_converge_to_the_exact_map_and_heun_is_second_order(gaussian):
    z = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    exact = gaussian.network.mu + gaussian.network.s * z.double()

    def error(sampler, steps):
        return float((gaussian.solve(z.double(), steps, sampler) - exact).abs().max())

    assert error("euler", 400) < 1e-2 and error("heun", 40) < 5e-3
    assert error("euler", 400) > error("euler", 100) / 5  # first order: 4x the steps, about 1/4 the error
    assert error("heun", 16) < error("heun", 8) / 3  # second order: 2x the steps, about 1/4 the error
    assert error("heun", 8) < error("euler", 8) / 2


def test_euler_with_many_steps_gives_heuns_samples_on_a_tiny_net(model):
    euler = model.sample(4, seed=5, options={"sampler": "euler", "steps": 300}).images
    heun = model.sample(4, seed=5, options={"sampler": "heun", "steps": 20}).images
    few = model.sample(4, seed=5, options={"sampler": "euler", "steps": 2}).images
    assert (euler - heun).abs().max() < 2e-3 < (few - heun).abs().max()


@pytest.mark.parametrize("sampler, steps, expected", [("euler", 1, 1), ("euler", 4, 4), ("heun", 1, 1),
                                                      ("heun", 2, 3), ("heun", 4, 7)])
def test_nfe_counts_network_calls(gaussian, sampler, steps, expected):
    out = gaussian.sample(2, seed=0, options={"sampler": sampler, "steps": steps})
    assert out.nfe == nfe(sampler, steps) == expected == gaussian.network.calls  # one call per batch per evaluation
    assert out.images.shape == (2, 1, 8, 8) and 0 <= float(out.images.min()) and float(out.images.max()) <= 1


@pytest.mark.parametrize("sampler, steps", [("euler", 3), ("heun", 1), ("heun", 4)])
def test_trajectory_counts_the_network_evaluations_made_so_far(gaussian, sampler, steps):
    seen = []
    for frame in gaussian.trajectory(1, seed=0, options={"sampler": sampler, "steps": steps}):
        seen.append((frame["nfe"], gaussian.network.calls))
    assert all(reported == made for reported, made in seen) and seen[-1][0] == nfe(sampler, steps)


def test_the_forward_process_is_the_straight_line_from_the_digit_to_noise(model):
    import math

    digit = torch.rand(1, 1, 8, 8)
    curves = model.schedule_curves()
    k = 250  # t = 0.25
    assert curves["signal"][k - 1] == 0.75 and curves["noise"][k - 1] == 0.25
    assert math.isclose(curves["snr"][k - 1], 9.0) and math.isclose(curves["alpha_bar"][k - 1], 0.9)
    eps = torch.randn(digit.shape, generator=torch.Generator().manual_seed(4))
    expected = ((0.75 * (digit * 2 - 1) + 0.25 * eps) + 1) / 2  # in pixel space, shown in [0, 1]
    assert torch.allclose(model.noise(digit, k, seed=4), expected.clamp(0, 1), atol=1e-6)
    # at t = 1 nothing of the digit is left
    assert torch.equal(model.noise(digit, 1000, seed=4), model.noise(torch.zeros_like(digit), 1000, seed=4))
    with pytest.raises(GenlabError, match="t=0 is outside 1..1000"):
        model.noise(digit, 0)


def test_the_apps_forward_view_shows_the_flows_coefficients(monkeypatch):
    from genlab import app

    flow = Flow.from_network(tiny_net())
    monkeypatch.setattr(flow, "metadata", lambda: {"dataset": "digits"})  # 8x8 digits for the 8x8 net
    monkeypatch.setattr(app, "_model", lambda model_id: flow)
    _, _, text, _ = app.forward_view("flow", 0, 250, 0)
    assert text.startswith("t = 250 of 1000: ᾱ_t = 0.9000, so x_t keeps 0.750 of the image and 0.250 noise")
    _, _, text, _ = app.forward_view("flow", 0, 1000, 0)  # pure noise: an SNR of 0, not an error
    assert "keeps 0.000 of the image and 1.000 noise; SNR = 0 (-∞ dB)" in text


def test_trajectory_ends_at_the_sample_with_the_clean_guess_at_every_step(model):
    frames = list(model.trajectory(2, seed=3, options={"sampler": "heun", "steps": 6}, record_every=2))
    assert [f["step"] for f in frames] == [1, 3, 5, 6] and frames[-1]["t"] == 0.0
    sample = model.sample(2, seed=3, options={"sampler": "heun", "steps": 6}).images
    assert torch.allclose(frames[-1]["x_t"], sample, atol=1e-6)
    # x̂_0 = x_t - t v at the step's start: at 1 step it is the Euler sample itself
    one = next(model.trajectory(2, seed=3, options={"sampler": "euler", "steps": 1}))
    assert torch.allclose(one["x0_hat"], one["x_t"], atol=1e-6)


def test_ode_inversion_then_decoding_returns_the_input(gaussian, model):
    z = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    images = gaussian.decode(z, steps=12)
    noise = gaussian.encode(images, steps=12, refine=3)
    assert (noise - z).abs().max() < 0.02  # the exact field's inverse is the true noise
    assert (gaussian.decode(noise, steps=12) - images).abs().max() < 1e-3
    digits = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    assert (model.reconstruct(digits, steps=8) - digits).abs().max() < 1e-3
    strip = model.interpolate(digits[0], digits[1], steps=5)
    assert strip.shape == (5, 1, 8, 8)
    assert (strip[0] - digits[0]).abs().max() < 1e-3 and (strip[-1] - digits[1]).abs().max() < 1e-3


def test_sdedit_at_full_strength_is_sampling_and_at_low_strength_stays_close(model):
    digits = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    options = {"sampler": "euler", "steps": 4}
    full = model.edit(digits, strength=1.0, seed=7, options=options)
    assert torch.allclose(full, model.sample(2, seed=7, options=options).images, atol=1e-6)
    light = model.edit(digits, strength=0.05, seed=7, options=options)
    assert (light - digits).abs().mean() < (full - digits).abs().mean()
    with pytest.raises(GenlabError, match="strength"):
        model.edit(digits, strength=0.0)


def test_options_and_errors_are_one_sentence(model):
    with pytest.raises(GenlabError, match="invalid option sampler"):
        model.sample(1, options={"sampler": "rk4"})
    with pytest.raises(GenlabError, match="has no option 'eta'"):
        model.sample(1, options={"eta": 0.5})
    with pytest.raises(GenlabError, match="steps=0 must be between"):
        model.decode(torch.zeros(1, 1, 8, 8), steps=0)
    assert FlowReflow.parse_options({}).steps == 1 and Flow.parse_options({}).sampler == "heun"


def test_reflow_student_learns_the_teachers_pairs_and_samples_in_one_step(tmp_path, fake_entry_points):
    """Both models train with genlab's own loop, through entry points like a third-party plugin."""
    from genlab.training import TrainConfig, train

    fake_entry_points({"flow": "genlab_flow"})
    network = {k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}
    teacher = train(TrainConfig(model="flow", dataset="digits", steps=10, batch_size=16, seed=0,
                                checkpoint_every=10, network=network), tmp_path / "flow", progress=False)
    student = train(TrainConfig(model="flow-reflow", dataset="digits", steps=6, batch_size=16, seed=0,
                                checkpoint_every=6, network={"teacher_weights": str(teacher), "pairs": 40,
                                                             "pair_steps": 3}),
                    tmp_path / "reflow", progress=False)
    config = json.loads((student / "config.json").read_text())
    assert config["reflow"]["pairs"] == 40 and config["reflow"]["nfe_per_pair"] == 5
    assert config["reflow"]["cpu_seconds"] >= 0 and config["block_out_channels"] == [8, 16]
    # the pairs are the teacher's ODE: noise seeded by pair_seed, carried by Heun in 3 steps
    base = Flow(weights=teacher)
    noises, ends = base.pairs(40, seed=1, sampler="heun", steps=3)
    first = torch.randn((40, 1, 8, 8), generator=torch.Generator().manual_seed(1_000_003))
    assert torch.equal(noises, first) and torch.allclose(ends, base.solve(first, 3, "heun"))
    model = FlowReflow(weights=student)
    out = model.sample(5, seed=0)
    assert out.nfe == 1 and out.images.shape == (5, 1, 8, 8)
    assert out.info == {"sampler": "euler", "steps": 1, "device": "cpu", "backend": "torch", "precision": "fp32"}
    with pytest.raises(GenlabError, match="holds no teacher pairs"):
        model.training_loss(model.network, {"images": torch.zeros(2, 1, 8, 8, dtype=torch.uint8)})


def test_a_flow_on_a_registered_autoencoders_latents(tmp_path, tiny_first_stage_dir, fake_entry_points):
    fake_entry_points({"ldm": "genlab_ldm", "flow": "genlab_flow"})
    network = Flow.create_network(first_stage_model="ldm-autoencoder", first_stage_weights=str(tiny_first_stage_dir),
                                  calibration_dataset="digits", **LATENT_TINY)
    model = Flow.from_network(network)
    assert model.latent_shape() == (4, 4, 4) and model.image_shape() == (1, 8, 8)
    assert network.config.scale_factor > 0 and len(network.config.first_stage_digest) == 64
    out = model.sample(3, seed=0, options={"steps": 2})
    assert out.images.shape == (3, 1, 8, 8) and out.nfe == 3
    generator = torch.Generator().manual_seed(0)
    loss, _ = model.training_loss(network, {"images": torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)}, generator)
    assert loss.requires_grad and loss.item() > 0
    # the autoencoder's weights are part of the flow: changed weights are refused in one sentence
    network.save_pretrained(tmp_path / "flow")
    moved = tmp_path / "first-stage"
    moved.mkdir()
    for f in tiny_first_stage_dir.iterdir():
        if f.is_file():
            (moved / f.name).write_bytes(f.read_bytes())
    config = json.loads((tmp_path / "flow" / "config.json").read_text())
    (tmp_path / "flow" / "config.json").write_text(json.dumps({**config, "first_stage_weights": str(moved)}))
    assert Flow(weights=tmp_path / "flow").sample(1).images.shape == (1, 1, 8, 8)  # same bytes elsewhere: fine
    weights = next(moved.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(GenlabError, match="not the ones this flow was trained on"):
        Flow(weights=tmp_path / "flow").sample(1)


def test_a_latent_flow_without_its_autoencoders_plugin_says_so(tmp_path, tiny_first_stage_dir, fake_entry_points):
    fake_entry_points({"ldm": "genlab_ldm", "flow": "genlab_flow"})
    network = Flow.create_network(first_stage_model="ldm-autoencoder", first_stage_weights=str(tiny_first_stage_dir),
                                  calibration_dataset="digits", **LATENT_TINY)
    network.save_pretrained(tmp_path / "flow")
    fake_entry_points({"flow": "genlab_flow"})
    with pytest.raises(GenlabError, match="moves the latents of model ldm-autoencoder, which is unavailable"):
        Flow(weights=tmp_path / "flow").sample(1)


def test_the_plugin_is_listed_sampled_and_evaluated_like_the_others(tmp_path, fake_entry_points):
    from genlab import Capability, get_model, get_models
    from genlab.evals.runner import EvalConfig, run_eval
    from genlab.registry import plugin_of

    fake_entry_points({"flow": "genlab_flow"})
    assert {"flow", "flow-reflow"} <= set(get_models(Capability.TRAJECTORY))
    assert plugin_of("flow") == plugin_of("flow-reflow") == "flow"
    assert get_models()["flow"].describe()["family"] == "flow-matching"
    weights = tmp_path / "flow"
    tiny_net().save_pretrained(weights)
    assert get_model("flow", weights=str(weights)).sample(2, seed=0).images.shape == (2, 1, 8, 8)
    config = EvalConfig(dataset="digits", num_samples=20, batch_size=20, likelihood_images=6, interpolation_pairs=2,
                        interpolation_steps=4,
                        models=[{"id": "flow", "label": "flow euler-1", "weights": str(weights),
                                 "options": {"sampler": "euler", "steps": 1}},
                                {"id": "flow", "label": "flow heun-2", "weights": str(weights),
                                 "options": {"sampler": "heun", "steps": 2}}])
    run_eval(config, out_dir=tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    rows = {r["model"]: r for r in metrics["models"]}
    assert rows["flow euler-1"]["nfe"] == 1 and rows["flow heun-2"]["nfe"] == 3
    for row in rows.values():
        assert row["family"] == "flow-matching" and row["fid"] > 0 and row["reconstruction"]["psnr"] > 20
        assert row["interpolation"]["pairs"] == 2
    assert metrics["best_by_family"]["flow-matching"]["model"] in rows


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_the_velocity_network_runs_on_an_exported_graph_like_pytorch(model, backend, tmp_path, monkeypatch):
    """The flow's sampler, inversion and SDEdit run their network through genlab.runtime as the DDPM's
    and LDM's do: an exported graph gives PyTorch fp32's samples to float rounding."""
    pytest.importorskip(backend)
    monkeypatch.setenv("GENLAB_CACHE", str(tmp_path / "cache"))
    options = {"sampler": "heun", "steps": 3}
    plain = model.sample(4, seed=0, options={**options, "backend": "torch", "precision": "fp32"})
    graph = model.sample(4, seed=0, options={**options, "backend": backend, "precision": "fp32"})
    assert graph.info["backend"] == backend and plain.info["backend"] == "torch"
    assert float((graph.images - plain.images).abs().max()) < 1e-4
    assert any((tmp_path / "cache" / "graphs").glob("flow-*.onnx"))
    # inversion takes what backend=auto takes (here forced): the graph runs, not the PyTorch module
    monkeypatch.setenv("GENLAB_BACKEND", backend)
    calls, velocity = [], model.network.velocity
    monkeypatch.setattr(model.network, "velocity", lambda *a: calls.append(1) or velocity(*a))
    model.reconstruct(plain.images, steps=2)
    assert calls == []


def test_the_ldm_distilled_student_learns_the_ldms_own_map_digit_by_digit(tmp_path, tiny_first_stage_dir, tiny_ldm_dir,
                                                                           fake_entry_points):
    """flow-distill: pairs are the LDM's (noise, latent) for prompts "0".."9" in turn, the student
    starts as the base flow (its class embedding at zero), learns per digit and samples in 1 NFE."""
    from genlab.training import TrainConfig, train
    from genlab_flow import FlowDistill
    from genlab_ldm import LDM

    fake_entry_points({"ldm": "genlab_ldm", "flow": "genlab_flow"})
    base_dir = tmp_path / "base"
    Flow.create_network(first_stage_model="ldm-autoencoder", first_stage_weights=str(tiny_first_stage_dir),
                        calibration_dataset="digits", **LATENT_TINY).save_pretrained(base_dir)
    teacher_options = {"sampler": "ddim", "steps": 3}
    network = {"teacher_weights": str(tiny_ldm_dir), "teacher_options": teacher_options,
               "init_weights": str(base_dir), "pairs": 20, "pair_batch": 10}
    # before training the student is the base flow, whatever the digit
    fresh = FlowDistill.from_network(FlowDistill.create_network(**network))
    base = Flow(weights=base_dir)
    for digit in (0, 7):
        assert torch.allclose(fresh.sample(3, seed=2, options={"steps": 2, "digit": digit, "backend": "torch"}).images,
                              base.sample(3, seed=2, options={"sampler": "euler", "steps": 2, "backend": "torch"}).images,
                              atol=1e-6)
    student = train(TrainConfig(model="flow-distill", dataset="digits", steps=8, batch_size=16, seed=0,
                                learning_rate=1e-2, checkpoint_every=8, network=network),
                    tmp_path / "student", progress=False)
    config = json.loads((student / "config.json").read_text())
    assert config["num_classes"] == 10 and config["reflow"]["pairs"] == 20 and config["reflow"]["nfe_per_pair"] == 3
    assert config["reflow"]["teacher_options"]["prompt"] == "{digit}" and config["reflow"]["cpu_seconds"] >= 0
    # the pairs are the LDM's sampler: seeded noise and the latents that sample() would decode
    ldm = LDM(weights=tiny_ldm_dir)
    options = {"prompt": "{digit}", "guidance": 1.0, **teacher_options, "backend": "torch", "precision": "fp32"}
    noise, latents = ldm.sample_latents(10, seed=1_000_003, options=options)
    assert torch.equal(noise, torch.randn((10, 4, 4, 4), generator=torch.Generator().manual_seed(1_000_003)))
    assert torch.allclose(ldm.decode(latents * ldm.network.config.scale_factor),
                          ldm.sample(10, seed=1_000_003, options=options).images, atol=1e-5)
    made = FlowDistill.create_network(**network)
    from genlab_flow import REFLOW_PAIRS

    noises, ends, labels = REFLOW_PAIRS[made]
    assert torch.equal(noises[:10], noise) and torch.allclose(ends[:10], latents * base.network.config.scale_factor)
    assert labels.tolist() == [i % 10 for i in range(20)]
    # trained, the digit changes the sample; -1 draws 0..9 in turn
    model = FlowDistill(weights=student)
    out = model.sample(4, seed=0, options={"steps": 1})
    assert out.nfe == 1 and out.images.shape == (4, 1, 8, 8) and out.info["steps"] == 1
    zeros, ones = (model.sample(2, seed=0, options={"steps": 1, "digit": d}).images for d in (0, 1))
    assert not torch.allclose(zeros, ones)
    assert torch.allclose(out.images[:2], torch.stack([zeros[0], ones[1]]), atol=1e-5)  # batches round apart
    for method in (model.encode, model.reconstruct, model.edit):  # the base flow's, which need the digit
        with pytest.raises(GenlabError, match="cannot"):
            method(torch.zeros(1, 1, 8, 8))
    # one sentence for each wrong teacher setting
    for bad, message in (({"teacher_options": {"prompt": "a 7"}}, "must hold {digit}"),
                         ({"teacher_model": "ldm-autoencoder"}, "gives no latents"),
                         ({"teacher_model": "nope"}, "teacher_model nope is unavailable")):
        with pytest.raises(ValueError, match=message):
            FlowDistill.create_network(**{**network, **bad})


def test_a_class_conditional_flow_runs_on_an_exported_graph_like_pytorch(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from genlab_flow import FlowDistill

    monkeypatch.setenv("GENLAB_CACHE", str(tmp_path / "cache"))
    model = FlowDistill.from_network(tiny_net(num_classes=10))
    with torch.no_grad():
        model.network.class_embedding.weight.normal_()
    plain = model.sample(10, seed=0, options={"steps": 2, "backend": "torch"})
    graph = model.sample(10, seed=0, options={"steps": 2, "backend": "onnxruntime"})
    assert graph.info["backend"] == "onnxruntime"
    assert float((graph.images - plain.images).abs().max()) < 1e-4
