"""The suite's device checks: an eval on a GPU, where every model and the eval's classifier run there.
Skipped without CUDA (CI has none); benchmarks/device_run.sh runs them on a lent GPU machine."""

import json

import pytest
import torch

from genlab.evals.runner import EvalConfig, run_eval

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_an_eval_on_the_gpu_measures_every_column(tmp_path, tiny_vae_dir, tiny_ldm_dir, fake_entry_points, monkeypatch):
    """Interpolation smoothness and prompt accuracy feed the models' CPU images to the eval's classifier,
    which the FID pass moved to the GPU: each input must follow it there."""
    monkeypatch.setenv("GENLAB_DEVICE", "cuda")
    fake_entry_points({"vae": "genlab_vae", "ldm": "genlab_ldm"})
    config = EvalConfig(
        dataset="digits", num_samples=20, likelihood_images=6, batch_size=20, prompt_samples=2,
        interpolation_pairs=2, interpolation_steps=4,
        models=[{"id": "vae", "weights": str(tiny_vae_dir)},
                {"id": "ldm", "weights": str(tiny_ldm_dir), "options": {"steps": 2, "guidance": 1.0}}])
    run_eval(config, out_dir=tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["failed_models"] == [] and metrics["machine"]["cuda"]
    vae, ldm = metrics["models"]
    assert vae["interpolation"]["pairs"] == 2 and vae["fid"] > 0
    assert 0 <= ldm["prompts"]["prompt_accuracy"] <= 1 and ldm["fid"] > 0


def test_every_family_trains_and_samples_on_the_gpu(tmp_path, fake_entry_points, monkeypatch):
    """`genlab train` on a GPU machine: each model's network, its calibration (the LDM's and the latent
    flow's latent scale) and its loss run on CUDA; the trained weights sample there, the images back on
    the CPU, the same seed giving the same images."""
    from conftest import TINY_DDPM_NETWORK, TINY_FIRST_STAGE

    from genlab import get_model
    from genlab.training import TrainConfig, train

    monkeypatch.setenv("GENLAB_DEVICE", "cuda")
    fake_entry_points({"vae": "genlab_vae", "ddpm": "genlab_ddpm", "ldm": "genlab_ldm", "flow": "genlab_flow"})

    def fit(model, network, steps=4):
        config = TrainConfig(model=model, dataset="digits", steps=steps, batch_size=16, seed=0, checkpoint_every=steps,
                             network=network)
        folder = train(config, tmp_path / model, progress=False)
        assert (folder / "metadata.json").is_file()
        assert json.loads((folder / "metadata.json").read_text())["device"].startswith("cuda")
        return folder

    first_stage = fit("ldm-autoencoder", TINY_FIRST_STAGE)
    trained = {
        "vae": fit("vae", {"image_size": 8, "latent_dim": 4, "channels": [8, 16], "hidden": 32}),
        "ddpm": fit("ddpm", TINY_DDPM_NETWORK),
        "ldm": fit("ldm", {"first_stage_weights": str(first_stage), "calibration_dataset": "digits",
                           "block_out_channels": [16, 32], "text_hidden": 32, "num_train_timesteps": 50}),
        "flow": fit("flow", {"first_stage_model": "ldm-autoencoder", "first_stage_weights": str(first_stage),
                             "calibration_dataset": "digits", "block_out_channels": [8, 16],
                             "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
                             "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 4}),
    }
    # the LDM's few-step student: the LDM's pairs made on the GPU, the base flow's weights to start from
    trained["flow-distill"] = fit("flow-distill", {"teacher_weights": str(trained["ldm"]), "init_weights": str(trained["flow"]),
                                                   "teacher_options": {"sampler": "ddim", "steps": 2}, "pairs": 20,
                                                   "pair_batch": 10})
    for model_id, folder in trained.items():
        model = get_model(model_id, weights=str(folder))
        assert model.device.type == "cuda"
        options = {"steps": 3} if model_id != "vae" else {}
        a, b = (model.sample(4, seed=1, options=options) for _ in range(2))
        assert a.images.device.type == "cpu" and a.images.shape == (4, 1, 8, 8) and torch.isfinite(a.images).all()
        assert torch.equal(a.images, b.images), model_id
