"""Past one process: `genlab train` and `genlab eval` under torchrun, two CPU processes over gloo,
against the same work done by one process.

Each launch is a real `python -m torch.distributed.run --standalone` (a free rendezvous port of its
own) of the real CLI, with a timeout that kills the whole launch if it hangs.
"""

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
