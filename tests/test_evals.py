"""The eval runner end to end on the 8x8 digits, with a tiny N."""

import json

import pytest

from genlab.evals.runner import EvalConfig, load_suite, run_eval
from genlab import GenlabError


@pytest.fixture
def with_example_plugin(fake_entry_points):
    fake_entry_points({"vae": "genlab_vae", "example": "genlab_example"})


def test_eval_end_to_end_on_digits(tmp_path, tiny_vae_dir, with_example_plugin):
    config = EvalConfig(
        dataset="digits", num_samples=60, likelihood_images=20, batch_size=25,
        models=[{"id": "vae", "weights": str(tiny_vae_dir), "likelihood": {"k": 4}},
                {"id": "uniform-noise", "options": {"brightness": 1.0}}],
    )
    report = run_eval(config, out_dir=tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    vae, noise = metrics["models"]
    assert metrics["num_samples"] == 60 and metrics["feature_extractor"] == "mnist-classifier"
    for row in (vae, noise):
        assert row["fid"] > 0 and row["kid"] is not None and row["images_per_second"] > 0
        assert (tmp_path / "run" / row["sample_grid"]).is_file()
    # capabilities decide the columns: the VAE has a likelihood and reconstructions, noise has neither
    assert 8.0 < vae["likelihood"]["bpd"] and vae["reconstruction"]["mse"] >= 0
    assert vae["reconstruction"]["psnr"] > 0 and 0 < vae["reconstruction"]["ssim"] <= 1
    assert "likelihood" not in noise and "reconstruction" not in noise
    # the per-pixel histogram baseline, on the same held-out images, is a line of the likelihood table
    baseline = metrics["likelihood_baseline"]
    assert baseline["images"] == vae["likelihood"]["images"] == 20 and 0 < baseline["bpd"] < 8
    assert "*baseline: independent per-pixel histogram*" in report.read_text()
    # uniform noise is the worst thing a model can do; the real data floor is the best
    floor = metrics["real_data_floor"]
    assert floor["eq_fid"] < vae["eq_fid"] < noise["eq_fid"] and floor["fid_inf"] < noise["fid_inf"]
    # the floor and every row are compared at the same N: the held-out split's size (180 digits) caps it
    assert floor["num_images"] == vae["equal_n"] == noise["equal_n"] == 60
    for row in (vae, noise):
        assert 0 <= row["eq_coverage"] <= 1 and row["eq_density"] >= 0 and row["density"] >= 0
    assert vae["parameters"] > 0 and vae["training"]["steps"] == 40
    assert metrics["best_by_family"]["vae"]["model"] == "vae"
    assert metrics["best_by_family"]["baseline"]["fid"] == noise["fid"]
    text = report.read_text()
    assert "| vae | vae |" in text and "| uniform-noise | baseline |" in text
    html = (tmp_path / "run" / "report.html").read_text()
    assert "<table>" in html and 'src="images/' not in html  # self-contained: every image inlined
    # two sample grids, the quality/speed chart, the VAE's interpolation strip, KL chart and closest pairs
    assert html.count("data:image/png;base64,") == 6
    # the report's other sections, measured on the VAE
    assert vae["memorization"]["heldout_median"] > 0 and 0 <= vae["memorization"]["copies"] <= 1
    assert vae["interpolation"]["pairs"] == 8 and vae["interpolation"]["path_over_direct"] >= 1
    assert vae["latents"]["latent_dim"] == 4 and len(vae["latents"]["kl_per_dim"]) == 4
    assert noise["memorization"]["unavailable"].startswith("samples are (1, 28, 28)")
    assert [c["aspect"] for c in metrics["claims"]][:3] == ["Latent dimension", "Generation", "Sample quality"]
    assert "## The seed texts' comparison, measured" in text and "## Memorization" in text
    assert "mnist-classifier" in text and "60 samples per model" in text


def test_suite_file_lists_models_with_options(tmp_path):
    suite = tmp_path / "suite.toml"
    suite.write_text('dataset = "digits"\nnum_samples = 10\nmodels = ["vae", {id = "vae", label = "hot", options = {temperature = 2.0}}]\n')
    config = load_suite(suite)
    assert [m.name for m in config.models] == ["vae", "hot"] and config.name == "suite"
    suite.write_text('dataset = "digits"\nmodels = [{id = "vae", label = "a/b"}, {id = "vae", label = "a_b"}]\n')
    with pytest.raises(GenlabError, match="would share image files"):
        run_eval(load_suite(suite), out_dir=tmp_path / "run")
    suite.write_text("num_samples = 1\n")
    with pytest.raises(GenlabError, match="invalid num_samples"):
        load_suite(suite)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    import torch

    from genlab.evals.runner import fidelity_metrics
    from genlab.datasets import load_dataset

    images = load_dataset("digits", "all").images[:200]
    same = fidelity_metrics(images, images, "mnist-classifier")
    assert same["fid"] == pytest.approx(0.0, abs=1e-3)
    darker = (images.float() * 0.5).to(torch.uint8)
    assert fidelity_metrics(darker, images, "mnist-classifier")["fid"] > 1.0


def test_diffusion_rows_report_quality_against_nfe(tmp_path, tiny_ddpm_dir, fake_entry_points, monkeypatch):
    fake_entry_points({"ddpm": "genlab_ddpm"})
    # what this machine's probe might choose for speed: published numbers take it only in float32
    monkeypatch.setenv("GENLAB_BACKEND", "onnxruntime")
    config = EvalConfig(
        dataset="digits", num_samples=40, likelihood_images=10, batch_size=40,
        models=[
            {"id": "ddpm", "label": "ddim-5", "weights": str(tiny_ddpm_dir),
             "options": {"sampler": "ddim", "steps": 5}, "likelihood": {"exact_terms": 5, "strata": 5}},
            {"id": "ddpm", "label": "dpm-3", "weights": str(tiny_ddpm_dir),
             "options": {"sampler": "dpm-solver++", "steps": 3}, "likelihood": {"exact_terms": 5, "strata": 5}},
        ],
    )
    run_eval(config, out_dir=tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    rows = {r["model"]: r for r in metrics["models"]}
    assert rows["ddim-5"]["nfe"] == 5 and rows["dpm-3"]["nfe"] == 3
    best = min(rows.values(), key=lambda r: r["fid"])
    assert metrics["best_by_family"]["diffusion"]["model"] == best["model"]
    assert (tmp_path / "run" / "images" / "fid_vs_nfe.png").is_file()
    assert rows["ddim-5"]["options"]["sampler"] == "ddim"
    assert {k: rows["dpm-3"]["options"][k] for k in ("backend", "precision")} == {"backend": "auto", "precision": "fp32"}
    # what drew the samples is in the row and the report
    assert rows["dpm-3"]["runtime"] == ["onnxruntime fp32"]
    assert metrics["runtimes"] == {"onnxruntime fp32": ["ddim-5", "dpm-3"]}
    assert "**onnxruntime fp32** (ddim-5, dpm-3)" in (tmp_path / "run" / "report.md").read_text()
    # and the same suite drawn by plain PyTorch gives the same numbers, to float rounding
    monkeypatch.setenv("GENLAB_BACKEND", "torch")
    run_eval(config, out_dir=tmp_path / "torch")
    plain = {r["model"]: r for r in json.loads((tmp_path / "torch" / "metrics.json").read_text())["models"]}
    assert plain["dpm-3"]["runtime"] == ["torch fp32"]
    for label in rows:
        assert rows[label]["fid"] == pytest.approx(plain[label]["fid"], rel=1e-3)
    assert "t=1..5 exact, t=6..100 from 5 strata" in rows["ddim-5"]["likelihood"]["method"]
    assert rows["ddim-5"]["likelihood"]["bpd"] > 0 and rows["ddim-5"]["fid"] > 0
    # the bound's network runs one pinned way whatever drew the samples: PyTorch fp32, channels-last
    ran = rows["ddim-5"]["likelihood"]["runtime"]
    assert ran == {"device": "cpu", "backend": "torch", "precision": "fp32", "mode": "channels_last"}
    assert ran["precision"] == rows["ddim-5"]["options"]["precision"]  # float32, like the samples


def test_published_numbers_are_ieee_float32_whatever_the_process_allows(tmp_path, tiny_vae_dir, fake_entry_points,
                                                                       monkeypatch):
    """On a GPU PyTorch may run float32 convolutions and matmuls in TF32 (cuDNN does by default): the
    eval switches that off for every network it runs, a plugin's own (the VAE's bound) included, and
    gives the process its settings back."""
    import functools

    import genlab_vae
    import torch

    fake_entry_points({"vae": "genlab_vae"})
    seen = []
    real = genlab_vae.VAE.bits_per_dim

    @functools.wraps(real)
    def bits_per_dim(self, *args, **kwargs):
        seen.append((torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(genlab_vae.VAE, "bits_per_dim", bits_per_dim)
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high")  # a process that allows TF32
    torch.backends.cudnn.allow_tf32 = True
    try:
        config = EvalConfig(dataset="digits", num_samples=20, batch_size=20, likelihood_images=10,
                            interpolation_pairs=0, models=[{"id": "vae", "weights": str(tiny_vae_dir),
                                                            "likelihood": {"k": 2}}])
        run_eval(config, out_dir=tmp_path / "run")
        assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == ("high", True)
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]
    assert seen == [("highest", False)]
    (row,) = json.loads((tmp_path / "run" / "metrics.json").read_text())["models"]
    assert row["likelihood"]["runtime"] == {"device": "cpu", "backend": "torch", "precision": "fp32"}


def test_rows_and_compute_curves_are_drawn_in_float32(tmp_path, fake_entry_points, monkeypatch):
    """Rows take the probed backend in float32; each curve point (a new network per snapshot) plain
    PyTorch float32, with no probe or exported graph per snapshot."""
    from conftest import TINY_DDPM_NETWORK
    from genlab_ddpm import DDPM

    from genlab.training import TrainConfig, train

    fake_entry_points({"ddpm": "genlab_ddpm"})
    train(TrainConfig(model="ddpm", dataset="digits", steps=2, batch_size=16, seed=0, checkpoint_every=2,
                      snapshot_every_cpu_minutes=1e-6, network=TINY_DDPM_NETWORK), tmp_path / "ddpm-run",
          progress=False)
    monkeypatch.setenv("GENLAB_BACKEND", "onnxruntime")  # what this machine's probe might choose for speed
    drawn = []
    sample = DDPM.sample

    def spy(self, count, *, seed=0, options=None):
        drawn.append((options.backend, options.precision))
        return sample(self, count, seed=seed, options=options)

    monkeypatch.setattr(DDPM, "sample", spy)
    config = EvalConfig(dataset="digits", num_samples=20, batch_size=20, likelihood_images=10, interpolation_pairs=0,
                        models=[{"id": "ddpm", "weights": str(tmp_path / "ddpm-run" / "final"),
                                 "options": {"sampler": "ddim", "steps": 2}, "likelihood": {"exact_terms": 2, "strata": 2}}],
                        curves=[{"id": "ddpm", "run": str(tmp_path / "ddpm-run"),
                                            "options": {"sampler": "ddim", "steps": 2}}])
    run_eval(config, out_dir=tmp_path / "run")
    curve = json.loads((tmp_path / "run" / "metrics.json").read_text())["curves"][0]
    # the row's samples (its shard and the latency's five) and the curve's two points
    assert len(curve["points"]) == 2
    assert sorted(drawn) == [("auto", "fp32")] * 6 + [("torch", "fp32")] * 2


def test_latent_diffusion_rows_report_prompt_accuracy_and_first_stage(tmp_path, tiny_ldm_dir, tiny_first_stage_dir,
                                                                      fake_entry_points):
    fake_entry_points({"ldm": "genlab_ldm"})
    config = EvalConfig(
        dataset="digits", num_samples=20, likelihood_images=10, batch_size=20, prompt_samples=2,
        models=[{"id": "ldm", "weights": str(tiny_ldm_dir), "options": {"steps": 2, "guidance": 2.0}},
                {"id": "ldm-autoencoder", "weights": str(tiny_first_stage_dir)}],
    )
    report = run_eval(config, out_dir=tmp_path / "run")
    ldm, autoencoder = json.loads((tmp_path / "run" / "metrics.json").read_text())["models"]
    prompts = ldm["prompts"]
    assert 0 <= prompts["prompt_accuracy"] <= 1 and prompts["samples"] == 10 * 2 + 40 * 2
    assert set(prompts["attribute_accuracy"]) == {"thickness", "slant"}
    attention = prompts["attention"]  # the digit token's map against the strokes, one map per prompt
    assert attention["maps"] == 20 and 0 <= attention["digit_token_auc"] <= 1
    assert ldm["nfe"] == 4 and ldm["fid"] > 0
    # the first stage cannot sample: it is measured on what it can do
    assert "fid" not in autoencoder and autoencoder["reconstruction"]["ssim"] <= 1
    text = report.read_text()
    assert "## Prompts" in text and "| ldm-autoencoder |" in text


def test_standard_inception_features_load_offline_from_the_wheel():
    import torch

    from genlab.datasets import load_dataset
    from genlab.registry import get_feature_extractor

    extractor = get_feature_extractor("inception-v3-tf").load()("inception-v3-tf", ["2048"])
    images = load_dataset("mnist-5k", "heldout").images[:8]
    with torch.no_grad():
        (features,) = extractor(images)
    assert features.shape == (8, 2048) and features.min() >= 0  # pool features after ReLU


def test_an_interrupted_eval_resumes_without_redoing_shards_and_matches_an_uninterrupted_one(
        tmp_path, tiny_vae_dir, fake_entry_points, monkeypatch):
    import genlab_vae

    fake_entry_points({"vae": "genlab_vae"})
    config = EvalConfig(dataset="digits", num_samples=60, batch_size=20, repeats=2, likelihood_images=20,
                        interpolation_pairs=2, models=[{"id": "vae", "weights": str(tiny_vae_dir), "likelihood": {"k": 4}}])
    batches = []  # (seed, count) of every batch the VAE is asked for, latency calls (count 1) aside
    real_sample = genlab_vae.VAE.sample

    def counting_sample(self, count, *, seed=0, options=None):
        if count > 1:
            batches.append(seed)
            if interrupt_after is not None and len(batches) > interrupt_after:
                raise KeyboardInterrupt  # as Ctrl-C would, halfway through the second seed
        return real_sample(self, count, seed=seed, options=options)

    monkeypatch.setattr(genlab_vae.VAE, "sample", counting_sample)
    interrupt_after = None
    run_eval(config, out_dir=tmp_path / "whole")
    assert len(batches) == 6  # 3 shards x 2 seeds
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())

    batches.clear()
    interrupt_after = 4
    with pytest.raises(KeyboardInterrupt):
        run_eval(config, out_dir=tmp_path / "resumed")
    assert len(list((tmp_path / "resumed" / "samples").rglob("shard-*.safetensors"))) == 4
    batches.clear()
    interrupt_after = None
    run_eval(config, out_dir=tmp_path / "resumed")
    assert len(batches) == 2  # only the two missing shards were sampled again
    resumed = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    for key in ("fid", "kid", "precision", "recall", "inception_score", "eq_fid", "fid_inf", "coverage"):
        assert resumed["models"][0][key] == pytest.approx(whole["models"][0][key], rel=1e-9), key
        assert resumed["models"][0]["spread"][key] == pytest.approx(whole["models"][0]["spread"][key], rel=1e-9)
    assert resumed["real_data_floor"]["eq_fid"] == whole["real_data_floor"]["eq_fid"]
    assert len(whole["models"][0]["runs"]) == 2 and whole["seeds"] == [0, 1]
    assert whole["models"][0]["spread"]["fid"] > 0  # two seeds, two different FIDs

    batches.clear()
    run_eval(config, out_dir=tmp_path / "resumed")  # a finished run is read back, not redone
    assert batches == []
    # a compute curve added to the suite measures none of the rows again (sampled or not)
    measured = []
    real_bits = genlab_vae.VAE.bits_per_dim
    monkeypatch.setattr(genlab_vae.VAE, "bits_per_dim", lambda *a, **k: measured.append(1) or real_bits(*a, **k))
    grown = EvalConfig(**config.model_dump(exclude={"curves"}), curves=[{"id": "vae", "run": str(tmp_path / "nowhere")}])
    run_eval(grown, out_dir=tmp_path / "resumed")
    assert batches == [] and measured == []
    assert json.loads((tmp_path / "resumed" / "metrics.json").read_text())["models"][0]["fid"] == whole["models"][0]["fid"]


def test_training_snapshots_become_a_quality_against_compute_curve(tmp_path, fake_entry_points):
    from genlab.training import TrainConfig, train

    fake_entry_points({"vae": "genlab_vae"})
    network = {"image_size": 8, "latent_dim": 2, "channels": [4, 8], "hidden": 16}
    train(TrainConfig(model="vae", dataset="digits", steps=4, batch_size=16, seed=0, checkpoint_every=4,
                      snapshot_every_cpu_minutes=1e-6, network=network), tmp_path / "vae-run", progress=False)
    config = EvalConfig(dataset="digits", num_samples=30, batch_size=30, likelihood_images=10, interpolation_pairs=0,
                        models=[{"id": "vae", "weights": str(tmp_path / "vae-run" / "final")}],
                        curves=[{"id": "vae", "run": str(tmp_path / "vae-run"), "extra_cpu_seconds": 100},
                                {"id": "vae", "label": "missing", "run": str(tmp_path / "nowhere")}])
    report = run_eval(config, out_dir=tmp_path / "run")
    curve, missing = json.loads((tmp_path / "run" / "metrics.json").read_text())["curves"]
    assert [p["step"] for p in curve["points"]] == [1, 2, 3, 4] and curve["family"] == "vae"
    assert all(p["cpu_seconds"] >= 100 and p["fid"] > 0 for p in curve["points"])  # offset by extra_cpu_seconds
    assert "no snapshots in" in missing["unavailable"]
    assert (tmp_path / "run" / "images" / "fid_vs_compute.png").is_file()
    assert "### Quality against training compute" in report.read_text()
    # each point was a job of its own (shared by an eval's processes like the sample shards)
    assert "curve" in json.loads((tmp_path / "run" / "metrics.json").read_text())["machine"]["job_seconds"]

    # a damaged snapshot costs its curve (which says which one), not the report
    (damaged,) = [p for p in (tmp_path / "vae-run" / "snapshots").glob("step-*") if p.name.endswith("2")]
    for weights in damaged.glob("*.safetensors"):
        weights.write_bytes(b"not safetensors")
    run_eval(config, out_dir=tmp_path / "damaged")
    after = json.loads((tmp_path / "damaged" / "metrics.json").read_text())
    assert "the snapshot at step 2 could not be measured" in after["curves"][0]["unavailable"]
    assert "points" not in after["curves"][0] and after["models"][0]["fid"] > 0
