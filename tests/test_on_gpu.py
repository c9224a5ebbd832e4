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
