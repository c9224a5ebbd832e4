import json

import pytest
import torch
from safetensors.torch import load_file

from genlab import GenlabError
from genlab.training import TrainConfig, latest_checkpoint, load_config, train

TINY = {"image_size": 8, "latent_dim": 2, "channels": [4, 8], "hidden": 16}


def config(**kw):
    base = dict(model="vae", dataset="digits", steps=6, batch_size=16, seed=3, checkpoint_every=2,
                log_every=1, network=TINY)
    return TrainConfig(**{**base, **kw})


def weights(folder):
    return load_file(str(folder / "diffusion_pytorch_model.safetensors"))


def test_resume_after_an_interrupt_matches_an_uninterrupted_run(tmp_path):
    straight = train(config(), tmp_path / "straight", progress=False)

    interrupted = tmp_path / "interrupted"
    first = train(config(), interrupted, progress=False, max_steps=3)  # stops mid-way, as a crash would
    assert json.loads((first / "metadata.json").read_text())["complete"] is False
    assert latest_checkpoint(interrupted).name == "step-00000003"
    resumed = train(config(), interrupted, progress=False)

    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
    meta = json.loads((resumed / "metadata.json").read_text())
    assert meta["steps"] == 6 and meta["complete"] is True
    # the loss log lines up step for step too
    log = [json.loads(line)["loss"] for line in (interrupted / "log.jsonl").read_text().splitlines()]
    reference = [json.loads(line)["loss"] for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert log == pytest.approx(reference)


def test_a_run_whose_network_would_now_be_built_differently_does_not_resume(tmp_path):
    run = tmp_path / "run"
    train(config(), run, progress=False, max_steps=3)
    # as if what the network was measured from when the run began (a latent scale, a teacher's
    # weights' digest) had changed since: the checkpoint's network config no longer matches
    saved = latest_checkpoint(run) / "network" / "config.json"
    settings = json.loads(saved.read_text())
    settings["hidden"] = 99
    saved.write_text(json.dumps(settings))
    with pytest.raises(GenlabError, match=r"cannot resume: its network would now be built with another "
                                          r"hidden \(was 99, now 16\)"):
        train(config(), run, progress=False)
    settings["hidden"] = 16  # the same settings resume
    saved.write_text(json.dumps(settings))
    assert json.loads((train(config(), run, progress=False) / "metadata.json").read_text())["complete"] is True


def test_a_resume_compares_what_a_network_was_made_from_not_how_long_it_took():
    from genlab.training import _first_difference

    was = {"scale_factor": 0.81234, "reflow": {"teacher_digest": "ab", "cpu_seconds": 289.1}, "_diffusers_version": "1"}
    assert _first_difference(was, {**was, "reflow": {"teacher_digest": "ab", "cpu_seconds": 301.7}}) is None
    assert _first_difference(was, {**was, "scale_factor": 0.812345}) is None  # rounding, not a new scale
    assert _first_difference(was, {**was, "reflow": {"teacher_digest": "cd", "cpu_seconds": 289.1}}) == \
        'reflow.teacher_digest (was "ab", now "cd")'
    assert _first_difference(was, {**was, "scale_factor": 0.9}) == "scale_factor (was 0.81234, now 0.9)"


def test_final_weights_are_the_ema_and_load_as_a_model(tmp_path):
    final = train(config(ema_decay=0.5), tmp_path / "run", progress=False)
    raw = weights(latest_checkpoint(tmp_path / "run") / "network")
    ema = weights(final)
    assert not torch.allclose(raw["decoder.0.weight"], ema["decoder.0.weight"])
    meta = json.loads((final / "metadata.json").read_text())
    assert {"steps", "wall_seconds", "cpu_seconds", "dataset", "config", "code_version"} <= meta.keys()
    assert meta["dataset"] == "digits" and meta["config"]["network"] == TINY

    from genlab import get_model

    model = get_model("vae", weights=final)
    assert model.sample(2, seed=0).images.shape == (2, 1, 8, 8)
    assert model.metadata()["steps"] == 6


def test_only_the_last_checkpoints_are_kept(tmp_path):
    train(config(steps=8), tmp_path / "run", progress=False)
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["step-00000006", "step-00000008"]


def test_a_run_folder_refuses_a_different_config(tmp_path):
    train(config(steps=2), tmp_path / "run", progress=False)
    with pytest.raises(GenlabError, match="holds a run with a different config"):
        train(config(steps=2, learning_rate=0.5), tmp_path / "run", progress=False)


def test_time_budget_stops_and_saves(tmp_path):
    final = train(config(steps=100_000, max_minutes=0.001), tmp_path / "run", progress=False)
    meta = json.loads((final / "metadata.json").read_text())
    assert meta["stop_reason"].startswith("time budget") and 0 < meta["steps"] < 100_000
    assert latest_checkpoint(tmp_path / "run").name == f"step-{meta['steps']:08d}"


def test_config_errors_are_one_sentence(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('model = "vae"\nstepz = 3\n')
    with pytest.raises(GenlabError, match="unknown setting 'stepz'; valid settings: model, dataset"):
        load_config(path)
    path.write_text('model = "vae"\nsteps = 0\n')
    with pytest.raises(GenlabError, match=r"invalid steps=0: Input should be greater than or equal to 1"):
        load_config(path)
    with pytest.raises(GenlabError, match="no training config at"):
        load_config(tmp_path / "missing.toml")


def test_snapshots_keep_the_ema_weights_along_training_compute(tmp_path):
    final = train(config(steps=6, snapshot_every_cpu_minutes=1e-6), tmp_path / "run", progress=False)
    snapshots = sorted((tmp_path / "run" / "snapshots").iterdir())
    assert len(snapshots) == 6  # a tiny interval: one per step, none pruned like checkpoints
    marks = [json.loads((s / "snapshot.json").read_text()) for s in snapshots]
    assert [m["step"] for m in marks] == [1, 2, 3, 4, 5, 6]
    assert all(a["cpu_seconds"] <= b["cpu_seconds"] for a, b in zip(marks, marks[1:]))
    last = weights(snapshots[-1])  # the step-6 snapshot is the final EMA network
    for key, value in weights(final).items():
        torch.testing.assert_close(last[key], value, msg=key)
