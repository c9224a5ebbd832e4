"""The Gradio app. UI code only: the work is done by the models and plain functions elsewhere.

Tabs and widgets follow the registry: a model appears in the Sample tab because it declares the
``sample`` capability, and its option widgets are built from its pydantic ``Options`` schema.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import os
import re
import threading
import typing

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home from a lab tool

import gradio as gr

from .errors import GenlabError
from .metrics import stroke_localization
from .models import Capability

log = logging.getLogger(__name__)

MAX_COUNT = 64
SEED_MAX = 2**32 - 1
MAX_UPLOAD_PIXELS = 2048 * 2048  # a drawing is 280x280; anything far larger is refused before decoding
MAX_FILE_SIZE = "5mb"
MODEL_WORK = "model-work"  # the one concurrency group every model endpoint shares


def model_workers() -> int:
    """How many model calls run at once, app-wide: one per GPU, else one per 4 CPU cores (at least
    one), since each call already uses every core through torch; ``GENLAB_APP_WORKERS`` overrides."""
    if os.environ.get("GENLAB_APP_WORKERS"):
        return max(1, int(os.environ["GENLAB_APP_WORKERS"]))
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count()
    return max(1, (os.cpu_count() or 1) // 4)


_model_lock = threading.Lock()


@functools.cache
def _model(model_id: str):
    """One shared instance per model, its weights loaded (once, even when two calls race)."""
    from .registry import get_model

    with _model_lock:
        model = get_model(model_id)
        if model.weights is not None:
            model.network  # noqa: B018 - load now, under the lock, not in two threads at once
        return model


# ----- errors: one sentence for the user, whatever went wrong -----------------------------------
def failure_message(model_id: str | None, exc: BaseException) -> str:
    """A plugin's unexpected exception as one sentence naming the model (and its plugin)."""
    detail = f"{type(exc).__name__}: {exc}".rstrip(": ")
    if not model_id:
        return f"the app failed: {detail}"
    try:
        from .registry import registry

        plugin = registry().plugin_of.get(model_id)
    except Exception:  # noqa: BLE001 - the message must not fail too
        plugin = None
    where = f" (plugin {plugin!r})" if plugin else ""
    return f"model {model_id!r}{where} failed: {detail}"


def _as_gradio_error(exc: BaseException, model_id) -> gr.Error:
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, GenlabError):
        return gr.Error(str(exc), print_exception=False)
    log.error("model %s raised an unexpected exception", model_id, exc_info=exc)
    return gr.Error(failure_message(model_id if isinstance(model_id, str) else None, exc), print_exception=False)


def user_errors(fn):
    """Run ``fn`` so that whatever it raises reaches the user as one sentence (``gr.Error``): a
    ``GenlabError`` as it is, anything else (a bug in someone's plugin) naming the model and the
    error. The first argument, when a string, is the model id."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - shown to the user, logged with its traceback
                raise _as_gradio_error(exc, args[0] if args else None) from None
        return stream

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise _as_gradio_error(exc, args[0] if args else None) from None
    return call


# ----- inputs that check what they are given before anything else runs -------------------------
def _describe_range(lo, hi, whole: bool) -> str:
    kind = "a whole number" if whole else "a number"
    fmt = lambda v: f"{v:g}" if isinstance(v, float) else str(v)  # noqa: E731
    if lo is not None and hi is not None:
        return f"{kind} from {fmt(lo)} to {fmt(hi)}"
    if lo is not None:
        return f"{kind} of at least {fmt(lo)}"
    if hi is not None:
        return f"{kind} of at most {fmt(hi)}"
    return f"a finite {kind[2:]}"


def check_number(label: str, value, lo=None, hi=None, whole: bool = False):
    """``value`` if it is a finite number within [lo, hi] (whole when asked), else ``gr.Error``
    naming the input and its valid range (API callers can send anything: None, text, NaN, 1e30)."""
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (lo is None or value >= lo) and (hi is None or value <= hi)
          and (not whole or float(value).is_integer()))
    if not ok:
        raise gr.Error(f"{label} must be {_describe_range(lo, hi, whole)}, got {value!r}", print_exception=False)
    return int(value) if whole else value

from gradio.events import Dependency

class NumberInput(gr.Number):
    """A ``gr.Number`` that answers a bad value (None, text, NaN, inf, out of range) with one sentence."""

    is_template = True  # rendered as a plain Number

    def preprocess(self, payload):
        return check_number(self.label or "number", payload, self.minimum, self.maximum, whole=self.precision == 0)
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


class SliderInput(gr.Slider):
    """A ``gr.Slider`` that answers a bad value with one sentence naming it and its range."""

    is_template = True

    def preprocess(self, payload):
        whole = float(self.step).is_integer() and float(self.minimum).is_integer()
        return check_number(self.label or "value", payload, self.minimum, self.maximum, whole=whole)
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


def check_image_size(file, label: str = "image") -> None:
    """Refuse an uploaded image whose header says it is too large, before it is decoded."""
    from io import BytesIO

    from PIL import Image

    if file is None:
        return
    source = BytesIO(bytes(file)) if isinstance(file, (bytes, bytearray, memoryview)) else getattr(file, "path", file)
    try:
        with Image.open(source) as header:  # reads the header only
            width, height = header.size
    except Exception as exc:  # noqa: BLE001 - whatever the upload is, it is not an image we can read
        raise gr.Error(f"the {label} could not be read as an image ({type(exc).__name__})", print_exception=False) from None
    if width * height > MAX_UPLOAD_PIXELS:
        side = int(MAX_UPLOAD_PIXELS ** 0.5)
        raise gr.Error(f"the {label} is {width}x{height} pixels; the largest accepted is {side}x{side}",
                       print_exception=False)


class DrawingInput(gr.Sketchpad):
    """A Sketchpad whose uploads are size-checked from their header before they are decoded."""

    is_template = True

    def get_block_name(self) -> str:
        return "imageeditor"  # the same front-end component as gr.Sketchpad

    def convert_and_format_image(self, file, flatten_on_white: bool = False):
        check_image_size(file, "drawing")
        return super().convert_and_format_image(file, flatten_on_white=flatten_on_white)
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


def model_event() -> dict:
    """Event settings of every endpoint that runs a model: one app-wide group, so extra users queue."""
    return {"concurrency_id": MODEL_WORK, "concurrency_limit": model_workers()}


class LabBlocks(gr.Blocks):
    """Blocks whose endpoints answer a call with too few inputs by naming the missing ones."""

    def validate_inputs(self, block_fn, inputs):
        wanted = list(block_fn.inputs)
        if len(inputs) < len(wanted):
            missing = [getattr(b, "label", None) or type(b).__name__.lower() for b in wanted[len(inputs):]]
            name = f"/{block_fn.api_name}" if block_fn.api_name else "this action"
            raise gr.Error(f"{name} takes {len(wanted)} inputs and got {len(inputs)}: missing "
                           f"{', '.join(map(str, missing))}", print_exception=False)
        super().validate_inputs(block_fn, inputs)


def api_name(action: str, model_id: str) -> str:
    """The endpoint of an action for a model, e.g. sample_vae, reverse_ddpm."""
    return f"{action}_{re.sub(r'[^0-9A-Za-z_]', '_', model_id)}"


# ----- work functions (plain Python, called by the UI and by tests) ----------------------------
@user_errors
def sample_images(model_id: str, seed, count, options: dict):
    """Gallery items and a caption for ``count`` seeded samples; user mistakes become ``gr.Error``."""
    from .images import to_pil_list

    seed = check_number("seed", seed, 0, SEED_MAX, whole=True)
    count = check_number("count", count, 1, MAX_COUNT, whole=True)
    model = _model(model_id)
    model.require(Capability.SAMPLE)
    result = model.sample(count, seed=seed, options=model.parse_options(options))
    images = to_pil_list(result.images, scale=4)
    caption = (
        f"**{model_id}**: {count} samples, seed {int(seed)}, {result.nfe} network evaluation"
        f"{'s' if result.nfe != 1 else ''} per image, {result.seconds * 1000:.0f} ms"
    ) + "".join(f"\n- {note}" for note in result.info.get("notes", []))
    return [(img, f"seed {int(seed)} #{i}") for i, img in enumerate(images)], caption


@functools.lru_cache(maxsize=4)
def _heldout_split(dataset: str):
    from .datasets import load_dataset, to_unit

    return to_unit(load_dataset(dataset, "heldout").images)


def _heldout(model):
    """Held-out real images of the dataset the model was trained on (mnist-5k when unknown)."""
    return _heldout_split(model.metadata().get("dataset") or "mnist-5k")


def _show(image, scale: int = 8):
    from .images import to_pil_list

    return to_pil_list(image.unsqueeze(0) if image.dim() == 3 else image[:1], scale=scale)[0]


def _curves_figure(model, t: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    curves = model.schedule_curves()
    fig, ax = plt.subplots(figsize=(4.2, 3.0), dpi=100)
    ax.plot(curves["t"], curves["alpha_bar"], label="ᾱ_t (signal kept)")
    ax.set_xlabel("t")
    ax.set_ylim(0, 1.02)
    ax2 = ax.twinx()
    ax2.plot(curves["t"], 10 * np.log10(np.array(curves["snr"])), color="tab:orange", label="SNR (dB)")
    ax2.set_ylabel("SNR (dB)")
    ax.axvline(t, color="gray", linestyle="--")
    fig.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


@user_errors
def forward_view(model_id: str, index, t, seed):
    """A held-out digit, its noised version at step t, the numbers, and the schedule curves."""
    import math

    seed = check_number("noise seed", seed, 0, SEED_MAX, whole=True)
    model = _model(model_id)
    model.require(Capability.FORWARD_PROCESS)
    digits = _heldout(model)
    index = check_number("held-out digit", index, 0, len(digits) - 1, whole=True)
    T = model.num_train_timesteps
    t = check_number("t", t, 1, T, whole=True)
    x0 = digits[index : index + 1]
    xt = model.noise(x0, t, seed=seed)
    ab = model.schedule_curves()["alpha_bar"][t - 1]
    snr = ab / (1 - ab)
    text = (f"t = {t} of {T}: ᾱ_t = {ab:.4f}, so x_t keeps {math.sqrt(ab):.3f} of the image and "
            f"{math.sqrt(1 - ab):.3f} noise; SNR = {snr:.4g} ({10 * math.log10(snr):.1f} dB)")
    return _show(x0), _show(xt), text, _curves_figure(model, t)


@user_errors
def reverse_stream(model_id: str, seed, frames, options: dict):
    """Yield (x_t, x̂_0, trajectory so far, caption) while the reverse process runs, noise to digit."""
    import time

    import torch

    from .images import grid

    seed = check_number("seed", seed, 0, SEED_MAX, whole=True)
    frames = check_number("frames to show", frames, 2, 50, whole=True)
    model = _model(model_id)
    model.require(Capability.TRAJECTORY)
    opts = model.parse_options(options)
    steps = getattr(opts, "steps", 1)
    every = max(1, steps // max(1, frames - 1))
    start = time.perf_counter()
    seen_xt, seen_x0 = [], []
    for frame in model.trajectory(1, seed=seed, options=opts, record_every=every):
        elapsed = time.perf_counter() - start
        seen_xt.append(frame["x_t"][:1])
        seen_x0.append(frame["x0_hat"][:1])
        strip = grid(torch.cat(seen_xt + seen_x0), nrow=len(seen_xt), scale=3)
        done = frame["step"] == frame["steps"]
        caption = (f"{'done' if done else 'step'} {frame['step']}/{frame['steps']} (t = {frame['t']}), "
                   f"{frame['step']} network evaluations, {elapsed:.2f} s"
                   + (f" — sampler {opts.sampler}" if hasattr(opts, "sampler") else "")
                   + "; trajectory: x_t on top, x̂_0 below")
        yield _show(frame["x_t"]), _show(frame["x0_hat"]), strip, caption


def drawing_to_digit(sketch):
    """A Sketchpad value (black strokes) as an MNIST-like float image [1, 1, 28, 28]: white on black."""
    import numpy as np
    import torch
    from PIL import Image

    if sketch is None:
        raise GenlabError("draw a digit first")
    layer = sketch.get("composite") if isinstance(sketch, dict) else sketch
    if layer is None:
        raise GenlabError("draw a digit first")
    array = np.asarray(layer).astype(np.float32)
    if array.ndim == 3 and array.shape[-1] == 4:
        ink = array[..., 3] / 255 * (1 - array[..., :3].mean(-1) / 255)
    else:
        gray = array.mean(-1) if array.ndim == 3 else array
        ink = 1 - gray / 255
    if ink.max() <= 0.05:
        raise GenlabError("the canvas is empty: draw a digit first")
    small = Image.fromarray((ink * 255).astype(np.uint8)).resize((28, 28), Image.LANCZOS)
    return torch.from_numpy(np.asarray(small, dtype=np.float32) / 255).view(1, 1, 28, 28)


@user_errors
def clean_up_drawing(model_id: str, sketch, strength, seed):
    strength = check_number("strength", strength, 0.05, 1.0)
    seed = check_number("seed", seed, 0, SEED_MAX, whole=True)
    model = _model(model_id)
    model.require(Capability.IMAGE_TO_IMAGE)
    digit = drawing_to_digit(sketch)
    cleaned = model.edit(digit, strength=strength, seed=seed)
    return _show(digit), _show(cleaned)


@user_errors
def latent_view(model_id: str, index_a, index_b, steps, method):
    """Two held-out digits, their reconstructions, and the model's own interpolation between them."""
    import time

    import torch

    from .images import grid

    steps = check_number("points", steps, 2, 16, whole=True)
    if method not in ("slerp", "lerp"):
        raise GenlabError(f"path must be slerp or lerp, got {method!r}")
    model = _model(model_id)
    model.require(Capability.INTERPOLATE)
    digits = _heldout(model)
    a = check_number("first digit", index_a, 0, len(digits) - 1, whole=True)
    b = check_number("second digit", index_b, 0, len(digits) - 1, whole=True)
    pair = digits[[a, b]]
    start = time.perf_counter()
    path = model.interpolate(pair[0], pair[1], steps=int(steps), method=method)
    seconds = time.perf_counter() - start
    recon = model.reconstruct(pair) if model.can(Capability.RECONSTRUCT) else None
    strip = grid(torch.cat([pair[:1], path, pair[1:]]), nrow=int(steps) + 2, scale=4)
    pairs = None
    caption = f"{method} between digits {a} and {b}, {int(steps)} points, {seconds:.2f} s"
    if recon is not None:
        pairs = grid(torch.cat([pair, recon]), nrow=2, scale=4)
        mse = float((recon - pair).pow(2).mean())
        caption += f"; reconstruction MSE {mse:.4f} (top: real, bottom: reconstructed)"
    return strip, pairs, caption


def _overlay(image, heat):
    """A grayscale image [H, W] in [0, 1] with a heatmap [H, W] in [0, 1] blended on top, as PIL."""
    import numpy as np
    from matplotlib import colormaps
    from PIL import Image

    base = np.repeat(image[..., None], 3, axis=2)
    colored = colormaps["inferno"](heat)[..., :3]
    mixed = (0.45 * base + 0.55 * colored).clip(0, 1)
    pil = Image.fromarray((mixed * 255).astype(np.uint8))
    return pil.resize((pil.width * 8, pil.height * 8), Image.NEAREST)


@user_errors
def prompt_attention(model_id: str, prompt, guidance, steps, seed):
    """A sample for the prompt and, per prompt token, where its cross-attention fell on the image."""
    import time

    guidance = check_number("guidance", guidance, 0, 20)
    steps = check_number("steps", steps, 1, 1000, whole=True)
    seed = check_number("seed", seed, 0, SEED_MAX, whole=True)
    model = _model(model_id)
    model.require(Capability.ATTENTION)
    start = time.perf_counter()
    out = model.attention_maps(seed=seed, options={"prompt": prompt, "guidance": guidance, "steps": steps})
    seconds = time.perf_counter() - start
    image = out["image"][0].cpu().numpy()
    maps = out["maps"].cpu().numpy()
    items = []
    for token, heat in zip(out["tokens"], maps):
        share = float(heat.mean())  # the token's average share of attention over the image
        # does the map pick out the strokes? AUC 0.5: no; 1: every stroke pixel above the background
        where = stroke_localization(heat, image)
        spread = float(heat.max() - heat.min())
        scaled = (heat - heat.min()) / max(spread, 1e-8)  # stretched to show where, not how much
        items.append((_overlay(image, scaled), f"{token}: {share:.0%} of attention, stroke AUC {where['auc']:.2f}, "
                                               f"{where['contrast']:.2f}x on strokes"))
    notes = "".join(f"\n- {n}" for n in out["notes"])
    caption = f"{out['nfe']} network evaluations, {seconds:.2f} s{notes}"
    return _show(out["image"]), items, caption


@user_errors
def autoencoder_view(model_id: str, index):
    """A held-out digit, its latent (channels as images, or a vector as bars) and its reconstruction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from .images import grid

    model = _model(model_id)
    model.require(Capability.ENCODE)
    model.require(Capability.RECONSTRUCT)
    digits = _heldout(model)
    index = check_number("held-out digit", index, 0, len(digits) - 1, whole=True)
    x = digits[index : index + 1]
    latent = model.encode(x)
    latent = latent[0] if isinstance(latent, tuple) else latent
    recon = model.reconstruct(x)
    z = latent[0].detach().float()
    fig, ax = plt.subplots(figsize=(5, 2.6), dpi=100)
    if z.dim() == 3:  # spatial latent: one image per channel
        channels = (z - z.amin()) / (z.amax() - z.amin()).clamp_min(1e-8)
        ax.imshow(grid(channels.unsqueeze(1), nrow=z.shape[0], scale=1), cmap="gray")
        ax.set_title(f"latent {tuple(z.shape)}: {z.numel()} numbers for {x[0].numel()} pixels")
        ax.axis("off")
    else:
        ax.bar(range(len(z)), z.numpy())
        ax.set_title(f"latent vector: {z.numel()} numbers for {x[0].numel()} pixels")
        ax.set_xlabel("dimension")
    fig.tight_layout()
    plt.close(fig)
    mse = float((recon - x).pow(2).mean())
    psnr = 10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-10)))
    text = f"reconstruction MSE {mse:.4f}, PSNR {float(psnr):.1f} dB; latent size {z.numel()} vs {x[0].numel()} pixels"
    return _show(x), fig, _show(recon), text


def report_folders() -> dict[str, str]:
    """Reports on disk, newest first: committed ones under evals/reports, runs under evals/runs. A
    folder whose report cannot even be looked at (a dangling link) is still listed, so that choosing
    it says what is wrong; nothing on disk stops the app from starting."""
    from .evals import evals_dir

    root = evals_dir()
    found = []
    for sub in ("reports", "runs"):
        try:
            folders = [p for p in (root / sub).iterdir() if (p / "report.html").exists() or (p / "report.html").is_symlink()]
        except OSError:
            continue
        found += folders

    def modified(folder):
        try:
            return (folder / "report.html").stat().st_mtime
        except OSError:
            return 0.0

    found.sort(key=modified, reverse=True)
    return {f"{p.parent.name}/{p.name}": str(p) for p in found}


# What the Report tab keeps of a report's HTML: text, tables, headings, links and inlined images;
# never scripts, styles or event handlers (a suite label or a prompt can hold anything).
_REPORT_TAGS = {"h1", "h2", "h3", "h4", "p", "a", "img", "table", "thead", "tbody", "tr", "th", "td", "ul", "ol",
                "li", "code", "pre", "em", "strong", "blockquote", "br", "hr", "sup", "sub", "span", "div"}


def sanitize_report_html(html: str) -> str:
    """Report HTML cut down to an allow-list (nh3): inlined data: images stay, scripts go."""
    import nh3

    return nh3.clean(html, tags=_REPORT_TAGS, url_schemes={"http", "https", "data"},
                     attributes={"a": {"href"}, "img": {"src", "alt", "width", "height"},
                                 "td": {"colspan", "rowspan"}, "th": {"colspan", "rowspan"}},
                     link_rel="noopener noreferrer")


def _error_box(text: str) -> str:
    from html import escape

    return f'<p class="genlab-report-error"><strong>{escape(text)}</strong></p>'


def show_report(choice: str | None):
    """The chosen report's HTML page (images inlined), sanitized; an unreadable report shows why."""
    from pathlib import Path

    folders = report_folders()
    if not choice:
        return "No report yet: run `genlab eval evals/bundled.toml`." if not folders else ""
    if choice not in folders:
        raise gr.Error(f"no report {choice!r}; reports on disk: {', '.join(folders) or 'none'}", print_exception=False)
    path = Path(folders[choice]) / "report.html"
    try:
        page = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return _error_box(f"report {choice} could not be shown: {path} is not UTF-8 text")
    except OSError as exc:
        return _error_box(f"report {choice} could not be shown: {exc.strerror or type(exc).__name__} ({path})")
    body = page.split("<body>", 1)[-1].rsplit("</body>", 1)[0]
    return sanitize_report_html(body)


def plugin_rows():
    """(loaded rows, failed rows) for the Plugins tab."""
    from .registry import get_models, plugin_failures, registry

    reg = registry()
    loaded = [
        [reg.plugin_of.get(mid, "?"), mid, cls.family, ", ".join(sorted(c.value for c in cls.capabilities)),
         cls.description]
        for mid, cls in get_models().items()
    ]
    failed = [[f.name, f.reason] for f in plugin_failures()]
    return loaded, failed


def plugins_api() -> dict:
    """Loaded and failed plugins, for API callers."""
    loaded, failed = plugin_rows()
    return {"loaded": loaded, "failed": failed}


# ----- widgets from an options schema ----------------------------------------------------------
def _bounds(field):
    lo = hi = None
    for meta in field.metadata:
        lo = getattr(meta, "ge", getattr(meta, "gt", lo))
        hi = getattr(meta, "le", getattr(meta, "lt", hi))
    return lo, hi


def option_widget(name: str, field):
    """One Gradio input for one pydantic field: slider for bounded numbers, dropdown for choices."""
    label = name.replace("_", " ")
    info = field.description
    annotation = field.annotation
    default = field.default
    if typing.get_origin(annotation) is typing.Literal:
        return gr.Dropdown(list(typing.get_args(annotation)), value=default, label=label, info=info)
    if annotation is bool:
        return gr.Checkbox(value=default, label=label, info=info)
    if annotation in (int, float):
        lo, hi = _bounds(field)
        if lo is not None and hi is not None:
            step = 1 if annotation is int else (hi - lo) / 100
            return SliderInput(lo, hi, value=default, step=step, label=label, info=info)
        return NumberInput(value=default, label=label, info=info, precision=0 if annotation is int else None)
    return gr.Textbox(value=None if default is None else str(default), label=label, info=info)


# ----- the app ---------------------------------------------------------------------------------
def named_handler(handler, model_id: str, input_names: list[str], option_names: list[str]):
    """``handler(model_id, *inputs, options_dict)`` as a function whose signature names every input
    (``seed, count, temperature, output``), so that the API lists real parameter names."""
    n = len(input_names)
    names = [*input_names, *option_names]
    taken = set(input_names)
    # an option called like a fixed input (a plugin's own "seed") gets a prefix in the API only
    api_names = [*input_names, *(f"option_{o}" if o in taken else o for o in option_names)]

    def split(values):
        return values[:n], dict(zip(option_names, values[n:]))

    if inspect.isgeneratorfunction(getattr(handler, "__wrapped__", handler)) or inspect.isgeneratorfunction(handler):
        def run(*values):  # Gradio streams only from generator functions
            fixed, options = split(values)
            yield from handler(model_id, *fixed, options)
    else:
        def run(*values):
            fixed, options = split(values)
            return handler(model_id, *fixed, options)
    run.__signature__ = inspect.Signature(
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in api_names])
    run.__name__ = api_name(handler.__name__, model_id)
    assert len(names) == len(api_names)
    return run


def _per_model_controls(models: dict, key: str, label: str, handler, inputs: list, outputs: list, model_choice,
                        input_names: list[str]):
    """One group of option widgets and a button per model, shown for the model picked in
    ``model_choice``; the button calls ``handler(model_id, *inputs, options_dict)`` through the queue
    with the API name ``{key}_{model}`` and named parameters."""
    groups = []
    for model_id, cls in models.items():
        with gr.Group(visible=model_id == model_choice.value) as group:
            fields = cls.Options.model_fields
            widgets = [option_widget(name, field) for name, field in fields.items()]
            button = gr.Button(f"{label} {model_id}", variant="primary", elem_id=f"{key}-button-{model_id}")
        groups.append(group)
        run = named_handler(handler, model_id, input_names, list(fields))
        button.click(run, [*inputs, *widgets], outputs, api_name=api_name(key, model_id), **model_event())

    def show(model_id):
        return [gr.update(visible=mid == model_id) for mid in models]

    model_choice.change(show, model_choice, groups, api_visibility="private")


def build_app() -> gr.Blocks:
    from .registry import get_models

    samplers = get_models(Capability.SAMPLE)
    with LabBlocks(title="genlab", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# genlab\nSee and measure how generative image models differ. "
            "Every model here comes from a plugin; tabs follow what each model can do."
        )
        with gr.Tab("Sample", elem_id="tab-sample"):
            if not samplers:
                gr.Markdown("No model that can sample is installed: see the Plugins tab.")
            else:
                first = next(iter(samplers))
                with gr.Row():
                    with gr.Column(scale=1):
                        model_choice = gr.Dropdown(list(samplers), value=first, label="model",
                                                   elem_id="sample-model")
                        description = gr.Markdown(samplers[first].description)
                        with gr.Row():
                            seed = NumberInput(value=0, precision=0, minimum=0, maximum=SEED_MAX, label="seed", elem_id="sample-seed")
                            count = SliderInput(1, MAX_COUNT, value=16, step=1, label="count",
                                              elem_id="sample-count")
                        model_choice.change(lambda m: samplers[m].description, model_choice, description,
                                            api_visibility="private")
                        controls = gr.Column()
                    with gr.Column(scale=2):
                        gallery = gr.Gallery(label="samples", columns=8, height="auto", format="png",
                                             elem_id="sample-gallery")
                        caption = gr.Markdown(elem_id="sample-caption")
                with controls:
                    _per_model_controls(samplers, "sample", "Sample", sample_images, [seed, count],
                                        [gallery, caption], model_choice, ["seed", "count"])

        # one tab per capability, shown when some installed model declares it
        autoencoders = {m: c for m, c in get_models(Capability.ENCODE).items() if c.can(Capability.RECONSTRUCT)}
        capability_tabs = [
            ("Diffusion process", "tab-diffusion", get_models(Capability.TRAJECTORY), _diffusion_tab),
            ("Prompt & attention", "tab-prompt", get_models(Capability.ATTENTION), _prompt_tab),
            ("Autoencoders", "tab-autoencoders", autoencoders, _autoencoder_tab),
            ("Latent space", "tab-latent", get_models(Capability.INTERPOLATE), _latent_tab),
        ]
        for title, elem_id, models, build in capability_tabs:
            if models:
                with gr.Tab(title, elem_id=elem_id):
                    build(models)

        with gr.Tab("Report", elem_id="tab-report"):
            reports = report_folders()
            with gr.Row():
                report_choice = gr.Dropdown(list(reports), value=next(iter(reports), None), label="report",
                                            elem_id="report-choice")
                refresh = gr.Button("Refresh list")
            report_view = gr.HTML(show_report(next(iter(reports), None)), elem_id="report-view")
            report_choice.change(show_report, report_choice, report_view, api_name="report")
            refresh.click(lambda: gr.update(choices=list(report_folders())), None, report_choice,
                          api_visibility="private")

        with gr.Tab("Plugins", elem_id="tab-plugins"):
            loaded, failed = plugin_rows()
            gr.Markdown("Models registered by installed plugins (entry-point group `genlab`).")
            gr.Dataframe(loaded, headers=["plugin", "model", "family", "capabilities", "description"],
                         interactive=False, wrap=True, elem_id="plugins-loaded")
            if failed:
                gr.Markdown("Plugins that failed to load; every other plugin keeps working.")
                gr.Dataframe(failed, headers=["plugin", "reason"], interactive=False, wrap=True,
                             elem_id="plugins-failed")
            else:
                gr.Markdown("No plugin failed to load.")
            gr.api(plugins_api, api_name="plugins")
    return demo


def _prompt_tab(models: dict):
    gr.Markdown(
        "Type a prompt (a digit, optionally *thick*/*thin* and *upright*/*slanted*). The UNet reads it "
        "through cross-attention; each heatmap shows where one token's attention fell on the image, "
        "averaged over heads, layers and denoising steps (at every pixel the tokens' shares sum to 1), "
        "stretched to its own range. Stroke AUC is how often a stroke pixel gets more of the token's "
        "attention than a background pixel (0.5: no preference). The start token [CLS] is where "
        "positions the prompt says nothing about put their attention. "
        "Guidance > 1 pushes the sample toward the prompt (classifier-free guidance)."
    )
    with gr.Row():
        with gr.Column(scale=1):
            model_choice = gr.Dropdown(list(models), value=next(iter(models)), label="model", elem_id="prompt-model")
            prompt = gr.Textbox(value="a thick seven", label="prompt", elem_id="prompt-text")
            guidance = SliderInput(0, 10, value=3.0, step=0.5, label="guidance scale")
            steps = SliderInput(2, 100, value=20, step=1, label="steps")
            seed = NumberInput(value=0, precision=0, minimum=0, maximum=SEED_MAX, label="seed")
            button = gr.Button("Generate", variant="primary", elem_id="prompt-button")
        with gr.Column(scale=2):
            with gr.Row():
                image = gr.Image(label="sample", image_mode="L", height=224, format="png", elem_id="prompt-image")
                caption = gr.Markdown(elem_id="prompt-caption")
            heatmaps = gr.Gallery(label="cross-attention per token", columns=6, height="auto", format="png",
                                  elem_id="prompt-attention")
    button.click(prompt_attention, [model_choice, prompt, guidance, steps, seed], [image, heatmaps, caption],
                 api_name="prompt_attention", **model_event())


def _autoencoder_tab(models: dict):
    gr.Markdown(
        "What each model keeps of a digit: its latent and the image decoded back from it. A VAE keeps "
        "a short vector; the latent diffusion model's autoencoder a small 4-channel image; a diffusion "
        "model's DDIM latent is as large as the image itself."
    )
    with gr.Row():
        model_choice = gr.Dropdown(list(models), value=next(iter(models)), label="model", elem_id="ae-model")
        index = SliderInput(0, 499, value=0, step=1, label="held-out digit")
        button = gr.Button("Encode and decode", variant="primary", elem_id="ae-button")
    with gr.Row():
        original = gr.Image(label="image", image_mode="L", height=224, format="png")
        latent = gr.Plot(label="latent")
        recon = gr.Image(label="reconstruction", image_mode="L", height=224, format="png")
    text = gr.Markdown(elem_id="ae-text")
    button.click(autoencoder_view, [model_choice, index], [original, latent, recon, text], api_name="autoencode", **model_event())


def _latent_tab(models: dict):
    gr.Markdown(
        "Each family walks between two real digits in its own way: a VAE encodes both and moves in "
        "its compressed latent; a diffusion model inverts both to their noise with DDIM and moves "
        "there (the latent has the size of the image). Left and right of the strip are the real digits."
    )
    with gr.Row():
        model_choice = gr.Dropdown(list(models), value=next(iter(models)), label="model", elem_id="latent-model")
        index_a = SliderInput(0, 499, value=0, step=1, label="first digit")
        index_b = SliderInput(0, 499, value=1, step=1, label="second digit")
        steps = SliderInput(2, 16, value=8, step=1, label="points")
        method = gr.Radio(["slerp", "lerp"], value="slerp", label="path")
    strip = gr.Image(label="interpolation", format="png", elem_id="latent-strip")
    with gr.Row():
        pairs = gr.Image(label="reconstructions", format="png", elem_id="latent-recon")
        caption = gr.Markdown(elem_id="latent-caption")
    gr.Button("Interpolate", variant="primary", elem_id="latent-button").click(
        latent_view, [model_choice, index_a, index_b, steps, method], [strip, pairs, caption], api_name="interpolate", **model_event()
    )


def _diffusion_tab(models: dict):
    first = next(iter(models))
    gr.Markdown(
        "**Forward process**: noise a real digit in closed form, "
        "x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε, and watch the signal-to-noise ratio fall. "
        "**Reverse process**: start from pure noise and denoise step by step; beside x_t is the "
        "model's current guess of the clean image, x̂_0."
    )
    model_choice = gr.Dropdown(list(models), value=first, label="model", elem_id="diffusion-model")
    with gr.Row():
        with gr.Column():
            index = SliderInput(0, 499, value=0, step=1, label="held-out digit", elem_id="forward-index")
            t = SliderInput(1, 1000, value=250, step=1, label="t", elem_id="forward-t")
            noise_seed = NumberInput(value=0, precision=0, minimum=0, maximum=SEED_MAX, label="noise seed")
            forward_text = gr.Markdown(elem_id="forward-text")
        x0_view = gr.Image(label="x_0 (real digit)", image_mode="L", height=224, format="png")
        xt_view = gr.Image(label="x_t ~ q(x_t | x_0)", image_mode="L", height=224, format="png")
        curve = gr.Plot(label="ᾱ_t and SNR", elem_id="forward-curve")
    forward_inputs = [model_choice, index, t, noise_seed]
    forward_outputs = [x0_view, xt_view, forward_text, curve]
    for control in (index, t, noise_seed, model_choice):
        control.change(forward_view, forward_inputs, forward_outputs, api_visibility="private", **model_event())
    gr.Button("Noise it", elem_id="forward-button").click(forward_view, forward_inputs, forward_outputs,
                                                             api_name="forward_process", **model_event())

    gr.Markdown("### Reverse process")
    with gr.Row():
        with gr.Column(scale=1):
            with gr.Row():
                reverse_seed = NumberInput(value=0, precision=0, minimum=0, maximum=SEED_MAX, label="seed", elem_id="reverse-seed")
                frames = SliderInput(2, 50, value=20, step=1, label="frames to show")
            controls = gr.Column()
        with gr.Column(scale=2):
            with gr.Row():
                xt_stream = gr.Image(label="x_t", image_mode="L", height=224, format="png", elem_id="reverse-xt")
                x0_stream = gr.Image(label="x̂_0 (predicted clean image)", image_mode="L", height=224,
                                     format="png", elem_id="reverse-x0")
            reverse_text = gr.Markdown(elem_id="reverse-text")
    trajectory = gr.Image(label="trajectory", format="png", elem_id="reverse-trajectory")
    with controls:
        _per_model_controls(models, "reverse", "Denoise with", reverse_stream, [reverse_seed, frames],
                            [xt_stream, x0_stream, trajectory, reverse_text], model_choice, ["seed", "frames"])

    editors = {m: c for m, c in models.items() if c.can(Capability.IMAGE_TO_IMAGE)}
    if editors:
        gr.Markdown("### Clean up a drawing (SDEdit)\nDraw a digit, noise it to t = strength × T, "
                    "and let the model denoise it back onto the digits it knows.")
        with gr.Row():
            sketch = DrawingInput(label="draw a digit", canvas_size=(280, 280), type="numpy",
                                  image_mode="RGBA", elem_id="sketch")
            with gr.Column():
                strength = SliderInput(0.05, 1.0, value=0.5, step=0.05, label="strength")
                edit_seed = NumberInput(value=0, precision=0, minimum=0, maximum=SEED_MAX, label="seed")
                edit_button = gr.Button("Clean up", elem_id="edit-button")
            edit_in = gr.Image(label="your digit at 28x28", image_mode="L", height=224, format="png")
            edit_out = gr.Image(label="cleaned up", image_mode="L", height=224, format="png")
        edit_button.click(clean_up_drawing, [model_choice, sketch, strength, edit_seed], [edit_in, edit_out],
                          api_name="image_to_image", **model_event())


def launch(demo: gr.Blocks, *, host: str = "127.0.0.1", port: int | None = None, block: bool = False):
    """Serve ``demo`` through the queue; returns the local URL when not blocking."""
    demo.queue(default_concurrency_limit=None)  # model work is limited by its own group (model_event)
    _, url, _ = demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block,
                            max_file_size=MAX_FILE_SIZE,
                            share=False, quiet=not block)
    return url
class ChoiceInput(gr.Dropdown):
    """A ``gr.Dropdown`` that answers a value outside its choices with one sentence naming it."""

    is_template = True

    def preprocess(self, payload):
        if self.multiselect:
            return super().preprocess(payload)
        return check_choice(self.label or "choice", payload, _choice_values(self.choices))
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component

    
class RadioInput(gr.Radio):
    """A ``gr.Radio`` that answers a value outside its choices with one sentence naming it."""

    is_template = True

    def preprocess(self, payload):
        return check_choice(self.label or "choice", payload, _choice_values(self.choices))
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component

    
class DigitInput(gr.Dropdown):
    """A held-out digit picked by its label ("a 7 (#27)"); its value is the position in the model's
    held-out set. The labelled choices arrive with the warm-up (the dataset loads in the background,
    not while the page is built); any position of the set is accepted, others are named as wrong."""

    is_template = True

    MARK = "genlab-heldout-of-"  # an elem_class naming the model: it survives Gradio's per-session copies

    def preprocess(self, payload):
        model_id = next((c[len(self.MARK):] for c in self.elem_classes or [] if c.startswith(self.MARK)), None)
        count = len(_labels_for(model_id)) if model_id else 1
        return check_number(self.label or "held-out digit", payload, 0, count - 1, whole=True)
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component

    