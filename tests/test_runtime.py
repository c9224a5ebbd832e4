"""genlab.runtime: devices, backends and precisions resolved in one place, with one-sentence errors;
the plain PyTorch path reproduces the samplers' own arithmetic exactly; exported graphs on ONNX Runtime
and OpenVINO match PyTorch fp32 per forward and over a whole sampler; the probe and its caches."""

import json
import os

import pytest
import torch
from conftest import TINY_FIRST_STAGE
from genlab_ddpm import DDPM
from genlab_ddpm.network import DenoisingUNet
from genlab_ldm import LDM, captions
from genlab_ldm.network import LatentDiffusion

from genlab import GenlabError, runtime
from genlab.cli import main

HAVE = {b: runtime.installed(b) for b in runtime.GRAPH_BACKENDS}
GRAPH = [pytest.param(b, marks=pytest.mark.skipif(not HAVE[b], reason=f"{b} is not installed"))
         for b in runtime.GRAPH_BACKENDS]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Exported graphs, compiled blobs and probe results of these tests go to a fresh folder."""
    monkeypatch.setenv("GENLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(runtime.BACKEND_ENV, raising=False)
    monkeypatch.delenv(runtime.DEVICE_ENV, raising=False)
    return tmp_path / "cache"


def tiny_ddpm(**kw) -> DDPM:
    torch.manual_seed(0)
    config = dict(sample_size=8, block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                  up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=8,
                  num_train_timesteps=50)
    net = DenoisingUNet(**{**config, **kw}).eval()
    with torch.no_grad():
        net.conv_out.weight.mul_(0.1)  # a fresh UNet predicts loud noise; a trained one is smoother
    return DDPM.from_network(net)


def tiny_ldm(conditioning="crossattn") -> LDM:
    torch.manual_seed(0)
    net = LatentDiffusion(first_stage_config=TINY_FIRST_STAGE, conditioning=conditioning,
                          band_edges={"thickness": [2.5, 3.1], "slant": [0.0, 0.26]},
                          vocabulary=captions.vocabulary(), block_out_channels=(16, 32), num_train_timesteps=50,
                          latent_size=4, text_hidden=32, start_token=True, causal_text=True)
    return LDM.from_network(net.eval())


# ----- devices ---------------------------------------------------------------------------------
def test_auto_is_the_cpu_without_an_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "_mps_available", lambda: False)
    assert runtime.resolve_device() == runtime.resolve_device("auto") == torch.device("cpu")
    assert runtime.resolve_device(" CPU ") == torch.device("cpu")


def test_auto_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(runtime, "_mps_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.resolve_device("auto") == torch.device("cuda")


@pytest.mark.parametrize("requested, cuda, message", [
    ("gpu0", False, "unknown device 'gpu0': choose one of auto, cpu, cuda, cuda:N, mps"),
    ("cuda", False, "device 'cuda' is not available: PyTorch sees no CUDA GPU on this machine; choose auto or cpu"),
    ("cuda:3", True, "device 'cuda:3' does not exist: this machine has 1 CUDA GPU(s), cuda:0 to cuda:0"),
    ("mps", False, "device 'mps' is not available: it needs an Apple-silicon Mac"),
    ("meta", False, "device 'meta' is not one genlab runs on: choose one of auto, cpu, cuda, cuda:N, mps"),
])
def test_a_device_this_machine_lacks_is_one_sentence(monkeypatch, requested, cuda, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(runtime, "_mps_available", lambda: False)
    with pytest.raises(GenlabError) as info:
        runtime.resolve_device(requested)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_environment_chooses_the_device_and_is_named_when_wrong(monkeypatch):
    monkeypatch.setenv(runtime.DEVICE_ENV, "cpu")
    assert tiny_ddpm().device == torch.device("cpu")
    monkeypatch.setenv(runtime.DEVICE_ENV, "tpu")
    with pytest.raises(GenlabError, match=r"unknown device 'tpu' \(from GENLAB_DEVICE\)"):
        runtime.resolve_device()


def test_cli_device_option_is_checked_before_anything_runs(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv(runtime.DEVICE_ENV, "")  # restored after the test: --device sets it for the process
    out = tmp_path / "s.png"
    for args, message in ((["--device", "quantum"], "Error: unknown device 'quantum'"),
                          (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "cuda:99"], "Error: device")):
        with pytest.raises(SystemExit) as info:
            main(["sample", "-m", "vae", "-n", "2", "--output", str(out), *args])
        err = capsys.readouterr().err
        assert info.value.code == 1 and message in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()
    with pytest.raises(SystemExit) as info:
        main(["sample", "-m", "vae", "-n", "2", "--output", str(out), "--device", "cpu"])
        raise SystemExit(0)
    assert info.value.code == 0 and "cpu" in capsys.readouterr().out and out.is_file()


def test_noise_is_drawn_on_the_cpu_then_moved():
    a = runtime.randn((3, 4), torch.Generator().manual_seed(7), device="meta")  # any device: moved there
    assert a.device.type == "meta"
    b = runtime.randn((3, 4), torch.Generator().manual_seed(7))
    torch.testing.assert_close(b, torch.randn((3, 4), generator=torch.Generator().manual_seed(7)), atol=0, rtol=0)


# ----- backends and precisions: declared, validated ---------------------------------------------
@pytest.mark.parametrize("backend, precision, device, message", [
    ("onnxruntime", "bf16", "cpu", "precision bf16 is not available on backend onnxruntime"),
    ("openvino", "fp32", "cuda", "backend openvino runs on the CPU only, and this model runs on cuda"),
    ("tensorrt", "fp32", "cpu", "unknown backend 'tensorrt': choose one of auto, torch, onnxruntime, openvino"),
    ("torch", "fp8", "cpu", "unknown precision 'fp8': choose one of auto, fp32, bf16"),
])
def test_impossible_runtime_choices_are_one_sentence(backend, precision, device, message):
    with pytest.raises(GenlabError, match=message):
        runtime.check_runtime(backend, precision, torch.device(device))


def test_a_missing_runtime_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(runtime, "installed", lambda backend: backend == "torch")
    with pytest.raises(GenlabError, match="backend openvino needs the openvino package, which is not installed: "
                                          "pip install openvino, or choose backend auto or torch"):
        runtime.check_runtime("openvino", "auto", torch.device("cpu"))
    # auto only offers what is installed
    assert {c.backend for c in runtime.candidates("auto", "auto", torch.device("cpu"), True)} == {"torch"}


def test_sampling_options_validate_backend_and_precision():
    with pytest.raises(GenlabError, match="invalid option backend='tensorrt' for model ddpm"):
        DDPM.parse_options({"backend": "tensorrt"})
    with pytest.raises(GenlabError, match="precision bf16 is not available on backend onnxruntime"):
        tiny_ddpm().sample(1, options={"steps": 2, "backend": "onnxruntime", "precision": "bf16"})
    assert DDPM.parse_options({}).backend == "auto" and LDM.parse_options({}).precision == "auto"


def test_genlab_backend_overrides_auto_and_is_checked(monkeypatch):
    monkeypatch.setenv(runtime.BACKEND_ENV, "torch")
    assert runtime.candidates("auto", "auto", torch.device("cpu"), True) == [runtime.Choice("torch", "fp32")]
    monkeypatch.setenv(runtime.BACKEND_ENV, "fast")
    with pytest.raises(GenlabError, match="GENLAB_BACKEND='fast' is not a backend"):
        tiny_ddpm().sample(1, options={"steps": 2})


def test_auto_on_a_gpu_is_plain_pytorch():
    assert runtime.candidates("auto", "auto", torch.device("cuda"), True) == [runtime.Choice("torch", "fp32")]


# ----- the plain PyTorch path is the samplers' own arithmetic ------------------------------------
def test_ddpm_on_the_cpu_gives_the_images_of_a_plain_diffusers_loop():
    model = tiny_ddpm()
    net = model.network
    for sampler in ("ddim", "dpm-solver++", "ddpm"):
        got = model.sample(3, seed=4, options={"sampler": sampler, "steps": 6, "backend": "torch", "precision": "fp32"})
        assert got.info["backend"] == "torch" and got.info["device"] == "cpu" and got.images.device.type == "cpu"
        # the same computation written out with diffusers alone
        generator = torch.Generator().manual_seed(4)
        scheduler = net.scheduler(sampler)
        scheduler.set_timesteps(6)
        x = torch.randn((3, 1, 8, 8), generator=generator) * scheduler.init_noise_sigma
        kwargs = {"generator": generator} if sampler != "dpm-solver++" else {}
        with torch.no_grad():
            for t in scheduler.timesteps:
                x = scheduler.step(net(scheduler.scale_model_input(x, t), t).sample, t, x, **kwargs).prev_sample
        torch.testing.assert_close(got.images, (x.clamp(-1, 1) + 1) / 2, atol=0, rtol=0)


def test_ldm_on_the_cpu_gives_the_images_of_its_plain_loop():
    model = tiny_ldm()
    net = model.network
    got = model.sample(2, seed=1, options={"prompt": "a 7", "guidance": 2.0, "steps": 4, "sampler": "ddim",
                                           "backend": "torch", "precision": "fp32"})
    generator = torch.Generator().manual_seed(1)
    scheduler = net.scheduler("ddim")
    scheduler.set_timesteps(4)
    z = torch.randn((2, 4, 4, 4), generator=generator) * scheduler.init_noise_sigma
    with torch.no_grad():
        cond = net.condition(["a 7"] * 2 + [""] * 2)
        for t in scheduler.timesteps:
            eps_c, eps_u = net.predict_noise(torch.cat([z, z]), t, cond).chunk(2)
            z = scheduler.step(eps_u + 2.0 * (eps_c - eps_u), t, z, generator=generator).prev_sample
        expected = net.first_stage.decode(z / net.config.scale_factor)
    torch.testing.assert_close(got.images, expected, atol=0, rtol=0)


def test_the_likelihood_bound_runs_pytorch_fp32_channels_last_whatever_the_backend(monkeypatch):
    """The DDPM bound's published numbers were computed in PyTorch fp32 with channels-last weights and
    inputs; neither GENLAB_BACKEND nor a sampler's runner (another memory format, a graph backend)
    changes them by a bit."""
    import copy

    model = tiny_ddpm()
    x = torch.randint(0, 256, (6, 1, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    reference = copy.deepcopy(model.network).to(memory_format=torch.channels_last)
    with monkeypatch.context() as patch:  # the network called as the published bound called it
        patch.setattr(model, "runner", lambda *args, **kwargs: (
            lambda x_t, t: reference(x_t.contiguous(memory_format=torch.channels_last), t).sample))
        expected = model.bits_per_dim(x, seed=0, exact_terms=4, strata=3)["bpd"]
    backend = next((b for b in runtime.GRAPH_BACKENDS if HAVE[b]), "torch")
    monkeypatch.setenv(runtime.BACKEND_ENV, backend)
    assert model.bits_per_dim(x, seed=0, exact_terms=4, strata=3)["bpd"] == expected
    for options in ({"backend": "torch", "precision": "fp32"}, {"backend": "auto", "precision": "fp32"}):
        model.sample(2, seed=0, options={"steps": 2, **options})  # the network now runs another way
        assert model.bits_per_dim(x, seed=0, exact_terms=4, strata=3)["bpd"] == expected
    with pytest.raises(ValueError, match="pins a torch runner"):
        model.runner("onnxruntime", "fp32", mode="channels_last")


# ----- fp32 is IEEE float32 ----------------------------------------------------------------------
def float32_settings():
    """What decides whether float32 matmuls and convolutions may run in TF32 (or bf16 in oneDNN)."""
    return torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32


@pytest.fixture
def tf32_allowed():
    """A process that let PyTorch use TF32 (as a notebook training on a GPU would); restored after."""
    before = float32_settings()
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    yield float32_settings()
    torch.set_float32_matmul_precision(before[0])
    torch.backends.cudnn.allow_tf32 = before[1]


class Recorder(torch.nn.Module):
    """Records the float32 settings in force while it runs (on a GPU they pick TF32 or float32 kernels)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(float32_settings())
        return x * 2


def test_fp32_runs_ieee_float32_and_gives_the_process_its_settings_back(tf32_allowed):
    assert tf32_allowed == ("high", True)
    module = Recorder()
    x = torch.ones(2, 3)
    runtime.TorchRunner(module, torch.device("cpu"), runtime.Choice("torch", "fp32"))(x)
    runtime.TorchRunner(module, torch.device("cpu"), runtime.Choice("torch", "fp32", "channels_last"))(x)
    assert module.seen == [("highest", False)] * 2 and float32_settings() == ("high", True)
    # bf16 autocast is its own precision: the process's settings are left as they are
    runtime.TorchRunner(module, torch.device("cpu"), runtime.Choice("torch", "bf16"))(x)
    assert module.seen[-1] == ("high", True)


def test_overlapping_fp32_blocks_restore_the_settings_once_the_last_ends(tf32_allowed):
    first, second = runtime.exact_fp32(), runtime.exact_fp32()
    first.__enter__()
    second.__enter__()  # e.g. another thread's fp32 call
    first.__exit__(None, None, None)  # not in order: threads end as they end
    assert float32_settings() == ("highest", False)
    second.__exit__(None, None, None)
    assert float32_settings() == ("high", True)


@pytest.mark.skipif(not hasattr(torch.backends.cudnn, "conv"), reason="PyTorch < 2.9 has no per-op float32 settings")
def test_fp32_also_overrides_per_op_settings_and_restores_them_exactly():
    ops = runtime._fp32_leaves()
    before = [op.fp32_precision for op in ops]
    try:
        # set per op (PyTorch's newer API): cuDNN's convolutions in TF32, oneDNN's in bf16
        torch.backends.cudnn.conv.fp32_precision = "tf32"
        torch.backends.cudnn.rnn.fp32_precision = "ieee"
        torch.backends.mkldnn.conv.fp32_precision = "bf16"
        chosen = [op.fp32_precision for op in ops]
        with runtime.exact_fp32():
            assert {op.fp32_precision for op in ops} == {"ieee"}
            assert torch.get_float32_matmul_precision() == "highest"
        assert [op.fp32_precision for op in ops] == chosen
    finally:
        for op, value in zip(ops, before):
            op.fp32_precision = value


def test_the_ddpm_likelihood_bound_runs_ieee_float32_and_says_what_ran_it(tf32_allowed, monkeypatch):
    model = tiny_ddpm()
    seen = []
    real = runtime.TorchRunner.__call__

    def call(self, *inputs):
        seen.append((self.choice, float32_settings()))
        return real(self, *inputs)

    monkeypatch.setattr(runtime.TorchRunner, "__call__", call)
    x = torch.randint(0, 256, (3, 1, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    out = model.bits_per_dim(x, seed=0, exact_terms=2, strata=1)
    assert {c for c, _ in seen} == {runtime.Choice("torch", "fp32", "channels_last")}
    assert out["runtime"] == {"device": "cpu", "backend": "torch", "precision": "fp32", "mode": "channels_last"}
    assert float32_settings() == ("high", True)


# ----- exported graphs match PyTorch fp32 ---------------------------------------------------------
@pytest.mark.parametrize("backend", GRAPH)
def test_graph_backends_match_torch_per_forward_and_over_a_sampler(backend):
    model = tiny_ddpm()
    torch_run, graph_run = model.runner("torch", "fp32"), model.runner(backend, "fp32")
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))  # 5: a padded OpenVINO bucket
    t = torch.tensor([0, 10, 20, 30, 49])
    torch.testing.assert_close(graph_run(x, t), torch_run(x, t), atol=1e-5, rtol=1e-4)
    options = {"sampler": "dpm-solver++", "steps": 8, "precision": "fp32"}
    a = model.sample(5, seed=2, options={**options, "backend": "torch"}).images
    b = model.sample(5, seed=2, options={**options, "backend": backend})
    assert b.info["backend"] == backend
    torch.testing.assert_close(b.images, a, atol=1e-4, rtol=0)


@pytest.mark.parametrize("backend, conditioning", [
    *[pytest.param(*p.values, "crossattn", marks=p.marks) for p in GRAPH],
    *[pytest.param(GRAPH[0].values[0], c, marks=GRAPH[0].marks) for c in ("class", "none")],  # other inputs
])
def test_graph_backends_run_the_ldm_whatever_its_conditioning(backend, conditioning):
    model = tiny_ldm(conditioning)
    options = {"prompt": "{digit}", "guidance": 2.0, "steps": 3, "precision": "fp32"}
    a = model.sample(3, seed=0, options={**options, "backend": "torch"}).images
    b = model.sample(3, seed=0, options={**options, "backend": backend}).images
    torch.testing.assert_close(b, a, atol=1e-4, rtol=0)


@pytest.mark.parametrize("backend", GRAPH)
def test_the_first_stage_decoder_runs_the_way_the_sampler_was_asked_to(backend):
    model = tiny_ldm()
    options = {"prompt": "{digit}", "guidance": 1.0, "steps": 2, "precision": "fp32"}
    a = model.sample(3, seed=0, options={**options, "backend": "torch"}).images
    b = model.sample(3, seed=0, options={**options, "backend": backend}).images
    torch.testing.assert_close(b, a, atol=1e-4, rtol=0)
    decoders = {key[2].backend for key in model._genlab_runners if key[0].startswith("first-stage")}
    assert decoders == {"torch", backend}  # each sample decoded where its UNet ran
    z = torch.randn(3, *model.latent_shape(), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model.decoder(backend)(z), model.decoder("torch")(z), atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", GRAPH)
def test_graph_batches_past_the_largest_chunk_are_run_in_chunks(backend, monkeypatch):
    model = tiny_ddpm()
    x = torch.randn(70, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.arange(70) % 50
    assert runtime._buckets(70) == [(0, 64), (64, 8)] and runtime._buckets(3) == [(0, 4)]  # OpenVINO's, padded
    run = model.runner(backend, "fp32")
    if backend == "onnxruntime":  # ONNX Runtime's session sees at most GRAPH_CHUNK rows a call
        session = run._run.session
        rows = []
        monkeypatch.setattr(run._run, "session", type("Spy", (), {
            "run": lambda self, names, feeds: rows.append(len(feeds["sample"])) or session.run(names, feeds)})())
    torch.testing.assert_close(run(x, t), model.runner("torch", "fp32")(x, t), atol=1e-5, rtol=1e-4)
    if backend == "onnxruntime":
        assert rows == [64, 6]


@pytest.mark.skipif(not HAVE["openvino"], reason="openvino is not installed")
def test_openvino_leaves_its_threads_to_the_os_scheduler(cache):
    """OpenVINO pins its threads to the first cores unless told not to: an eval's two one-thread
    workers then shared one core of two (each took 1.8x as long; measured on the LDM)."""
    run = tiny_ddpm().runner("openvino", "fp32")
    run(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))
    (queue,) = run._run.compiled.values()
    request = queue[0]
    assert request.get_compiled_model().get_property("ENABLE_CPU_PINNING") is False


@pytest.mark.skipif(not HAVE["openvino"], reason="openvino is not installed")
def test_bf16_stays_close_per_forward():
    model = tiny_ddpm()
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([5, 15, 25, 45])
    reference = model.runner("torch", "fp32")(x, t)
    for backend in ("torch", "openvino"):
        out = model.runner(backend, "bf16")(x, t)
        assert float((out - reference).norm() / reference.norm()) < runtime.BF16_TOLERANCE


@pytest.mark.skipif(not HAVE["onnxruntime"], reason="onnxruntime is not installed")
def test_exported_graphs_are_onnx_files_keyed_by_the_weights(cache):
    import onnx

    model = tiny_ddpm()
    model.runner("onnxruntime", "fp32")
    files = sorted((cache / "graphs").glob("*.onnx"))
    assert len(files) == 1 and files[0].read_bytes()[:1] != b"\x80"  # protobuf, not a pickle
    onnx.checker.check_model(onnx.load(str(files[0])))
    other = tiny_ddpm()
    with torch.no_grad():
        other.network.conv_in.weight.add_(0.01)
    other.runner("onnxruntime", "fp32")
    assert len(list((cache / "graphs").glob("*.onnx"))) == 2  # new weights, new graph
    same = tiny_ddpm()
    same.runner("onnxruntime", "fp32")
    assert len(list((cache / "graphs").glob("*.onnx"))) == 2  # same weights, the cached graph


def test_the_fingerprint_sees_weights_and_architecture():
    a, b = tiny_ddpm().network, tiny_ddpm().network
    assert runtime.fingerprint(a) == runtime.fingerprint(b)
    with torch.no_grad():
        b.conv_out.bias.add_(1e-6)
    b.__dict__.pop("_genlab_fingerprint", None)
    assert runtime.fingerprint(a) != runtime.fingerprint(b)
    # same weights, other head count: another graph
    assert runtime.fingerprint(tiny_ddpm(attention_head_dim=4).network) != runtime.fingerprint(a)


def test_the_fingerprint_is_the_same_in_every_process_and_folder(tmp_path):
    """Graphs and probe results are found by the fingerprint: loaded weights must give the same one in
    another process (diffusers lists a config's defaulted keys in set order, which follows the
    process's string hashing) and from another folder (diffusers records where it loaded from)."""
    import shutil
    import subprocess
    import sys

    tiny_ddpm().network.save_pretrained(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    script = ("import sys; from genlab import runtime; from genlab_ddpm.network import DenoisingUNet; "
              "print(runtime.fingerprint(DenoisingUNet.from_pretrained(sys.argv[1])))")
    seen = set()
    for folder, hash_seed in (("a", "1"), ("a", "2"), ("b", "3")):
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path / folder)], capture_output=True, text=True,
                              env={**os.environ, "PYTHONHASHSEED": hash_seed}, check=True)
        seen.add(done.stdout.strip().splitlines()[-1])
    assert len(seen) == 1


# ----- the probe ------------------------------------------------------------------------------
class FakeClock:
    """time.perf_counter for the probe: each fake runner advances it by its own cost."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def fake_build(clock, costs: dict, wrong=()):
    def build(choice):
        def run(x):
            clock.now += costs.get(choice.label, 1.0)
            out = x * 2
            if choice.label in wrong:
                out = out + 1
            if choice.precision == "bf16":
                out = out * (1 + 1e-3)
            return out
        return run
    return build


def test_probe_picks_the_fastest_correct_choice_and_caches_it(monkeypatch, cache):
    clock = FakeClock()
    monkeypatch.setattr(runtime.time, "perf_counter", clock)
    options = [runtime.Choice("torch"), runtime.Choice("onnxruntime"), runtime.Choice("openvino")]
    costs = {"torch fp32": 1.0, "onnxruntime fp32": 0.3, "openvino fp32": 0.6}
    x = torch.ones(4, 3)
    choice, record = runtime.probe(options, fake_build(clock, costs, wrong={"onnxruntime fp32"}), (x,), {"k": 1})
    assert choice == runtime.Choice("openvino")  # onnxruntime was faster but wrong
    assert "onnxruntime fp32" in record["refused"] and record["seconds"]["openvino fp32"] == pytest.approx(0.6)
    saved = json.loads((cache / "runtime" / "choices.json").read_text())
    assert [r["choice"] for r in saved.values()] == ["openvino fp32"]

    def must_not_build(choice):
        raise AssertionError("the cached choice is used without probing again")

    assert runtime.probe(options, must_not_build, (x,), {"k": 1})[0] == runtime.Choice("openvino")


def test_a_probe_waits_for_one_running_elsewhere_and_takes_its_choice(cache):
    """Two processes that need the same network at once (an eval's workers): the second waits for the
    first one's probe instead of timing its candidates against it, then reads the choice."""
    import threading
    import time

    options = [runtime.Choice("torch"), runtime.Choice("onnxruntime")]
    x, key = torch.ones(4, 3), {"k": "shared"}
    holding = threading.Event()

    def elsewhere():  # the machine-wide lock is an OS file lock: another open file conflicts like another process
        with runtime._machine_lock():
            holding.set()
            time.sleep(0.5)
            # (its probe is rigged: onnxruntime is its only candidate)
            runtime._probe(options[1:], fake_build(FakeClock(), {}), (x,), key, runtime._probe_digest(key), rounds=1)

    def must_not_build(choice):
        raise AssertionError("the other process's choice is used without probing again")

    other = threading.Thread(target=elsewhere)
    other.start()
    holding.wait(5)
    started = time.monotonic()
    choice, record = runtime.probe(options, must_not_build, (x,), key)
    other.join()
    assert time.monotonic() - started > 0.3  # it waited for the lock
    assert choice == runtime.Choice("onnxruntime") == runtime.Choice(*record["choice"].split())


def test_probe_with_every_choice_refused_says_so_in_one_sentence(monkeypatch, cache):
    clock = FakeClock()
    monkeypatch.setattr(runtime.time, "perf_counter", clock)
    options = [runtime.Choice("onnxruntime"), runtime.Choice("openvino")]
    wrong = fake_build(clock, {}, wrong={"onnxruntime fp32", "openvino fp32"})
    with pytest.raises(GenlabError, match=r"no backend can run this network as asked \(onnxruntime fp32: output "
                                          r"differs .*\); choose precision fp32 or backend torch"):
        runtime.probe(options, wrong, (torch.ones(4, 3),), {"k": "none"})


def test_bf16_is_chosen_only_when_it_clearly_pays(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(runtime.time, "perf_counter", clock)
    options = [runtime.Choice("torch"), runtime.Choice("openvino", "bf16")]
    x = torch.ones(4, 3)
    slight = fake_build(clock, {"torch fp32": 1.0, "openvino bf16": 0.95})
    assert runtime.probe(options, slight, (x,), {"k": "slight"})[0] == runtime.Choice("torch")
    clear = fake_build(clock, {"torch fp32": 1.0, "openvino bf16": 0.5})
    assert runtime.probe(options, clear, (x,), {"k": "clear"})[0] == runtime.Choice("openvino", "bf16")


def test_the_probe_refuses_a_backend_that_is_right_only_for_zero_inputs(monkeypatch):
    """A graph that drops a term proportional to its input matches PyTorch exactly on all-zero inputs
    (the probe's old batch); on the seeded noise the probe feeds now, it is refused."""
    model = tiny_ddpm()
    real = runtime.make_runner

    def make_runner(choice, module, example, input_names, name, device):
        right = real(runtime.Choice("torch", "fp32"), module, example, input_names, name, device)
        if choice.backend == "torch":
            return right
        return lambda x, t: right(x, t) + 1e-2 * x  # exact where x == 0

    fed = []
    real_probe = runtime.probe

    def probe(options, build, example, key, **kwargs):
        fed.append(example)
        return real_probe(options, build, example, key, **kwargs)

    monkeypatch.setattr(runtime, "make_runner", make_runner)
    monkeypatch.setattr(runtime, "probe", probe)
    monkeypatch.setattr(runtime, "candidates", lambda *args: [runtime.Choice("torch"), runtime.Choice("onnxruntime")])
    run = model.runner("auto", "fp32")
    assert run.choice == runtime.Choice("torch")
    assert run.record["refused"]["onnxruntime fp32"].startswith("output differs from torch fp32 by")
    # what it was fed: seeded noise of unit scale and timesteps across the schedule, the same every time
    x, t = fed[0]
    assert x.shape == (runtime.PROBE_BATCH, 1, 8, 8) and 0.8 < float(x.std()) < 1.2 and len(set(t.tolist())) > 10
    model.__dict__.pop("_genlab_runners")
    runtime._probe_file().unlink()  # probe again, from scratch
    model.runner("auto", "fp32")
    assert all(torch.equal(a, b) for a, b in zip(fed[0], fed[1]))
    # the all-zero batch could not tell the wrong graph from the right one
    zeros = (torch.zeros(8, 1, 8, 8), torch.full((8,), 25))

    def build(choice):
        return make_runner(choice, model._denoiser[1], zeros, ["sample", "timestep"], "zeros", model.device)

    _, record = real_probe([runtime.Choice("torch"), runtime.Choice("onnxruntime")], build, zeros, {"k": "zeros"})
    assert record["refused"] == {}


def test_the_probe_tolerates_float32_rounding_not_more_and_judges_bf16_by_its_own_rule(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(runtime.time, "perf_counter", clock)
    x = torch.randn(64, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    off = {"torch fp32": 0.0, "onnxruntime fp32": 1e-6, "openvino fp32": 1e-3, "openvino bf16": 0.02}

    def build(choice):  # each candidate off by its share of the output's RMS (2 here), elementwise noise
        return lambda x: x * 2 + off[choice.label] * 2 * noise

    options = [runtime.Choice("torch"), runtime.Choice("onnxruntime"), runtime.Choice("openvino"),
               runtime.Choice("openvino", "bf16")]
    _, record = runtime.probe(options, build, (x,), {"k": "tolerance"})
    # fp32: another kernel order's rounding passes, a 1e-3 error does not (largest error / RMS > 1e-4);
    # bf16: 2% in relative L2 distance is within its rule (0.1), which fp32 would have refused
    assert set(record["seconds"]) == {"torch fp32", "onnxruntime fp32", "openvino bf16"}
    assert set(record["refused"]) == {"openvino fp32"}


def test_the_ldm_probe_inputs_are_real_conditioning_of_the_exports_shapes():
    for conditioning in ("crossattn", "class", "none"):
        net = tiny_ldm(conditioning).network
        example = net.denoiser_example(6)
        inputs = net.denoiser_probe_inputs(6, torch.Generator().manual_seed(0))
        assert [(a.shape, a.dtype) for a in inputs] == [(a.shape, a.dtype) for a in example]
        assert float(inputs[0].std()) > 0.5 and len(set(inputs[1].tolist())) > 1
        if conditioning == "crossattn":  # encoded prompts, half of them guidance's unconditional ""
            assert float(inputs[2].abs().max()) > 0 and not torch.equal(inputs[3][0], inputs[3][1])
        if conditioning == "class":
            assert len(set(inputs[-1].tolist())) > 1
        with torch.no_grad():
            assert torch.isfinite(net.denoiser()(*inputs)).all()


@pytest.mark.skipif(not all(HAVE.values()), reason="needs onnxruntime and openvino")
def test_auto_probes_once_per_machine_and_weights(cache):
    model = tiny_ddpm()
    result = model.sample(2, seed=0, options={"steps": 2, "backend": "auto", "precision": "fp32"})
    record = model.runner("auto", "fp32").record
    # with several threads the graph backends are also tried with one slice of the batch per thread
    streams = {"onnxruntime fp32 streams", "openvino fp32 streams"} if torch.get_num_threads() > 1 else set()
    assert set(record["seconds"]) | set(record["refused"]) == {
        "torch fp32", "torch fp32 channels_last", "onnxruntime fp32", "openvino fp32", *streams}
    assert record["choice"] == f"{result.info['backend']} fp32" + (f" {result.info['mode']}" if "mode" in result.info else "")
    fresh = tiny_ddpm()  # same weights in a new instance: the record on disk is reused
    assert fresh.runner("auto", "fp32").record["measured_at"] == record["measured_at"]


def test_attention_maps_run_on_torch_whatever_the_backend():
    model = tiny_ldm()
    out = model.attention_maps(seed=0, options={"prompt": "a 7", "steps": 2, "guidance": 1.0,
                                                "backend": "onnxruntime" if HAVE["onnxruntime"] else "torch"})
    assert out["maps"].shape[0] == len(out["tokens"]) and torch.isfinite(out["maps"]).all()


def test_outputs_come_back_on_the_cpu():
    model = tiny_ldm()
    assert model.sample(1, options={"steps": 2, "backend": "torch"}).images.device.type == "cpu"
    d = tiny_ddpm()
    x = torch.rand(2, 1, 8, 8)
    assert d.encode(x, steps=3, refine=0).device.type == "cpu"
    assert d.decode(torch.randn(2, 1, 8, 8), steps=3).device.type == "cpu"


@pytest.mark.skipif(not HAVE["openvino"], reason="openvino is not installed")
def test_openvino_is_loaded_without_its_usage_telemetry(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from genlab.runtime import OpenVinoRunner; OpenVinoRunner.core(); "
            "print(sys.modules.get('openvino_telemetry') is None, 'openvino' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "HOME": str(tmp_path)})
    assert out.stdout.split() == ["True", "True"], out.stderr
    assert not (tmp_path / "intel").exists()  # no telemetry id written to the home folder
