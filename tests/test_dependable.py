"""Dependability (issue 9): runs and checkpoints survive kills and signals, a broken plugin never
takes the others down, every CLI mistake is one sentence, and reports cannot carry markup."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

import genlab
from genlab import GenlabError, plugins, registry
from genlab.atomic import atomic_dir, recover_dir, signals_deferred, write_text
from genlab.cli import main
from genlab.training import TrainConfig, latest_checkpoint, train

TINY = {"image_size": 8, "latent_dim": 2, "channels": [4, 8], "hidden": 16}


def config(**kw):
    base = dict(model="vae", dataset="digits", steps=6, batch_size=16, seed=3, checkpoint_every=2,
                log_every=1, network=TINY)
    return TrainConfig(**{**base, **kw})


def run(capsys, *args):
    with pytest.raises(SystemExit) as info:
        main(list(args))
        raise SystemExit(0)
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


@pytest.fixture
def ctrl_c_raises():
    """SIGINT raises KeyboardInterrupt, as in a terminal (a background job may have it ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def weights(folder):
    return load_file(str(folder / "diffusion_pytorch_model.safetensors"))


# ----- 1. runs and checkpoints are never lost --------------------------------------------------
def test_resume_skips_a_checkpoint_cut_short_by_a_kill(tmp_path):
    straight = train(config(), tmp_path / "straight", progress=False)
    run_dir = tmp_path / "run"
    train(config(), run_dir, progress=False, max_steps=4)
    checkpoints = run_dir / "checkpoints"
    # kill -9 in the middle of writing step 6: a .tmp folder with part of a checkpoint...
    (checkpoints / "step-00000006.tmp" / "network").mkdir(parents=True)
    (checkpoints / "step-00000006.tmp" / "network" / "config.json").write_text("{")
    # ...and a step folder whose marker (trainer_state.json, written last) never came
    shutil.copytree(checkpoints / "step-00000004", checkpoints / "step-00000005")
    (checkpoints / "step-00000005" / "trainer_state.json").unlink()
    assert latest_checkpoint(run_dir).name == "step-00000004"

    resumed = train(config(), run_dir, progress=False)
    assert not (checkpoints / "step-00000006.tmp").exists()  # cleaned under the run's lock
    for key, value in weights(straight).items():
        torch.testing.assert_close(weights(resumed)[key], value, msg=key)
    assert json.loads((resumed / "metadata.json").read_text())["steps"] == 6


def test_a_kill_between_the_two_renames_keeps_the_previous_folder(tmp_path):
    final = tmp_path / "final"
    with atomic_dir(final) as tmp:
        (tmp / "metadata.json").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "metadata.json").write_text("half")
            raise RuntimeError("crash while writing")
    assert (final / "metadata.json").read_text() == "old" and not (tmp_path / "final.tmp").exists()
    # the process died after moving the old folder aside and before renaming the new one in
    final.rename(tmp_path / "final.old")
    (tmp_path / "final.tmp").mkdir()
    recover_dir(final)
    assert (final / "metadata.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_a_text_file_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "report.md"
    write_text(path, "first")

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError):
        write_text(path, "second")
    assert path.read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_a_second_signal_waits_for_the_save(ctrl_c_raises):
    with signals_deferred("saving") as received:
        os.kill(os.getpid(), signal.SIGINT)  # would raise KeyboardInterrupt here without the deferral
        os.kill(os.getpid(), signal.SIGTERM)
    assert received == [signal.SIGINT, signal.SIGTERM]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers are put back
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job's: it must stay ignored
    with signals_deferred("saving") as received:
        os.kill(os.getpid(), signal.SIGINT)
    assert received == [] and signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_a_second_ctrl_c_during_the_interrupts_save_does_not_cut_it(tmp_path, monkeypatch, ctrl_c_raises):
    import genlab_vae

    import genlab.training as training

    real_loss, calls = genlab_vae.VAE.training_loss, []

    def loss_then_ctrl_c(self, network, batch, generator=None):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the first Ctrl-C, after two steps
        return real_loss(self, network, batch, generator)

    real_save = training._save_optimizer

    def save_and_ctrl_c_again(optimizer, path):
        os.kill(os.getpid(), signal.SIGINT)  # the impatient second Ctrl-C, mid-save
        real_save(optimizer, path)

    monkeypatch.setattr(genlab_vae.VAE, "training_loss", loss_then_ctrl_c)
    monkeypatch.setattr(training, "_save_optimizer", save_and_ctrl_c_again)
    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt, match="interrupted at step 2; run the same command again"):
        train(config(checkpoint_every=100), run_dir, progress=False)
    assert latest_checkpoint(run_dir).name == "step-00000002"
    assert json.loads((run_dir / "final" / "metadata.json").read_text())["stop_reason"] == "interrupted"
    monkeypatch.setattr(genlab_vae.VAE, "training_loss", real_loss)
    monkeypatch.setattr(training, "_save_optimizer", real_save)
    final = train(config(checkpoint_every=100), run_dir, progress=False)  # resumes
    assert json.loads((final / "metadata.json").read_text())["steps"] == 6


def test_sigterm_while_the_model_computes_its_loss_stops_the_run_cleanly(tmp_path, monkeypatch):
    import genlab_vae

    real_loss, calls = genlab_vae.VAE.training_loss, []

    def loss_then_sigterm(self, network, batch, generator=None):
        calls.append(1)
        if len(calls) == 3:  # inside model code, which runs under registry.guard
            os.kill(os.getpid(), signal.SIGTERM)
        return real_loss(self, network, batch, generator)

    monkeypatch.setattr(genlab_vae.VAE, "training_loss", loss_then_sigterm)
    with pytest.raises(KeyboardInterrupt, match="interrupted at step 2"):
        train(config(checkpoint_every=100), tmp_path / "run", progress=False)
    assert latest_checkpoint(tmp_path / "run").name == "step-00000002"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_run_being_trained_by_another_process_is_refused_until_it_ends(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys, time
        fd = os.open({str(run_dir / 'train.lock')!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, str(os.getpid()).encode())
        print("locked", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        cfg = tmp_path / "tiny.toml"
        cfg.write_text('model = "vae"\ndataset = "digits"\nsteps = 2\nbatch_size = 8\n'
                       "[network]\nimage_size = 8\nlatent_dim = 2\nchannels = [4, 8]\nhidden = 8\n")
        code, out, err = run(capsys, "train", str(cfg), "--run-dir", str(run_dir))
        assert code == 1
        assert err.strip().splitlines() == [
            f"Error: run {run_dir} is being trained by PID {holder.pid}: wait for it to finish, or stop it "
            "(Ctrl-C saves) and run this command again"]
        assert not (run_dir / "config.json").exists()  # the second process touched nothing
    finally:
        holder.kill()
        holder.wait()
    # the holder died: its lock file (with its PID) stays, and must not block the next run
    assert (run_dir / "train.lock").read_text().strip() == str(holder.pid)
    code, out, err = run(capsys, "train", str(cfg), "--run-dir", str(run_dir))
    assert code == 0, err
    assert "finished at step 2/2" in out


def test_a_second_eval_on_the_same_folder_stops_at_once_and_a_dead_evals_lock_is_taken_over(
        fake_entry_points, capsys, tmp_path):
    import fcntl

    fake_entry_points({"example": "genlab_example"})
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    lock = out_dir / "eval.lock"
    args = ("eval", "--models", "uniform-noise", "--dataset", "digits", "-n", "20", "--out", str(out_dir))
    # a live eval holds the folder: an OS lock on the file (another open file: flock excludes it as it
    # would another process), its PID inside (this test's parent, alive)
    holder = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        os.write(holder, f"{os.getppid()}\n".encode())
        code, out, err = run(capsys, *args)
    finally:
        os.close(holder)
    assert code == 1
    assert err.strip().splitlines() == [
        f"Error: {out_dir} is being written by another genlab eval (PID {os.getppid()}); wait for it or choose "
        "another --out"]
    assert sorted(p.name for p in out_dir.iterdir()) == ["eval.lock", "images"]  # nothing written
    # an eval that died left its lock file with its PID: the OS lock died with it, and the next eval runs
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(dead.stdout)
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert f"report: {out_dir / 'report.md'}" in out and lock.read_text().strip() == str(os.getpid())
    # the lock is released with the eval: the same command runs again (and reads its results back)
    assert run(capsys, *args)[0] == 0


def test_train_classifier_never_replaces_the_bundled_weights_unless_asked(capsys, monkeypatch, tmp_path):
    import genlab.features as features

    targets = []
    monkeypatch.setattr(features, "train_classifier",
                        lambda out, **kw: targets.append(out) or {"heldout_accuracy": 0.5})
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "train-classifier")[0] == 0
    assert run(capsys, "train-classifier", "--replace-bundled")[0] == 0
    assert [str(t) for t in targets] == [os.path.join("runs", "mnist-classifier"), str(features.CLASSIFIER_WEIGHTS)]


def test_eval_stops_on_sigterm_with_its_resume_message(capsys, monkeypatch, tmp_path):
    import genlab.evals.runner as runner

    def killed(config, out_dir=None, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the eval")

    monkeypatch.setattr(runner, "run_eval", killed)
    code, out, err = run(capsys, "eval", "--models", "vae", "--out", str(tmp_path / "run"))
    assert code == 130
    assert err.strip().splitlines()[-1] == (f"Stopped: eval interrupted; finished shards are kept in "
                                             f"{tmp_path / 'run'}: run the same command again to resume")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


# ----- 2. a broken plugin never takes down the others ------------------------------------------
def reasons():
    return {f.name: f.reason for f in genlab.plugin_failures()}


def test_a_misspelled_hook_is_recorded_and_every_command_still_works(fake_entry_points, capsys):
    fake_entry_points({"typo": "genlab_example.typo_hook", "example": "genlab_example"})
    assert list(genlab.get_models()) == ["uniform-noise"]
    assert reasons() == {"typo": "implements unknown hook 'register_modles'; genlab's hooks are "
                                 "register_datasets, register_feature_extractors, register_models"}
    assert "typo" not in plugins.plugin_names()
    plugins.pm.check_pending()  # nothing left for pluggy to reject
    code, out, err = run(capsys, "plugins")
    assert code == 0 and "uniform-noise" in out and "FAILED typo: implements unknown hook" in out


def test_sys_exit_at_import_is_recorded_not_obeyed(fake_entry_points, capsys):
    fake_entry_points({"quitter": "genlab_example.exit_at_import", "example": "genlab_example",
                       "args": "genlab_example.wrong_hook_args"})
    assert list(genlab.get_models()) == ["uniform-noise"]
    found = reasons()
    assert found["quitter"] == "called sys.exit(3) while importing"
    assert "registrar" in found["args"] and "args" not in plugins.plugin_names()  # not left half-registered
    code, out, err = run(capsys, "sample", "-m", "quitter")
    assert code == 1
    assert err.strip().splitlines() == [
        "Error: model 'quitter' is unavailable: plugin 'quitter' failed to load (called sys.exit(3) while "
        "importing); registered models: uniform-noise"]


def test_a_clashing_id_keeps_the_built_in_model_and_names_both_plugins(fake_entry_points):
    import genlab_vae

    # the third-party plugin comes first in discovery order; the in-tree one still wins
    fake_entry_points({"clash": "genlab_example.id_clash", "vae": "genlab_vae"})
    assert genlab.get_model_class("vae") is genlab_vae.VAE
    assert "clash-extra" in genlab.get_models()  # the rest of the plugin registered
    assert reasons() == {"clash": "model id 'vae' is registered twice: first by plugin 'vae', then by "
                                  "'clash'; kept the first"}


def test_a_malformed_model_class_is_recorded_and_its_siblings_register(clean_registry, monkeypatch):
    import types

    class NoCapabilities(genlab.Model):
        model_id = "odd"
        family = "test"
        capabilities = frozenset({"levitate"})  # not a Capability: describe() fails

    class Fine(genlab.Model):
        model_id = "fine"
        family = "test"

    module = types.ModuleType("mixed")

    @genlab.hookimpl
    def register_models(register):
        register(NoCapabilities)
        register(Fine)
        register("not a class")

    module.register_models = register_models
    monkeypatch.setenv("GENLAB_PLUGINS", "")
    plugins.load_plugins()
    plugins.pm.register(module, name="mixed")
    assert list(genlab.get_models()) == ["fine"]
    assert [f.reason for f in genlab.plugin_failures()] == [
        "model 'odd' was not registered: describe() raised AttributeError: 'str' object has no attribute 'value'; "
        "check its family and capabilities",
        "register_models raised GenlabError: register_models was given 'not a class', which is not a genlab.Model "
        "subclass"]


def test_a_model_failing_at_run_time_is_one_line_naming_it(fake_entry_points, capsys, tmp_path):
    fake_entry_points({"broken": "genlab_example.broken_runtime"})
    code, out, err = run(capsys, "sample", "-m", "buggy", "--output", str(tmp_path / "x.png"))
    assert code == 1
    assert err.strip().splitlines() == [
        "Error: model buggy (plugin broken) failed to sample: RuntimeError: boom in sample"]
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(genlab.ModelError, match=r"model buggy \(plugin broken\) failed to reconstruct: SystemExit: 4"):
        with registry.guard("buggy", "reconstruct"):
            genlab.get_model("buggy").reconstruct(torch.zeros(1, 1, 8, 8))


def test_a_plain_eval_measures_every_other_model_and_reports_the_failure(fake_entry_points, capsys, tmp_path):
    fake_entry_points({"broken": "genlab_example.broken_runtime", "example": "genlab_example"})
    out_dir = tmp_path / "run"
    code, out, err = run(capsys, "eval", "--dataset", "digits", "-n", "20", "--out", str(out_dir))
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        "Error: 1 model(s) failed and are marked so in the report, the others were measured: buggy (model "
        "buggy (plugin broken) failed to sample: RuntimeError: boom in sample)")
    assert "Traceback" not in err and f"report: {out_dir / 'report.md'}" in out
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert [r["model"] for r in metrics["models"]] == ["uniform-noise"] and metrics["models"][0]["fid"] > 0
    assert metrics["failed_models"] == [{"model": "buggy", "id": "buggy", "plugin": "broken", "reason":
                                         "model buggy (plugin broken) failed to sample: RuntimeError: boom in sample"}]
    report = (out_dir / "report.md").read_text()
    assert "| buggy | broken | model buggy (plugin broken) failed to sample: RuntimeError: boom in sample |" in report
    assert "| uniform-noise | baseline |" in report
    assert metrics["models"][0]["parameters"] == 0  # a weightless model needs no parameter_count of its own
    assert not list((out_dir / "cache").glob("row-buggy-*"))  # a failure is not cached: the next run retries


def test_the_plugin_contract_is_exported():
    from genlab.datasets import dequantize, load_dataset, to_unit

    assert (genlab.load_dataset, genlab.to_unit, genlab.dequantize) == (load_dataset, to_unit, dequantize)
    assert genlab.MAX_SEED == 2**32 - 1
    doc = genlab.Model.bits_per_dim.__doc__
    assert "likelihood_images" in doc and "+ 8" in doc and "uint8 [N, C, H, W]" in doc


# ----- 3. every bad value gets one clear sentence ----------------------------------------------
TINY_TOML = ('model = "vae"\ndataset = "digits"\nsteps = 2\nbatch_size = 8\n'
             "[network]\nimage_size = 8\nlatent_dim = 2\nchannels = [4, 8]\nhidden = 8\n")


@pytest.fixture
def bad(tmp_path, tiny_vae_dir, tiny_ddpm_dir):
    """Broken inputs of every kind, made in tmp_path; ``{name}`` in a test row becomes their path."""
    files = {"tmp": tmp_path, "vae": tiny_vae_dir}

    def weights_with(name, edit):
        folder = tmp_path / name
        shutil.copytree(tiny_vae_dir, folder)
        edit(folder)
        files[name] = folder

    def text(name, content):
        files[name] = tmp_path / name
        files[name].write_text(content)

    def set_latent(folder, value):
        c = json.loads((folder / "config.json").read_text())
        c["latent_dim"] = value
        (folder / "config.json").write_text(json.dumps(c))

    weights_with("wrong_type", lambda f: set_latent(f, "four"))
    weights_with("bad_json", lambda f: (f / "config.json").write_text("{oops"))
    files["ddpm"] = tiny_ddpm_dir
    text("negative.toml", TINY_TOML.replace("latent_dim = 2", "latent_dim = -4"))
    text("poisson.toml", TINY_TOML + 'likelihood = "poisson"\n')
    text("typo.toml", TINY_TOML + "latnt_dim = 3\n")
    text("ill_typed.toml", TINY_TOML.replace("hidden = 8", 'hidden = "big"'))
    text("full_size.toml", 'model = "vae"\ndataset = "digits"\nsteps = 2\n')
    text("negative_seed.toml", TINY_TOML.replace("steps = 2", "steps = 2\nseed = -1"))
    files["binary.toml"] = tmp_path / "binary.toml"
    files["binary.toml"].write_bytes(bytes(range(256)))
    text("empty.toml", "")
    text("no_models.toml", "models = []\n")
    text("bogus_kwarg.toml", f'dataset = "digits"\nmodels = [{{id = "vae", weights = "{tiny_vae_dir}", '
                             'likelihood = {bogus = 1}}]\n')
    text("ill_kwarg.toml", f'dataset = "digits"\nmodels = [{{id = "vae", weights = "{tiny_vae_dir}", '
                           'likelihood = {k = "many"}}]\n')
    text("unknown_setting.toml", 'models = ["vae"]\nnum_sample = 10\n')
    text("no_weights.toml", 'dataset = "digits"\nmodels = [{id = "vae", weights = "/no/such/run"}]\n')
    (tmp_path / "run_corrupt").mkdir()
    (tmp_path / "run_corrupt" / "config.json").write_text("not json")
    files["run_corrupt"] = tmp_path / "run_corrupt"
    (tmp_path / "a_folder.png").mkdir()
    files["a_folder.png"] = tmp_path / "a_folder.png"
    (tmp_path / "pngs").mkdir()
    (tmp_path / "pngs" / "fake.png").write_text("not an image")
    files["pngs"] = tmp_path / "pngs"
    (tmp_path / "other_files").mkdir()
    (tmp_path / "other_files" / "notes.txt").write_text("mine")
    files["other_files"] = tmp_path / "other_files"
    return files


BIG = str(2**64)
CLI_MISTAKES = [
    # sample
    (["sample", "-m", "vae", "--seed", BIG], "is not in the range 0<=x<=4294967295"),
    (["sample", "-m", "vae", "--seed", "-1"], "is not in the range 0<=x<=4294967295"),
    (["sample", "-m", "vae", "--output", "{a_folder.png}"], "it is a folder; give a file name such as samples.png"),
    (["sample", "-m", "vae", "--output", ""], "--output is empty"),
    (["sample", "-m", "vae", "--output", "/proc/genlab-test.png"], "cannot write /proc/genlab-test.png"),
    (["sample", "-m", "vae", "-w", "{wrong_type}"], "config.json is damaged: latent_dim = 'four' should be a whole number"),
    (["sample", "-m", "vae", "-w", "{ddpm}"], "hold a DenoisingUNet network, not the VAENetwork that model vae loads"),
    (["sample", "-m", "vae", "-w", "{bad_json}"], "config.json is not valid JSON"),
    (["sample", "-m", "vae", "-w", "someone/model"], "the Hugging Face Hub is offline (HF_HUB_OFFLINE=1)"),
    (["sample", "-m", "vae", "-o", "temperature=hot"], "invalid option temperature='hot' for model vae"),
    (["sample", "-m", "vae", "-n", "4096", "--scale", "16"], "lower --count or --scale"),
    # train
    (["train", "{negative.toml}"], "invalid [network] latent_dim = -4 for model vae"),
    (["train", "{poisson.toml}"], "invalid [network] likelihood = 'poisson' for model vae"),
    (["train", "{typo.toml}"], "[network] unknown setting 'latnt_dim'; valid settings: image_size, in_channels, latent_dim"),
    (["train", "{ill_typed.toml}"], "[network] hidden = 'big' should be a whole number"),
    (["train", "{full_size.toml}"], "takes 1x28x28 images but dataset digits holds 1x8x8 images"),
    (["train", "{negative_seed.toml}"], "invalid seed=-1: Input should be greater than or equal to 0"),
    (["train", "{binary.toml}"], "binary.toml is not a text file"),
    (["train", "{typo.toml}", "--dataset", "folder:"], "folder: needs a path"),
    (["train", "{negative.toml}", "--dataset", "folder:{pngs}"], "no readable images in"),
    # eval
    (["eval", "{binary.toml}"], "binary.toml is not a text file"),
    (["eval", "{empty.toml}"], "empty.toml is empty: a suite names what to evaluate"),
    (["eval", "{no_models.toml}"], "invalid models = []: selects no model"),
    (["eval", "--models", ","], "--models ',' names no model"),
    (["eval", "--models", ""], "--models '' names no model"),
    (["eval", "{bogus_kwarg.toml}"], "likelihood setting 'bogus' is not an argument of its bits_per_dim; valid settings: k"),
    (["eval", "{ill_kwarg.toml}"], "likelihood setting k = 'many' should be a whole number"),
    (["eval", "{unknown_setting.toml}"], "unknown setting 'num_sample'; valid settings: name, models, dataset"),
    (["eval", "{no_weights.toml}"], "no checkpoint at /no/such/run"),
    (["eval", "--models", "vae", "--dataset", "digits"], "model vae takes 1x28x28 images but dataset digits holds 1x8x8"),
    (["eval", "--models", "vae", "--seed", BIG], "is not in the range 0<=x<=4294967295"),
    (["eval", "--models", "vae", "--dataset", "folder:{pngs}"], "skipped: fake.png (not an image)"),
    # train-classifier
    (["train-classifier", "--out", "/proc/genlab-classifier"], "cannot write /proc/genlab-classifier"),
    (["train-classifier", "--out", "{other_files}"], "holds other files"),
    (["train-classifier", "--out", "{tmp}/c", "--replace-bundled"], "give either --out FOLDER or --replace-bundled"),
    (["train-classifier", "--seed", BIG], "is not in the range 0<=x<=4294967295"),
]


@pytest.mark.parametrize("args, message", CLI_MISTAKES, ids=[" ".join(a)[:60] for a, _ in CLI_MISTAKES])
def test_cli_mistake_is_one_sentence(capsys, bad, args, message):
    for name, path in bad.items():
        args = [a.replace(f"{{{name}}}", str(path)) for a in args]
    made = bad["tmp"] / "made"
    if args[0] == "train":
        args += ["--run-dir", str(made)]
    if args[0] == "eval":
        args += ["--out", str(made)]
    code, out, err = run(capsys, *args)
    assert code != 0
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert message in err
    assert not made.exists()  # nothing half-made is left behind


def test_an_unexpected_error_is_one_line_with_a_hint(capsys, monkeypatch):
    import genlab.registry as reg

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(reg, "get_models", broken)
    code, out, err = run(capsys, "plugins")
    assert code == 1
    assert err.strip().splitlines() == [
        "Error: unexpected ZeroDivisionError: a bug (a bug in genlab or a plugin; set GENLAB_DEBUG=1 to see the traceback)"]
    monkeypatch.setenv("GENLAB_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(["plugins"])


def test_damaged_files_beside_weights_are_one_sentence(tmp_path, tiny_vae_dir):
    folder = tmp_path / "weights"
    shutil.copytree(tiny_vae_dir, folder)
    model = genlab.get_model("vae", weights=folder)
    (folder / "metadata.json").write_text("{truncated")
    with pytest.raises(GenlabError, match=r"metadata.json is not valid JSON .*fix or delete it"):
        model.metadata()
    (folder / "training_log.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": "high"}\n')
    with pytest.raises(GenlabError, match=r"training_log.jsonl line 2 is not a JSON object with a numeric loss"):
        model.training_log()


# ----- folder datasets --------------------------------------------------------------------------
def _png_header(path, width, height):
    """A PNG that declares width x height pixels and holds none (PIL reads the header only)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IEND", b""))


def test_folder_dataset_skips_bad_files_with_one_warning_naming_them(tmp_path):
    import numpy as np
    from PIL import Image

    from genlab.datasets import load_dataset
    from genlab.errors import GenlabWarning

    for i in range(3):
        Image.fromarray(np.full((30, 30), 80 * i, dtype=np.uint8)).save(tmp_path / f"good{i}.png")
    (tmp_path / "text.png").write_text("not an image")
    whole = (tmp_path / "good0.png").read_bytes()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:200])
    _png_header(tmp_path / "huge.png", 5000, 5000)  # over genlab's limit: skipped before decoding
    _png_header(tmp_path / "bomb.png", 20000, 20000)  # over PIL's own bomb limit too
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    (tmp_path / "folder.png").mkdir()
    assert whole  # the good files stay readable
    with pytest.warns(GenlabWarning) as caught:
        data = load_dataset(f"folder:{tmp_path}", "all")
    assert data.images.shape == (3, 1, 28, 28)
    (warning,) = caught
    message = str(warning.message)
    assert message.startswith(f"skipped 6 of 9 files in {tmp_path}: ")
    assert message.endswith("; and 1 more")  # five are named, so the line stays readable
    for name, why in [("bomb.png", "over the 16,777,216 pixels allowed"), ("cut.png", "unreadable"),
                      ("dangling.png", "a dangling link"), ("folder.png", "not a file"),
                      ("huge.png", "5000x5000 pixels, over the 16,777,216 allowed")]:
        assert f"{name} ({why}" in message


def test_folder_dataset_needs_a_path_and_two_images(tmp_path):
    import numpy as np
    from PIL import Image

    from genlab.datasets import load_dataset

    with pytest.raises(GenlabError, match="folder: needs a path"):
        load_dataset("folder:")
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(tmp_path / "only.png")
    with pytest.raises(GenlabError, match=r"holds 1 image\(s\): its train/held-out split needs at least 2"):
        load_dataset(f"folder:{tmp_path}")


# ----- 5. reports cannot carry markup -----------------------------------------------------------
def test_a_label_with_html_is_text_in_both_reports(fake_entry_points, tmp_path):
    from genlab.evals.runner import EvalConfig, run_eval

    fake_entry_points({"example": "genlab_example"})
    label = "<img src=x onerror=alert(1)> [link](javascript:alert(2)) | cell"
    report = run_eval(EvalConfig(dataset="digits", num_samples=20, name="<script>alert(3)</script>",
                                 models=[{"id": "uniform-noise", "label": label}]), out_dir=tmp_path / "run")
    markdown = report.read_text()
    assert "\\<img src=x onerror=alert(1)\\> \\[link\\](javascript:alert(2)) \\| cell" in markdown
    html = (tmp_path / "run" / "report.html").read_text()
    assert "<img src=x" not in html and "<script>" not in html and 'href="javascript' not in html
    assert "&lt;img src=x onerror=alert(1)&gt; [link](javascript:alert(2)) | cell" in html
    assert "<title>genlab eval: &lt;script&gt;alert(3)&lt;/script&gt;</title>" in html
    assert html.count("data:image/png;base64,") >= 1  # genlab's own images are still inlined
