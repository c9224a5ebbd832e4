"""The ``genlab`` command line. Every user mistake ends in one line on stderr and a non-zero exit."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import click

from .errors import GenlabError, GenlabWarning, describe
from .models import MAX_SEED

MAX_SAMPLES = 4096
DEBUG_VAR = "GENLAB_DEBUG"
SEED = click.IntRange(0, MAX_SEED)


def _parse_options(pairs) -> dict:
    options = {}
    for pair in pairs:
        if "=" not in pair:
            raise GenlabError(f"option {pair!r} is not NAME=VALUE, e.g. -o temperature=0.8")
        name, value = pair.split("=", 1)
        try:
            options[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[name.strip()] = value
    return options


def _writable_file(path: str, suffixes: tuple[str, ...]) -> Path:
    if not path.strip():
        raise GenlabError(f"--output is empty: give a file name ending in {' or '.join(suffixes)}, e.g. samples.png")
    out = Path(path).expanduser()
    if out.suffix.lower() not in suffixes:
        raise GenlabError(f"output {out} must end in {' or '.join(suffixes)}")
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise GenlabError(f"cannot write {out}: it is a folder; give a file name such as samples.png")
    if not parent.is_dir():
        raise GenlabError(f"cannot write {out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise GenlabError(f"cannot write {out}: permission denied; choose another --output")
    return out


MAX_GRID_PIXELS = 8192 * 8192


def _check_grid_size(count: int, size: tuple, scale: int) -> None:
    """Refuse a sample grid that would take gigabytes (4096 images at --scale 16 is 30,000 pixels a side)."""
    import math

    height, width = size
    columns = max(1, math.ceil(math.sqrt(count)))
    rows = math.ceil(count / columns)
    grid_w, grid_h = ((width + 2) * columns + 2) * scale, ((height + 2) * rows + 2) * scale
    if grid_w * grid_h > MAX_GRID_PIXELS:
        raise GenlabError(f"a grid of {count} images at --scale {scale} would be {grid_w:,}x{grid_h:,} pixels, more "
                          f"than the {MAX_GRID_PIXELS:,} allowed: lower --count or --scale")


def _save_image(image, out: Path) -> None:
    """Write a PNG whole or not at all; a failure (read-only disk, full disk) is one sentence."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, out)
    except OSError as exc:
        raise GenlabError(f"cannot write {out}: {exc.strerror or exc}; choose another --output") from None
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (a scheduler, `kill`, a closing terminal) stops a command as Ctrl-C does: with its
    resume message rather than a silent death."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _choose_device(ctx, param, value):
    """--device: checked now (one sentence if this machine lacks it), then set as GENLAB_DEVICE so that
    every model, the eval's feature networks and the app's workers use it."""
    if value is None:
        return None
    from .runtime import DEVICE_ENV, resolve_device

    resolve_device(value)
    os.environ[DEVICE_ENV] = value
    return value


def device_option(what: str):
    return click.option("--device", callback=_choose_device, expose_value=False, is_eager=True,
                        help=f"Where {what} runs: auto (CUDA, then Apple MPS, then the CPU), cpu, cuda, cuda:N or "
                             "mps; default: $GENLAB_DEVICE, else auto.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="genlab")
def cli():
    """genlab: see and measure how generative image models differ."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins(as_json):
    """List loaded plugins, their models and capabilities, and plugins that failed."""
    from .plugins import plugin_names
    from .registry import get_models, plugin_failures, registry

    reg = registry()
    loaded = []
    for name in plugin_names():
        models = [cls.describe() for mid, cls in get_models().items() if reg.plugin_of.get(mid) == name]
        loaded.append({"name": name, "models": models})
    failed = [{"name": f.name, "reason": f.reason} for f in plugin_failures()]
    if as_json:
        click.echo(json.dumps({"plugins": loaded, "failed": failed}, indent=2))
        return
    for plugin in loaded:
        click.echo(f"{plugin['name']}")
        for m in plugin["models"]:
            click.echo(f"  {m['id']:<12} {m['family']:<18} {', '.join(m['capabilities'])}")
    if not loaded:
        click.echo("no plugins loaded")
    for f in failed:
        click.echo(f"FAILED {f['name']}: {f['reason']}")


@cli.command()
def datasets():
    """List registered datasets."""
    from .registry import get_datasets

    for name, spec in get_datasets().items():
        shape = "x".join(str(s) for s in spec.image_shape)
        where = "offline" if spec.offline else "needs network"
        click.echo(f"{name:<14} {shape:<8} {where:<14} {spec.description}")


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--run-dir", type=click.Path(file_okay=False), help="Where checkpoints go (default runs/<config name>); an existing run resumes.")
@click.option("--steps", type=click.IntRange(1, 10_000_000), help="Override the config's steps.")
@click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True), help="Stop (and save) after this much training time.")
@click.option("--dataset", help="Override the config's dataset.")
@device_option("training")
def train(config, run_dir, steps, max_minutes, dataset):
    """Train a model from a TOML config; an interrupted run resumes where it stopped."""
    from .distributed import is_main_process
    from .training import load_config, train as run_training

    cfg = load_config(config, steps=steps, max_minutes=max_minutes, dataset=dataset)
    run_dir = Path(run_dir or Path("runs") / Path(config).stem)
    final = run_training(cfg, run_dir, source=config)
    if not is_main_process():  # launched processes: the main one reports (only it touches the run folder)
        return
    meta = json.loads((final / "metadata.json").read_text())
    click.echo(
        f"{meta['stop_reason']} at step {meta['steps']}/{meta['target_steps']} in "
        f"{meta['wall_seconds']:.0f}s; weights: {final}"
    )


@cli.command("train-classifier")
@click.option("--epochs", type=click.IntRange(1, 1000), default=12, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False),
              help="Folder for the weights (default runs/mnist-classifier).")
@click.option("--replace-bundled", is_flag=True,
              help="Replace the bundled classifier that every FID/KID (and the committed reports) use.")
def train_classifier_cmd(epochs, seed, out, replace_bundled):
    """Train the MNIST classifier whose features the evals use for FID/KID.

    The bundled classifier is left alone unless --replace-bundled is given: FIDs measured with
    another classifier are not comparable with the committed reports."""
    from .features import CLASSIFIER_WEIGHTS, train_classifier

    if out and replace_bundled:
        raise GenlabError("give either --out FOLDER or --replace-bundled, not both")
    target = CLASSIFIER_WEIGHTS if replace_bundled else Path(out or Path("runs") / "mnist-classifier")
    meta = train_classifier(target, epochs=epochs, seed=seed)
    click.echo(f"held-out accuracy {meta['heldout_accuracy']:.2%}; weights: {target}")


@cli.command()
@click.option("--model", "-m", "model_id", required=True, help="Model id (see `genlab plugins`).")
@click.option("--weights", "-w", help="Checkpoint folder or Hub repo id (default: the model's bundled weights).")
@click.option("--count", "-n", type=click.IntRange(1, MAX_SAMPLES), default=64, show_default=True)
@click.option("--seed", "-s", type=SEED, default=0, show_default=True)
@click.option("--option", "-o", "option_pairs", multiple=True, help="Model option NAME=VALUE (repeatable).")
@click.option("--output", default="samples.png", show_default=True, help="PNG file for the grid.")
@click.option("--scale", type=click.IntRange(1, 16), default=2, show_default=True, help="Pixel enlargement.")
@device_option("the model")
def sample(model_id, weights, count, seed, option_pairs, output, scale):
    """Draw seeded samples from a model and write them as a PNG grid."""
    from .images import grid
    from .models import Capability
    from .registry import get_model, guard

    out = _writable_file(output, (".png",))
    model = get_model(model_id, weights=weights)
    model.require(Capability.SAMPLE)
    with guard(model.model_id, "parse its options"):
        options = model.parse_options(_parse_options(option_pairs))
    with guard(model.model_id, "load"):
        shape = model.image_shape()
    if shape is not None:  # before sampling: a grid too large to write is known in advance
        _check_grid_size(count, shape[1:], scale)
    with guard(model.model_id, "sample"):
        result = model.sample(count, seed=seed, options=options)
        _check_grid_size(count, tuple(result.images.shape[2:]), scale)
        image = grid(result.images, scale=scale)  # what the model returned must be images
    _save_image(image, out)
    ran = result.info if isinstance(result.info, dict) else {}
    how = ", ".join(str(ran[k]) for k in ("device", "backend", "precision") if ran.get(k))
    click.echo(f"{count} samples from {model_id} ({result.nfe} NFE, {result.seconds:.2f}s{', ' + how if how else ''}) -> {out}")


@cli.command("eval")
@click.argument("suite", required=False, type=click.Path(dir_okay=False))
@click.option("--models", help="Comma-separated model ids (default: every model that can sample).")
@click.option("--dataset", default="mnist-5k", show_default=True)
@click.option("--num-samples", "-n", type=click.IntRange(2, 100_000), default=1000, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--repeats", type=click.IntRange(1, 20), default=1, show_default=True,
              help="Sample sets per model (seeds seed, seed+1, ...); quality is reported as mean ± std.")
@click.option("--feature-extractor", default="mnist-classifier", show_default=True)
@click.option("--out", type=click.Path(file_okay=False), help="Report folder (default evals/runs/<name>).")
@click.option("--workers", type=click.IntRange(1, 256), envvar="GENLAB_EVAL_WORKERS",
              help="Processes that share the eval, one thread each [default: one per CPU core this process may "
                   "use, up to 8; 1 with a GPU]. Under torchrun or accelerate launch, the launched processes share it.")
@device_option("every model and feature network")
def eval_cmd(suite, models, dataset, num_samples, seed, repeats, feature_extractor, out, workers):
    """Sample every model on equal terms and write report.md and metrics.json.

    Samples are saved in shards as they are made: after a crash or Ctrl-C, the same command
    resumes where the run stopped."""
    from genlab.evals.parallel import default_workers
    from genlab.evals.runner import EvalConfig, default_run_dir, load_suite, run_eval

    if suite:
        config = load_suite(suite)
    else:
        ids = None if models is None else [m.strip() for m in models.split(",") if m.strip()]
        if ids == []:
            raise GenlabError(f"--models {models!r} names no model: give comma-separated model ids, or leave "
                              "--models out to evaluate every model that can sample")
        config = EvalConfig(
            models=ids, dataset=dataset, num_samples=num_samples, seed=seed, repeats=repeats,
            feature_extractor=feature_extractor,
        )
    folder = out or default_run_dir(config)
    try:
        with _sigterm_as_interrupt():
            report = run_eval(config, out_dir=folder, workers=workers or default_workers())
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"eval interrupted; finished shards are kept in {folder}: "
                                "run the same command again to resume") from None
    if report is None:  # a launched process that shared the work; the main one writes the report
        return
    click.echo(f"report: {report}")
    failed = json.loads((Path(report).parent / "metrics.json").read_text()).get("failed_models", [])
    if failed:
        names = "; ".join(f"{f['model']} ({f['reason']})" for f in failed)
        raise GenlabError(f"{len(failed)} model(s) failed and are marked so in the report, the others were "
                          f"measured: {names}")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True)
@device_option("the app's models")
def demo(host, port):
    """Serve the Gradio app with the bundled models."""
    from .app import build_app, launch

    launch(build_app(), host=host, port=port, block=True)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """genlab's own warnings (files skipped...) as one line each; others as Python prints them."""
    if issubclass(category, GenlabWarning):
        click.echo(f"Warning: {message}", err=True)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


def main(argv=None):
    from .distributed import is_main_process

    if not is_main_process():  # launched processes: one set of progress bars, the main process's
        os.environ.setdefault("TQDM_DISABLE", "1")
    warnings.showwarning = _show_warning
    try:
        _main(argv)
    finally:
        warnings.showwarning = _python_showwarning


def _main(argv=None):
    try:
        cli.main(args=argv, prog_name="genlab", standalone_mode=False)
    except click.exceptions.Abort as exc:  # click turns Ctrl-C into Abort; keep our message
        cause = exc.__cause__
        click.echo(f"Stopped: {cause}" if cause is not None and str(cause) else "Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"Error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except GenlabError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt as exc:
        from .distributed import is_main_process

        if is_main_process():  # launched processes stop together; the main one says so
            click.echo(f"Stopped: {exc}" if str(exc) else "Stopped.", err=True)
        sys.exit(130)
    except Exception as exc:  # the safety net: a bug, not a user mistake, still gets one line
        if os.environ.get(DEBUG_VAR):
            raise
        click.echo(f"Error: unexpected {describe(exc)} (a bug in genlab or a plugin; set {DEBUG_VAR}=1 "
                   "to see the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
