"""The CLI as a user meets it: one line per mistake, a non-zero exit, never a traceback."""

import subprocess
import sys

import pytest
from PIL import Image

from genlab.cli import main


def run(capsys, *args):
    with pytest.raises(SystemExit) as info:
        main(list(args))
        raise SystemExit(0)
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


@pytest.mark.parametrize(
    "args, message",
    [
        (["sample", "-m", "nope"], "Error: unknown model 'nope'; registered models: "),
        (["sample", "-m", "vae", "-n", "0"], "Error: Invalid value for '--count' / '-n': 0 is not in the range 1<=x<=4096."),
        (["sample", "-m", "vae", "-n", "1000000000"], "is not in the range 1<=x<=4096"),
        (["sample", "-m", "vae", "-w", "/no/such/checkpoint"], "Error: no checkpoint at /no/such/checkpoint: give a folder"),
        (["sample", "-m", "vae", "--output", "/no/such/dir/x.png"], "Error: cannot write /no/such/dir/x.png: folder /no/such/dir does not exist"),
        (["sample", "-m", "vae", "--output", "x.jpg"], "must end in .png"),
        (["sample", "-m", "vae", "-o", "temperature=99"], "invalid option temperature=99 for model vae"),
        (["sample", "-m", "vae", "-o", "oops"], "is not NAME=VALUE"),
        (["train", "/no/config.toml"], "Error: no training config at /no/config.toml"),
        (["eval", "--models", "nope", "--dataset", "digits"], "unknown model 'nope'"),
        (["eval", "--models", "vae", "--dataset", "cifar"], "unknown dataset 'cifar'"),
        (["frobnicate"], "Error: No such command 'frobnicate'."),
    ],
)
def test_user_mistakes_give_one_line_and_non_zero_exit(capsys, tmp_path, args, message):
    if args[0] == "eval":
        args = [*args, "--out", str(tmp_path / "report")]
    code, out, err = run(capsys, *args)
    assert code != 0
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert not (tmp_path / "report").exists()  # nothing half-made is left behind


def test_no_traceback_from_the_installed_command():
    proc = subprocess.run(
        [sys.executable, "-m", "genlab.cli", "sample", "-m", "vae", "-n", "0"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "Error: Invalid value for '--count' / '-n': 0 is not in the range 1<=x<=4096."
    ]


def test_plugins_lists_the_vae_with_its_capabilities(capsys):
    code, out, err = run(capsys, "plugins")
    assert code == 0
    assert "vae" in out and "encode" in out and "likelihood" in out


def test_datasets_lists_the_offline_default(capsys):
    code, out, _ = run(capsys, "datasets")
    assert code == 0 and "mnist-5k" in out and "offline" in out


def test_sample_writes_a_png_grid(capsys, tmp_path, tiny_vae_dir):
    out_file = tmp_path / "grid.png"
    code, out, err = run(capsys, "sample", "-m", "vae", "-w", str(tiny_vae_dir), "-n", "9", "--scale", "1",
                         "--output", str(out_file))
    assert code == 0, err
    grid = Image.open(out_file)
    # 3x3 grid of 8x8 images with 2-pixel padding
    assert grid.size == (3 * 8 + 4 * 2, 3 * 8 + 4 * 2)
    assert "9 samples from vae (1 NFE" in out


def test_train_command_trains_and_reports(capsys, tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(
        'model = "vae"\ndataset = "digits"\nsteps = 3\nbatch_size = 8\n'
        "[network]\nimage_size = 8\nlatent_dim = 2\nchannels = [4, 8]\nhidden = 8\n"
    )
    code, out, err = run(capsys, "train", str(config), "--run-dir", str(tmp_path / "run"))
    assert code == 0, err
    assert "finished at step 3/3" in out
    assert (tmp_path / "run" / "final" / "config.json").is_file()
