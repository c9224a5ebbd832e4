"""The ``genlab`` command line. Every user mistake ends in one line on stderr and a non-zero exit."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from .errors import GenlabError

MAX_SAMPLES = 4096


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
    out = Path(path).expanduser()
    if out.suffix.lower() not in suffixes:
        raise GenlabError(f"output {out} must end in {' or '.join(suffixes)}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise GenlabError(f"cannot write {out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise GenlabError(f"cannot write {out}: permission denied; choose another --output")
    return out


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
def train(config, run_dir, steps, max_minutes, dataset):
    """Train a model from a TOML config; an interrupted run resumes where it stopped."""
    from .training import load_config, train as run_training

    cfg = load_config(config, steps=steps, max_minutes=max_minutes, dataset=dataset)
    run_dir = Path(run_dir or Path("runs") / Path(config).stem)
    final = run_training(cfg, run_dir)
    meta = json.loads((final / "metadata.json").read_text())
    click.echo(
        f"{meta['stop_reason']} at step {meta['steps']}/{meta['target_steps']} in "
        f"{meta['wall_seconds']:.0f}s; weights: {final}"
    )


@cli.command("train-classifier")
@click.option("--epochs", type=click.IntRange(1, 1000), default=12, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), help="Folder for the weights (default: the bundled one).")
def train_classifier_cmd(epochs, seed, out):
    """Train the MNIST classifier whose features the evals use for FID/KID."""
    from .features import CLASSIFIER_WEIGHTS, train_classifier

    meta = train_classifier(out or CLASSIFIER_WEIGHTS, epochs=epochs, seed=seed)
    click.echo(f"held-out accuracy {meta['heldout_accuracy']:.2%}; weights: {out or CLASSIFIER_WEIGHTS}")


@cli.command()
@click.option("--model", "-m", "model_id", required=True, help="Model id (see `genlab plugins`).")
@click.option("--weights", "-w", help="Checkpoint folder or Hub repo id (default: the model's bundled weights).")
@click.option("--count", "-n", type=click.IntRange(1, MAX_SAMPLES), default=64, show_default=True)
@click.option("--seed", "-s", type=int, default=0, show_default=True)
@click.option("--option", "-o", "option_pairs", multiple=True, help="Model option NAME=VALUE (repeatable).")
@click.option("--output", default="samples.png", show_default=True, help="PNG file for the grid.")
@click.option("--scale", type=click.IntRange(1, 16), default=2, show_default=True, help="Pixel enlargement.")
def sample(model_id, weights, count, seed, option_pairs, output, scale):
    """Draw seeded samples from a model and write them as a PNG grid."""
    from .images import grid
    from .models import Capability
    from .registry import get_model

    out = _writable_file(output, (".png",))
    model = get_model(model_id, weights=weights)
    model.require(Capability.SAMPLE)
    options = model.parse_options(_parse_options(option_pairs))
    result = model.sample(count, seed=seed, options=options)
    grid(result.images, scale=scale).save(out)
    click.echo(f"{count} samples from {model_id} ({result.nfe} NFE, {result.seconds:.2f}s) -> {out}")


@cli.command("eval")
@click.argument("suite", required=False, type=click.Path(dir_okay=False))
@click.option("--models", help="Comma-separated model ids (default: every model that can sample).")
@click.option("--dataset", default="mnist-5k", show_default=True)
@click.option("--num-samples", "-n", type=click.IntRange(2, 100_000), default=1000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--repeats", type=click.IntRange(1, 20), default=1, show_default=True,
              help="Sample sets per model (seeds seed, seed+1, ...); quality is reported as mean ± std.")
@click.option("--feature-extractor", default="mnist-classifier", show_default=True)
@click.option("--out", type=click.Path(file_okay=False), help="Report folder (default evals/runs/<name>).")
def eval_cmd(suite, models, dataset, num_samples, seed, repeats, feature_extractor, out):
    """Sample every model on equal terms and write report.md and metrics.json.

    Samples are saved in shards as they are made: after a crash or Ctrl-C, the same command
    resumes where the run stopped."""
    from genlab.evals.runner import EvalConfig, default_run_dir, load_suite, run_eval

    if suite:
        config = load_suite(suite)
    else:
        config = EvalConfig(
            models=[m.strip() for m in models.split(",") if m.strip()] if models else None,
            dataset=dataset, num_samples=num_samples, seed=seed, repeats=repeats,
            feature_extractor=feature_extractor,
        )
    folder = out or default_run_dir(config)
    try:
        report = run_eval(config, out_dir=folder)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"eval interrupted; finished shards are kept in {folder}: "
                                "run the same command again to resume") from None
    click.echo(f"report: {report}")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True)
def demo(host, port):
    """Serve the Gradio app with the bundled models."""
    from .app import build_app, launch

    launch(build_app(), host=host, port=port, block=True)


def main(argv=None):
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
        click.echo(f"Stopped: {exc}" if str(exc) else "Stopped.", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
