import importlib.metadata
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# backend="auto" means plain PyTorch in the suite: no probe, export or compile per tiny model;
# tests/test_runtime.py runs the other backends and the probe explicitly
os.environ.setdefault("GENLAB_BACKEND", "torch")
# evals run in the test's own process (whose registry a test may fake); tests of several workers say so
os.environ.setdefault("GENLAB_EVAL_WORKERS", "1")
# the suite checks CPU arithmetic (exact comparisons with hand-made CPU computations), wherever it runs;
# tests/test_on_gpu.py asks for CUDA itself, and is skipped where there is none
os.environ.setdefault("GENLAB_DEVICE", "cpu")

from genlab import plugins, registry  # noqa: E402

HERE = Path(__file__).parent
EXAMPLE_PLUGIN = HERE / "plugin_example"


@pytest.fixture
def clean_registry():
    """A registry rebuilt from scratch for the test, and again afterwards."""
    plugins.reset()
    registry.refresh()
    yield
    plugins.reset()
    registry.refresh()


@pytest.fixture
def fake_entry_points(monkeypatch, clean_registry):
    """Replace installed entry points with the ones a test names: ``fake_entry_points({"name": "module"})``."""

    def install(mapping: dict[str, str]):
        if str(EXAMPLE_PLUGIN) not in sys.path:
            monkeypatch.syspath_prepend(str(EXAMPLE_PLUGIN))
        eps = importlib.metadata.EntryPoints(
            importlib.metadata.EntryPoint(name=n, value=v, group="genlab") for n, v in mapping.items()
        )
        real = importlib.metadata.entry_points

        def entry_points(**kwargs):
            return eps if kwargs.get("group") == "genlab" else real(**kwargs)

        monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
        plugins.reset()
        registry.refresh()

    return install


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory):
    """A seeded VAE trained for a few steps on the 8x8 digits, saved like a real run."""
    from genlab.training import TrainConfig, train

    config = TrainConfig(
        model="vae", dataset="digits", steps=40, batch_size=64, learning_rate=3e-3, seed=0,
        checkpoint_every=20, network={"image_size": 8, "latent_dim": 4, "channels": [8, 16], "hidden": 32},
    )
    return train(config, tmp_path_factory.mktemp("tiny-vae"), progress=False)


TINY_DDPM_NETWORK = {
    "sample_size": 8, "block_out_channels": [8, 16], "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 4, "attention_head_dim": 8,
    "num_train_timesteps": 100,
}


@pytest.fixture(scope="session")
def tiny_ddpm_dir(tmp_path_factory):
    """A seeded 8x8 DDPM (T = 100) trained for a few steps on the digits, saved like a real run."""
    from genlab.training import TrainConfig, train

    config = TrainConfig(model="ddpm", dataset="digits", steps=20, batch_size=32, learning_rate=2e-3, seed=0,
                         checkpoint_every=20, network=TINY_DDPM_NETWORK)
    return train(config, tmp_path_factory.mktemp("tiny-ddpm"), progress=False)


TINY_FIRST_STAGE = {"image_size": 8, "padded_size": 8, "block_out_channels": [8, 16], "norm_num_groups": 4}


@pytest.fixture(scope="session")
def tiny_first_stage_dir(tmp_path_factory):
    """A seeded 8x8 -> 4x4x4 first-stage autoencoder trained for a few steps on the digits."""
    from genlab.training import TrainConfig, train

    config = TrainConfig(model="ldm-autoencoder", dataset="digits", steps=10, batch_size=32, seed=0,
                         checkpoint_every=10, network=TINY_FIRST_STAGE)
    return train(config, tmp_path_factory.mktemp("tiny-first-stage"), progress=False)


@pytest.fixture(scope="session")
def tiny_ldm_dir(tmp_path_factory, tiny_first_stage_dir):
    """A seeded LDM on the tiny first stage (4x4x4 latents), trained for a few steps on the digits."""
    from genlab.training import TrainConfig, train

    network = {"first_stage_weights": str(tiny_first_stage_dir), "calibration_dataset": "digits",
               "block_out_channels": [16, 32], "text_hidden": 32, "num_train_timesteps": 50,
               "start_token": True, "causal_text": True}  # as the bundled LDM
    config = TrainConfig(model="ldm", dataset="digits", steps=5, batch_size=16, seed=0, checkpoint_every=5,
                         network=network)
    return train(config, tmp_path_factory.mktemp("tiny-ldm"), progress=False)
