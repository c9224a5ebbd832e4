"""Past one process: `genlab train` and `genlab eval` under torchrun, two CPU processes over gloo,
against the same work done by one process.

Each launch is a real `python -m torch.distributed.run --standalone` (a free rendezvous port of its
own) of the real CLI, with a timeout that kills the whole launch if it hangs.
"""

import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from genlab import GenlabError
from genlab.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
TINY_VAE = {"image_size": 8, "latent_dim": 2, "channels": [4, 8], "hidden": 16}
LAUNCH_TIMEOUT = 600  # seconds; a launch that hangs (a deadlock between processes) fails the test


def launch(args: list[str], *, processes: int = 2, cwd: Path, timeout: float = LAUNCH_TIMEOUT):
    """`genlab ARGS` under torchrun with ``processes`` CPU processes; returns the finished process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "GENLAB_DEVICE": "cpu"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_CPU"):
        env.pop(name, None)  # whatever launched pytest, and the fix this test must not need
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "genlab.cli", *args]
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"the launch did not finish in {timeout} s:\n{output[-3000:]}")
    proc.output = output
    return proc


def write_config(path: Path, **settings) -> Path:
    lines = [f"{k} = {json.dumps(v)}" for k, v in settings.items() if k != "network"]
    lines += ["[network]", *[f"{k} = {json.dumps(v)}" for k, v in settings["network"].items()]]
    path.write_text("\n".join(lines) + "\n")
    return path


TRAIN = dict(model="vae", dataset="digits", steps=6, batch_size=16, seed=3, checkpoint_every=2, log_every=1,
             network=TINY_VAE)


def losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(row["step"], row["loss"]) for row in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines())]


def test_two_processes_train_the_run_of_one_process_stop_together_and_resume(tmp_path):
    # one process, the global batch cut as two processes cut it
    one = train(TrainConfig(**TRAIN, micro_batches=2), tmp_path / "one", progress=False)

    config = write_config(tmp_path / "tiny.toml", **TRAIN)
    run = tmp_path / "two"
    # a time budget far shorter than one step: both processes must agree to stop after the first
    first = launch(["train", str(config), "--run-dir", str(run), "--max-minutes", "0.0001"], cwd=tmp_path)
    assert first.returncode == 0, first.output[-3000:]
    meta = json.loads((run / "final" / "metadata.json").read_text())
    assert meta["processes"] == 2 and meta["micro_batches"] == 2  # one group of two, not two lone "main" processes
    assert meta["stop_reason"].startswith("time budget") and meta["steps"] < 6
    stopped_at = meta["steps"]
    assert [p.name for p in (run / "checkpoints").iterdir()] == [f"step-{stopped_at:08d}"]
    assert first.output.count("time budget") == 1  # only the main process reports

    second = launch(["train", str(config), "--run-dir", str(run)], cwd=tmp_path)  # resumes
    assert second.returncode == 0, second.output[-3000:]
    assert not list(run.rglob("*.tmp")) and not list(run.rglob("*.old"))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000004", "step-00000006"]
    meta = json.loads((run / "final" / "metadata.json").read_text())
    assert meta["steps"] == 6 and meta["complete"] and meta["processes"] == 2

    # one writer: every step logged once; the same losses and weights as one process
    logged, reference = losses(run), losses(tmp_path / "one")
    assert [s for s, _ in logged] == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in logged] == pytest.approx([v for _, v in reference], rel=1e-5)
    a = load_file(str(one / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(run / "final" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6, msg=key)


def test_a_batch_too_small_to_cut_is_one_sentence(tmp_path):
    with pytest.raises(GenlabError, match=r"batch_size = 16 cannot be cut into 32 micro-batches"):
        train(TrainConfig(**TRAIN, micro_batches=32), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_the_accelerator_runs_where_the_device_option_says(monkeypatch, tmp_path):
    """distributed.accelerator() honours --device / GENLAB_DEVICE (checked by genlab.runtime) and still puts
    launched processes without a GPU on the CPU (gloo); accelerate itself is replaced by a recorder."""
    import accelerate

    from genlab import distributed, runtime

    asked = []
    monkeypatch.setattr(accelerate, "Accelerator", lambda **kw: asked.append(kw) or kw)
    monkeypatch.setattr(runtime, "_mps_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for name in ("WORLD_SIZE", "RANK", runtime.DEVICE_ENV):
        monkeypatch.delenv(name, raising=False)
    assert distributed.accelerator() == {"cpu": False}  # auto on a GPU machine: accelerate's pick
    monkeypatch.setenv(runtime.DEVICE_ENV, "cpu")
    assert distributed.accelerator() == {"cpu": True}
    monkeypatch.setenv(runtime.DEVICE_ENV, "cuda")
    assert distributed.accelerator() == {"cpu": False}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv(runtime.DEVICE_ENV, "auto")
    assert distributed.accelerator() == {"cpu": True}  # launched, no GPU: one gloo group
    monkeypatch.setenv(runtime.DEVICE_ENV, "cuda")
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(GenlabError, match=r"device 'cuda' \(from GENLAB_DEVICE\) is not available"):
        train(TrainConfig(**TRAIN), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists() and len(asked) == 4


# ----- the eval -----------------------------------------------------------------------------------
def eval_suite(tiny_vae_dir, tiny_ddpm_dir) -> dict:
    """Two families, two seeds, three shards per seed, the shared measures (likelihood, reconstruction,
    interpolation) and a row that fails while it samples (more DDIM steps than the tiny DDPM's T)."""
    return dict(
        dataset="digits", num_samples=30, batch_size=10, repeats=2, likelihood_images=10, interpolation_pairs=1,
        interpolation_steps=3,
        models=[{"id": "vae", "weights": str(tiny_vae_dir), "likelihood": {"k": 2}},
                {"id": "ddpm", "label": "ddim-3", "weights": str(tiny_ddpm_dir), "options": {"sampler": "ddim", "steps": 3},
                 "likelihood": {"exact_terms": 2, "strata": 2}},
                {"id": "ddpm", "label": "too-many-steps", "weights": str(tiny_ddpm_dir), "options": {"steps": 200}}],
    )


def comparable(metrics: dict) -> dict:
    """metrics.json without what differs between runs of the same numbers: clocks, dates, machine."""
    drop = {"created_at", "images_per_second", "latency_ms", "machine", "best_by_family", "claims"}

    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in drop}
        return [clean(v) for v in value] if isinstance(value, list) else value

    return clean(metrics)


@pytest.fixture(scope="module")
def one_process_eval(tmp_path_factory, tiny_vae_dir, tiny_ddpm_dir):
    from genlab.evals.runner import EvalConfig, run_eval

    import torch

    out = tmp_path_factory.mktemp("eval") / "one"
    # one thread, as each of the several processes has: CPU float sums round differently with another
    # thread count (by about 1e-8 relative), so the same threads per process give the same numbers
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_eval(EvalConfig(name="shared", **eval_suite(tiny_vae_dir, tiny_ddpm_dir)), out_dir=out, workers=1)
    finally:
        torch.set_num_threads(threads)
    return json.loads((out / "metrics.json").read_text())


def test_two_launched_processes_share_an_eval_and_report_what_one_process_reports(
        tmp_path, tiny_vae_dir, tiny_ddpm_dir, one_process_eval):
    suite = tmp_path / "shared.toml"
    settings = eval_suite(tiny_vae_dir, tiny_ddpm_dir)
    lines = [f"{k} = {json.dumps(v)}" for k, v in settings.items() if k != "models"]
    for model in settings["models"]:
        lines += ["[[models]]", *[f"{k} = {json.dumps(v) if not isinstance(v, dict) else inline(v)}"
                                  for k, v in model.items()]]
    suite.write_text("\n".join(lines) + "\n")
    # another eval writing the folder: the main process refuses in one sentence, the other one leaves
    # quietly (no hang waiting for a work folder that will not come)
    (tmp_path / "two").mkdir()
    holder = os.open(tmp_path / "two" / "eval.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        os.write(holder, f"{os.getpid()}\n".encode())
        refused = launch(["eval", str(suite), "--out", str(tmp_path / "two")], cwd=tmp_path)
    finally:
        os.close(holder)
    assert refused.returncode != 0
    sentence = (f"Error: {tmp_path / 'two'} is being written by another genlab eval (PID {os.getpid()}); wait for "
                "it or choose another --out")
    errors = [line for line in refused.output.splitlines() if line.startswith("Error: ")]  # genlab's, not torchrun's
    assert errors == [sentence], refused.output[-3000:]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["eval.lock", "images"]
    done = launch(["eval", str(suite), "--out", str(tmp_path / "two")], cwd=tmp_path)
    assert done.returncode == 1, done.output[-3000:]  # one row failed, as it does in one process
    assert done.output.count("report: ") == 1 and "1 model(s) failed" in done.output
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["machine"]["processes"] == 2 and len(metrics["machine"]["jobs_per_process"]) == 2
    assert [r["model"] for r in metrics["models"]] == ["vae", "ddim-3"]
    assert "steps=200 is more than the model's T=100" in metrics["failed_models"][0]["reason"]
    assert comparable(metrics) == comparable(one_process_eval)  # every number, exactly
    assert not (tmp_path / "two" / ".work").exists()  # the launch's claims are gone
    # each shard drawn once: three per seed and row that samples
    assert len(list((tmp_path / "two" / "samples").rglob("shard-*.safetensors"))) == 2 * 2 * 3


def test_workers_spawned_by_the_runner_report_what_one_process_reports(
        tmp_path, tiny_vae_dir, tiny_ddpm_dir, one_process_eval):
    from genlab.evals.runner import EvalConfig, run_eval

    run_eval(EvalConfig(name="shared", **eval_suite(tiny_vae_dir, tiny_ddpm_dir)), out_dir=tmp_path / "run", workers=2)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["machine"]["processes"] == 2 and metrics["machine"]["threads"] == 1
    assert len(metrics["machine"]["jobs_per_process"]) == 2
    assert comparable(metrics) == comparable(one_process_eval)


def inline(table: dict) -> str:
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in table.items()) + " }"
