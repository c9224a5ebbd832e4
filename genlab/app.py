"""The Gradio app. UI code only: the work is done by the models and plain functions elsewhere.

Tabs and widgets follow the registry: a model appears in the Sample tab because it declares the
``sample`` capability, and its option widgets are built from its pydantic ``Options`` schema.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
import os
import re
import threading
import typing
import warnings

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


class NumberInput(gr.Number):
    """A ``gr.Number`` that answers a bad value (None, text, NaN, inf, out of range) with one sentence."""

    is_template = True  # rendered as a plain Number

    def preprocess(self, payload):
        return check_number(self.label or "number", payload, self.minimum, self.maximum, whole=self.precision == 0)


class SliderInput(gr.Slider):
    """A ``gr.Slider`` that answers a bad value with one sentence naming it and its range."""

    is_template = True

    def preprocess(self, payload):
        whole = float(self.step).is_integer() and float(self.minimum).is_integer()
        return check_number(self.label or "value", payload, self.minimum, self.maximum, whole=whole)


def check_image_size(file, label: str = "image") -> None:
    """Refuse an uploaded image whose header says it is too large, before it is decoded."""
    from io import BytesIO

    from PIL import Image

    if file is None:
        return
    source = BytesIO(bytes(file)) if isinstance(file, (bytes, bytearray, memoryview)) else getattr(file, "path", file)
    try:
        with warnings.catch_warnings(), Image.open(source) as header:  # reads the header only
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we decide below
            width, height = header.size
    except Exception as exc:  # noqa: BLE001 - whatever the upload is, it is not an image we can read
        raise gr.Error(f"the {label} could not be read as an image ({type(exc).__name__})", print_exception=False) from None
    if width * height > MAX_UPLOAD_PIXELS:
        side = int(MAX_UPLOAD_PIXELS ** 0.5)
        raise gr.Error(f"the {label} is {width}x{height} pixels; the largest accepted is {side}x{side}",
                       print_exception=False)


def _choice_values(choices) -> list:
    return [c[1] if isinstance(c, (tuple, list)) else c for c in choices or []]


def check_choice(label: str, value, values: list):
    """``value`` if it is one of ``values``, else one sentence naming the input and the choices."""
    if isinstance(value, (list, dict)) or value not in values:
        if values and all(isinstance(v, int) for v in values) and values == list(range(len(values))):
            raise gr.Error(f"{label} must be a whole number from 0 to {len(values) - 1}, got {value!r}",
                           print_exception=False)
        shown = ", ".join(map(str, values[:12])) + (", ..." if len(values) > 12 else "")
        raise gr.Error(f"{label} must be one of {shown}, got {value!r}", print_exception=False)
    return value


class ChoiceInput(gr.Dropdown):
    """A ``gr.Dropdown`` that answers a value outside its choices with one sentence naming it."""

    is_template = True

    def preprocess(self, payload):
        if self.multiselect:
            return super().preprocess(payload)
        return check_choice(self.label or "choice", payload, _choice_values(self.choices))


class RadioInput(gr.Radio):
    """A ``gr.Radio`` that answers a value outside its choices with one sentence naming it."""

    is_template = True

    def preprocess(self, payload):
        return check_choice(self.label or "choice", payload, _choice_values(self.choices))


class DrawingInput(gr.Sketchpad):
    """A Sketchpad whose uploads are size-checked from their header before they are decoded."""

    is_template = True

    def get_block_name(self) -> str:
        return "imageeditor"  # the same front-end component as gr.Sketchpad

    def convert_and_format_image(self, file, flatten_on_white: bool = False):
        check_image_size(file, "drawing")
        return super().convert_and_format_image(file, flatten_on_white=flatten_on_white)


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
def plural(n: int, word: str) -> str:
    """"1 sample", "2 samples"."""
    return f"{n} {word}{'' if n == 1 else 's'}"


@contextlib.contextmanager
def network_progress(model, progress, total: int | None, label: str):
    """Report every call of the model's denoising network to ``progress`` (a ``gr.Progress``), so a
    long call shows its steps: ``label: step 5/20``. Models without such a network show nothing."""
    import torch

    handles = []
    if progress is not None and isinstance(getattr(model, "_network", None), torch.nn.Module):
        outer = [m for m in model._network.modules() if "unet" in type(m).__name__.lower()]
        outer = [m for m in outer if not any(m is not o and any(m is c for c in o.modules()) for o in outer)]
        calls = [0]

        def step(*_):
            calls[0] += 1
            shown = min(calls[0], total) if total else calls[0]
            try:
                progress((shown, total), desc=f"{label}: step {shown}" + (f"/{total}" if total else ""),
                         unit="steps")
            except Exception:  # noqa: BLE001 - progress is a courtesy, never a failure
                pass

        handles = [m.register_forward_hook(step) for m in outer]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _steps_of(options) -> int | None:
    steps = getattr(options, "steps", None)
    return steps if isinstance(steps, int) else None


def _gallery(images) -> list:
    """Gallery items without captions: labels stay off the digits."""
    from .images import to_pil_list

    return to_pil_list(images, scale=4)


@user_errors
def sample_images(model_id: str, seed, count, options: dict, progress=None):
    """Gallery items and a caption for ``count`` seeded samples; user mistakes become ``gr.Error``."""
    seed = check_number("seed", seed, 0, SEED_MAX, whole=True)
    count = check_number("count", count, 1, MAX_COUNT, whole=True)
    model = _model(model_id)
    model.require(Capability.SAMPLE)
    opts = model.parse_options(options)
    with network_progress(model, progress, _steps_of(opts), model_id):
        result = model.sample(count, seed=seed, options=opts)
    caption = (
        f"**{model_id}**: {plural(count, 'sample')}, seed {seed}, {plural(result.nfe, 'network evaluation')} "
        f"per image, {result.seconds * 1000:.0f} ms"
    ) + "".join(f"\n- {note}" for note in result.info.get("notes", []))
    return _gallery(result.images), caption


@functools.lru_cache(maxsize=4)
def _heldout_split(dataset: str):
    from .datasets import load_dataset, to_unit

    data = load_dataset(dataset, "heldout")
    return to_unit(data.images), data.labels.tolist()


def _dataset_of(model) -> str:
    return model.metadata().get("dataset") or "mnist-5k"


def _heldout(model):
    """Held-out real images of the dataset the model was trained on (mnist-5k when unknown)."""
    return _heldout_split(_dataset_of(model))[0]


def _labels_for(model_id: str) -> list[int]:
    """Labels of the held-out digits of a model's dataset, without loading its network."""
    from .registry import get_model

    try:
        dataset = _dataset_of(get_model(model_id))
    except Exception:  # noqa: BLE001 - unreadable metadata: the default dataset
        dataset = "mnist-5k"
    return _heldout_split(dataset)[1]


def heldout_choices(model_id: str) -> list[tuple[str, int]]:
    """Dropdown choices for a held-out digit: its real label and position, e.g. ("a 7 (#12)", 12)."""
    labels = _labels_for(model_id)
    return [(f"a {label} (#{i})" if label >= 0 else f"#{i}", i) for i, label in enumerate(labels)]


def _first_of_each_digit(model_id: str) -> list[int]:
    """Positions of the first held-out 0, 1, ... 9: defaults that show what the labels mean."""
    labels = _labels_for(model_id)
    return [labels.index(d) for d in range(10) if d in labels]


def _show(image, scale: int = 8):
    from .images import to_pil_list

    return to_pil_list(image.unsqueeze(0) if image.dim() == 3 else image[:1], scale=scale)[0]


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), dpi=100)


def _close(fig):
    import matplotlib.pyplot as plt

    fig.tight_layout()
    plt.close(fig)
    return fig


def _curves_figure(model, t: int):
    import numpy as np

    curves = model.schedule_curves()
    fig, ax = _figure(4.2, 3.0)
    ax.plot(curves["t"], curves["alpha_bar"], label="ᾱ_t (signal's share)")
    if "signal" in curves:  # x_t = signal x_0 + noise eps, not variance-preserving
        ax.plot(curves["t"], curves["signal"], color="tab:green", linestyle=":", label="signal coefficient")
        ax.plot(curves["t"], curves["noise"], color="tab:red", linestyle=":", label="noise coefficient")
    ax.set_xlabel("t")
    ax.set_ylim(0, 1.02)
    ax2 = ax.twinx()
    snr = np.array(curves["snr"], dtype=float)
    ax2.plot(curves["t"], 10 * np.log10(np.where(snr > 0, snr, np.nan)), color="tab:orange", label="SNR (dB)")
    ax2.set_ylabel("SNR (dB)")
    ax.axvline(t, color="gray", linestyle="--")
    fig.legend(loc="upper right", fontsize=8)
    return _close(fig)


@user_errors
def forward_view(model_id: str, index, t, seed):
    """A held-out digit, its noised version at step t, the numbers, and the schedule curves."""
    seed = check_number("noise seed", seed, 0, SEED_MAX, whole=True)
    model = _model(model_id)
    model.require(Capability.FORWARD_PROCESS)
    digits = _heldout(model)
    index = check_number("held-out digit", index, 0, len(digits) - 1, whole=True)
    T = model.num_train_timesteps
    t = check_number("t", t, 1, T, whole=True)
    x0 = digits[index : index + 1]
    xt = model.noise(x0, t, seed=seed)
    curves = model.schedule_curves()
    ab, snr = curves["alpha_bar"][t - 1], curves["snr"][t - 1]
    # a schedule that is not variance-preserving (a flow's straight line) gives its own coefficients
    signal = curves["signal"][t - 1] if "signal" in curves else math.sqrt(ab)
    noise = curves["noise"][t - 1] if "noise" in curves else math.sqrt(1 - ab)
    text = (f"t = {t} of {T}: ᾱ_t = {ab:.4f}, so x_t keeps {signal:.3f} of the image and "
            f"{noise:.3f} noise; SNR = {snr:.4g} ({f'{10 * math.log10(snr):.1f}' if snr > 0 else '-∞'} dB)")
    return _show(x0), _show(xt), text, _curves_figure(model, t)


@user_errors
def reverse_stream(model_id: str, seed, frames, options: dict, progress=None):
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
        if progress is not None:
            progress((frame["step"], frame["steps"]), desc=f"{model_id}: step {frame['step']}/{frame['steps']}")
        caption = (f"{'done' if done else 'step'} {frame['step']}/{frame['steps']} (t = {frame['t']}), "
                   f"{plural(frame.get('nfe', frame['step']), 'network evaluation')}, {elapsed:.2f} s"
                   + (f" — sampler {opts.sampler}" if hasattr(opts, "sampler") else "")
                   + "; trajectory: x_t on top, x̂_0 below")
        yield _show(frame["x_t"]), _show(frame["x0_hat"]), strip, caption


def drawing_to_digit(sketch, size: int = 28):
    """A Sketchpad value (dark strokes on a light canvas) as an MNIST-like float image
    [1, 1, size, size], white on black, prepared as MNIST digits were: cropped to the strokes,
    scaled to fit a 20x20 box (of 28x28) keeping the aspect ratio, and centred by its centre of mass."""
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
    rows, cols = np.nonzero(ink > 0.05)
    crop = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    box = max(1, round(size * 20 / 28))
    scale = box / max(crop.shape)
    h, w = max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))
    small = np.asarray(Image.fromarray((crop * 255).astype(np.uint8)).resize((w, h), Image.LANCZOS),
                       dtype=np.float32) / 255
    ys, xs = np.mgrid[0:h, 0:w]
    mass = max(float(small.sum()), 1e-6)
    cy, cx = float((small * ys).sum()) / mass, float((small * xs).sum()) / mass
    top = int(np.clip(round((size - 1) / 2 - cy), 0, size - h))
    left = int(np.clip(round((size - 1) / 2 - cx), 0, size - w))
    digit = np.zeros((size, size), dtype=np.float32)
    digit[top : top + h, left : left + w] = small
    return torch.from_numpy(digit).view(1, 1, size, size)


@user_errors
def clean_up_drawing(model_id: str, sketch, strength, seed, progress=None):
    strength = check_number("strength", strength, 0.05, 1.0)
    seed = check_number("seed", seed, 0, SEED_MAX, whole=True)
    model = _model(model_id)
    model.require(Capability.IMAGE_TO_IMAGE)
    digit = drawing_to_digit(sketch, size=_heldout(model).shape[-1])
    with network_progress(model, progress, None, f"{model_id} SDEdit"):
        cleaned = model.edit(digit, strength=strength, seed=seed)
    return _show(digit), _show(cleaned)


def _interpolation(model_id: str, index_a, index_b, steps, method, progress=None):
    import time

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
    with network_progress(model, progress, None, f"{model_id} interpolation"):
        path = model.interpolate(pair[0], pair[1], steps=steps, method=method)
        seconds = time.perf_counter() - start
        recon = model.reconstruct(pair) if model.can(Capability.RECONSTRUCT) else None
    return model, pair, path, recon, seconds


def _mse_text(mse: float) -> str:
    return f"{mse:.3g}"


@user_errors
def latent_view(model_id: str, index_a, index_b, steps, method, progress=None):
    """Two held-out digits, their reconstructions, and the model's own interpolation between them."""
    import torch

    from .images import grid

    model, pair, path, recon, seconds = _interpolation(model_id, index_a, index_b, steps, method, progress)
    strip = grid(torch.cat([pair[:1], path, pair[1:]]), nrow=len(path) + 2, scale=4)
    labels = _heldout_split(_dataset_of(model))[1]
    a, b = int(index_a), int(index_b)
    pairs = None
    caption = (f"{method} from a {labels[a]} (#{a}) to a {labels[b]} (#{b}), {plural(len(path), 'point')}, "
               f"{seconds:.2f} s")
    if recon is not None:
        pairs = grid(torch.cat([pair, recon]), nrow=2, scale=4)
        mse = float((recon - pair).pow(2).mean())
        caption += f"; reconstruction MSE {_mse_text(mse)} (top: real, bottom: reconstructed)"
    return strip, pairs, caption


def _attention_figure(image, tokens, maps, rows_data):
    """One tile per token (its map over the sample, stretched to its own range) with the token, its
    share of attention and its stroke AUC written under it, and one colour scale for all tiles."""
    n = len(tokens)
    cols = min(n, 5)
    rows = math.ceil(n / cols)
    fig, axes = _figure(1.9 * cols + 0.9, 2.25 * rows)
    fig.clf()
    grid_spec = fig.add_gridspec(rows, cols + 1, width_ratios=[1] * cols + [0.08])
    shown = None
    for i, (token, heat, row) in enumerate(zip(tokens, maps, rows_data)):
        ax = fig.add_subplot(grid_spec[i // cols, i % cols])
        spread = float(heat.max() - heat.min())
        scaled = (heat - heat.min()) / max(spread, 1e-8)
        ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        shown = ax.imshow(scaled, cmap="inferno", vmin=0, vmax=1, alpha=0.6, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(token, fontsize=12, fontweight="bold")
        ax.set_xlabel(f"share {row[1]}\nstroke AUC {row[2]}", fontsize=10)
    cax = fig.add_subplot(grid_spec[:, cols])
    bar = fig.colorbar(shown, cax=cax)
    bar.set_ticks([0, 1])
    bar.set_ticklabels(["least", "most"], fontsize=9)
    return _close(fig)


@user_errors
def prompt_attention(model_id: str, prompt, guidance, steps, seed, progress=None):
    """A sample for the prompt and, per prompt word, where its cross-attention fell on the image:
    (sample, figure of heatmaps with a colour scale, table of token / share / stroke AUC, caption)."""
    import time

    guidance = check_number("guidance", guidance, 0, 20)
    steps = check_number("steps", steps, 1, 1000, whole=True)
    seed = check_number("seed", seed, 0, SEED_MAX, whole=True)
    model = _model(model_id)
    model.require(Capability.ATTENTION)
    start = time.perf_counter()
    with network_progress(model, progress, steps, model_id):
        out = model.attention_maps(seed=seed, options={"prompt": prompt, "guidance": guidance, "steps": steps})
    seconds = time.perf_counter() - start
    image = out["image"][0].cpu().numpy()
    maps = out["maps"].cpu().numpy()
    rows = []
    for token, heat in zip(out["tokens"], maps):
        share = float(heat.mean())  # the token's average share of attention over the image
        # does the map pick out the strokes? AUC 0.5: no; 1: every stroke pixel above the background
        where = stroke_localization(heat, image)
        rows.append([token, f"{share:.0%}", f"{where['auc']:.2f}", f"{where['contrast']:.2f}x"])
    words = [i for i, token in enumerate(out["tokens"]) if not (token.startswith("[") and token.endswith("]"))]
    notes = "".join(f"\n- {n}" for n in out["notes"])
    caption = f"{plural(out['nfe'], 'network evaluation')}, {seconds:.2f} s{notes}"
    if not words:  # only the start token: its map covers everything and says nothing
        caption += "\n- no word to show attention for: type a digit, e.g. 'a thick seven'"
        return _show(out["image"]), None, rows, caption
    figure = _attention_figure(image, out["tokens"], maps, rows)
    return _show(out["image"]), figure, rows, caption


@user_errors
def autoencoder_view(model_id: str, index):
    """A held-out digit, its latent (channels as images, or a vector as bars) and its reconstruction."""
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
    fig, ax = _figure(5, 2.6)
    if z.dim() == 3:  # spatial latent: one image per channel
        channels = (z - z.amin()) / (z.amax() - z.amin()).clamp_min(1e-8)
        ax.imshow(grid(channels.unsqueeze(1), nrow=z.shape[0], scale=1), cmap="gray")
        ax.set_title(f"latent {tuple(z.shape)}: {z.numel()} numbers for {x[0].numel()} pixels")
        ax.axis("off")
    else:
        ax.bar(range(len(z)), z.numpy())
        ax.set_title(f"latent vector: {z.numel()} numbers for {x[0].numel()} pixels")
        ax.set_xlabel("dimension")
    _close(fig)
    mse = float((recon - x).pow(2).mean())
    psnr = 10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-10)))
    text = (f"reconstruction MSE {_mse_text(mse)}, PSNR {float(psnr):.1f} dB; "
            f"latent size {z.numel()} vs {x[0].numel()} pixels")
    return _show(x), fig, _show(recon), text


# ----- what the reports on disk measured -------------------------------------------------------
def _report_roots():
    from .evals import evals_dir

    root = evals_dir()
    return [root / "reports", root / "runs"]


def measured_rows() -> list[dict]:
    """Every model row of every metrics.json on disk (evals/reports/*, evals/runs/*), newest report
    first; each row gains ``report`` (its folder, e.g. reports/bundled) and ``created``. Unreadable
    files, and rows measured with other weights than a model's default ones, are skipped."""
    import json

    found = []
    for root in _report_roots():
        try:
            files = list(root.glob("*/metrics.json"))
        except OSError:
            continue
        for path in files:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                rows = [r for r in data.get("models", []) if isinstance(r, dict) and r.get("id")]
            except (OSError, UnicodeDecodeError, ValueError, AttributeError):
                continue
            created = str(data.get("created_at") or "")
            for row in rows:
                if row.get("weights"):  # measured with other weights than the ones the app loads
                    continue
                found.append({**row, "report": f"{root.name}/{path.parent.name}", "created": created,
                              "feature_extractor": data.get("feature_extractor")})
    found.sort(key=lambda r: r["created"], reverse=True)
    return found


def _same_setting(model_cls, row_options: dict, options: dict) -> bool:
    """Whether a report row measured these options (parsed by the model, the prompt aside). The
    backend changes speed, not the samples beyond float rounding, so it is not compared; a precision
    is, when the request names one (``auto`` keeps float32 unless a model's FID showed bf16 harmless,
    and the eval measures float32)."""
    try:
        a = model_cls.parse_options({k: v for k, v in (row_options or {}).items()}).model_dump()
        b = model_cls.parse_options(options).model_dump()
    except GenlabError:
        return False
    if b.get("precision") == "auto":
        b.pop("precision")
        a.pop("precision", None)
    for key in ("prompt", "backend"):
        a.pop(key, None)
        b.pop(key, None)
    return a == b


def measured(model_id: str, options: dict, rows: list[dict] | None = None) -> dict | None:
    """The newest report row for this model at these options, or None."""
    from .registry import get_model_class

    model_cls = get_model_class(model_id)
    for row in rows if rows is not None else measured_rows():
        if row["id"] == model_id and row.get("fid") is not None and _same_setting(model_cls, row.get("options"), options):
            return row
    return None


def best_options(model_cls, rows: list[dict] | None = None) -> dict:
    """The model's best-FID setting in the newest report that measured it (the prompt left out), else
    its own defaults: what the app opens on."""
    rows = measured_rows() if rows is None else rows
    mine = [r for r in rows if r["id"] == model_cls.model_id and r.get("fid") is not None]
    if mine:
        newest = [r for r in mine if r["report"] == mine[0]["report"]]
        best = min(newest, key=lambda r: r["fid"])
        try:
            parsed = model_cls.parse_options(best.get("options")).model_dump()
            from .runtime import RUNTIME_OPTIONS

            for key in ("prompt", *RUNTIME_OPTIONS):  # how this machine runs best is its own choice
                parsed.pop(key, None)
            return parsed
        except GenlabError:
            pass
    return {}


def measured_text(model_id: str, options: dict, rows: list[dict] | None = None) -> str:
    row = measured(model_id, options, rows)
    if row is None:
        return f"no report on disk measured {model_id} at these settings"
    prompt = (row.get("options") or {}).get("prompt")
    extra = f", prompts {prompt}" if prompt else ""
    return (f"FID {row['fid']:.1f} · precision {row.get('precision', float('nan')):.2f} · recall "
            f"{row.get('recall', float('nan')):.2f} (report **{row['report']}**, {row.get('feature_extractor')} "
            f"features{extra}; see the Report tab)")


def setting_text(options: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in options.items() if k != "prompt") or "no options"


@user_errors
def compare_one(model_id: str, seed, count, prompt, options: dict, progress=None, rows=None):
    """One Compare column: the model's samples for the shared seed, count (and prompt), and a
    Markdown block with its NFE, wall time and the newest measured FID/precision/recall."""
    seed = check_number("seed", seed, 0, SEED_MAX, whole=True)
    count = check_number("count", count, 1, MAX_COUNT, whole=True)
    model = _model(model_id)
    model.require(Capability.SAMPLE)
    options = dict(options)
    if model.can(Capability.PROMPT):
        options["prompt"] = "" if prompt is None else str(prompt)
    opts = model.parse_options(options)
    with network_progress(model, progress, _steps_of(opts), model_id):
        result = model.sample(count, seed=seed, options=opts)
    notes = "".join(f"\n- {n}" for n in result.info.get("notes", []))
    text = (f"**{plural(result.nfe, 'network evaluation')}** per image · **{result.seconds:.2f} s** for "
            f"{plural(count, 'sample')}\n\n{setting_text(opts.model_dump())}\n\n"
            f"{measured_text(model_id, opts.model_dump(), rows)}{notes}")
    return _gallery(result.images), text


def compare_interpolations(models: list[str], index_a, index_b, steps, progress=None):
    """Each interpolating model's own path between the same two held-out digits: (strip, caption) per model."""
    import torch

    from .images import grid

    out = []
    for model_id in models:
        try:
            model, pair, path, _, seconds = _interpolation(model_id, index_a, index_b, steps, "slerp", progress)
        except Exception as exc:  # noqa: BLE001 - one model's failure is shown in its row
            out += [None, str(_as_gradio_error(exc, model_id).message)]
            continue
        strip = grid(torch.cat([pair[:1], path, pair[1:]]), nrow=len(path) + 2, scale=3)
        how = "noises found by inverting its sampler" if model.can(Capability.TRAJECTORY) else "its latent"
        out += [strip, f"**{model_id}**: slerp between {how}, {plural(len(path), 'point')}, {seconds:.2f} s"]
    return out


# ----- the Report tab -------------------------------------------------------------------------
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
    return _with_contents(sanitize_report_html(body))


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


def option_widget(name: str, field, value=None, **extra):
    """One Gradio input for one pydantic field: slider for bounded numbers, dropdown for choices;
    ``value`` overrides the field's default (the app opens on each model's best measured setting)."""
    label = name.replace("_", " ")
    info = field.description
    annotation = field.annotation
    default = field.default if value is None else value
    if typing.get_origin(annotation) is typing.Literal:
        return ChoiceInput(list(typing.get_args(annotation)), value=default, label=label, info=info, **extra)
    if annotation is bool:
        return gr.Checkbox(value=default, label=label, info=info, **extra)
    if annotation in (int, float):
        lo, hi = _bounds(field)
        if lo is not None and hi is not None:
            step = 1 if annotation is int else (hi - lo) / 100
            return SliderInput(lo, hi, value=default, step=step, label=label, info=info, **extra)
        return NumberInput(value=default, label=label, info=info, precision=0 if annotation is int else None,
                           minimum=lo, maximum=hi, **extra)
    if annotation is str:
        return gr.Textbox(value=default, label=label, info=info, **extra)
    return gr.Textbox(value=None if default is None else str(default), label=label, info=info, **extra)


# ----- endpoints: named parameters, progress, one sentence per error ---------------------------
def endpoint(handler, input_names: list[str], *, model_id: str | None = None, option_names=None, name=None):
    """``handler`` as a Gradio function whose signature names every input (``seed, count,
    temperature, output``) so that the API lists real parameter names, plus a ``gr.Progress``.

    It calls ``handler([model_id,] *inputs[, options_dict], progress=...)``: with ``option_names``
    the values after the fixed inputs are gathered into the options dict."""
    n = len(input_names)
    gather = option_names is not None
    option_names = list(option_names or ())
    # an option called like a fixed input (a plugin's own "seed") gets a prefix in the API only
    api_names = [*input_names, *(f"option_{o}" if o in input_names else o for o in option_names)]
    takes_progress = "progress" in inspect.signature(handler).parameters

    def arguments(values):
        *values, progress = values
        args = [] if model_id is None else [model_id]
        args += list(values[:n])
        if gather:
            args.append(dict(zip(option_names, values[n:])))
        return args, ({"progress": progress} if takes_progress else {})

    if inspect.isgeneratorfunction(inspect.unwrap(handler)):
        def run(*values):  # Gradio streams only from generator functions
            args, kwargs = arguments(values)
            yield from handler(*args, **kwargs)
    else:
        def run(*values):
            args, kwargs = arguments(values)
            return handler(*args, **kwargs)
    params = [inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in api_names]
    params.append(inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=gr.Progress()))
    run.__signature__ = inspect.Signature(params)
    run.__name__ = name or getattr(handler, "__name__", "endpoint")
    return run


def _per_model_controls(models: dict, key: str, label: str, handler, inputs: list, outputs: list, model_choice,
                        input_names: list[str], rows: list[dict]):
    """One group of option widgets and a button per model, shown for the model picked in
    ``model_choice``; the button calls ``handler(model_id, *inputs, options_dict)`` through the queue
    with the API name ``{key}_{model}`` and named parameters. Widgets open on the model's best setting."""
    groups, buttons = [], {}
    for model_id, cls in models.items():
        with gr.Group(visible=model_id == model_choice.value) as group:
            best = best_options(cls, rows)
            fields = cls.Options.model_fields
            widgets = [option_widget(name, field, best.get(name)) for name, field in fields.items()]
            button = gr.Button(f"{label} {model_id}", variant="primary", elem_id=f"{key}-button-{model_id}")
        groups.append(group)
        run = endpoint(handler, input_names, model_id=model_id, option_names=list(fields), name=api_name(key, model_id))
        button.click(run, [*inputs, *widgets], outputs, api_name=api_name(key, model_id), **model_event())
        for widget in widgets:
            if isinstance(widget, gr.Textbox):  # Enter runs it, as the button does
                widget.submit(run, [*inputs, *widgets], outputs, api_visibility="private", **model_event())
        buttons[model_id] = (run, [*inputs, *widgets])

    def show(model_id):
        return [gr.update(visible=mid == model_id) for mid in models]

    model_choice.change(show, model_choice, groups, api_visibility="private")
    return buttons


def _seed_row(label: str = "seed", elem_id: str | None = None):
    """A seed input and a button that draws a random one."""
    import random

    with gr.Row(equal_height=True):
        seed = NumberInput(value=0, precision=0, minimum=0, maximum=SEED_MAX, label=label, elem_id=elem_id,
                           scale=3, min_width=100)
        dice = gr.Button("random seed", scale=1, min_width=90, size="sm",
                         elem_id=f"{elem_id}-random" if elem_id else None)
    dice.click(lambda: random.randint(0, 2**31 - 1), None, seed, api_visibility="private")
    return seed


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


def _digit_picker(model_id: str, label: str, warm: "WarmUp", pick=None, elem_id: str | None = None):
    """A ``DigitInput`` opening on position 0, or on ``pick()`` (e.g. the first held-out 7) once the
    labels are known."""
    picker = DigitInput([("#0", 0)], value=0, label=label, elem_id=elem_id, allow_custom_value=True,
                        info="held-out digits, by label and position; type to filter, e.g. 'a 7'",
                        elem_classes=[DigitInput.MARK + model_id])
    warm.add(f"held-out digits ({label})", [picker],
             lambda: gr.update(choices=heldout_choices(model_id), value=pick() if pick else 0), priority=3)
    return picker


def _first_of(model_id: str, digit: int, fallback: int) -> int:
    found = _first_of_each_digit(model_id)
    return found[digit] if len(found) > digit else fallback


class WarmUp:
    """Loads every model and computes each tab's first result in a background thread, so the page
    opens with results shown and the first click runs as fast as the next. Jobs run cheapest and
    most used first (``priority``); a page that loads meanwhile fills in as each one finishes."""

    def __init__(self):
        self.jobs: list[tuple[str, list, typing.Callable, int]] = []  # (what, output components, fn, priority)
        self.results: dict[int, typing.Any] = {}
        self.finished: list[threading.Event] = []
        self.failures: list[str] = []
        self.done = threading.Event()
        self.seconds: float | None = None
        self.timings: dict[str, float] = {}  # seconds per job, for the log and benchmarks
        self._started = False
        self._lock = threading.Lock()

    def add(self, what: str, outputs: list, fn, priority: int = 5) -> None:
        self.jobs.append((what, list(outputs), fn, priority))
        self.finished.append(threading.Event())

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._run, name="genlab-warm-up", daemon=True).start()

    def _run(self) -> None:
        import time

        start = time.perf_counter()
        try:
            for i in sorted(range(len(self.jobs)), key=lambda j: self.jobs[j][3]):
                what, _, fn, _ = self.jobs[i]
                began = time.perf_counter()
                try:
                    value = fn()
                    if inspect.isgenerator(value):  # a stream: its last frame
                        for value in value:  # noqa: B007
                            pass
                    self.results[i] = value
                except Exception as exc:  # noqa: BLE001 - one failure must not stop the others
                    message = exc.message if isinstance(exc, gr.Error) else failure_message(None, exc)
                    self.failures.append(f"{what}: {message}")
                    log.warning("warm-up of %s failed: %s", what, message)
                self.timings[what] = time.perf_counter() - began
                self.finished[i].set()
        finally:
            self.seconds = time.perf_counter() - start
            for event in self.finished:
                event.set()
            log.info("warm-up took %.1f s: %s", self.seconds, {k: round(v, 1) for k, v in self.timings.items()})
            self.done.set()

    def status(self) -> str:
        if not self._started:
            return "Not warmed up yet: the first click loads its model."
        if not self.done.is_set():
            return ("⏳ **Warming up**: loading the models and running each once, so that every tab opens "
                    f"with a result and the first click is as fast as the next ({len(self.timings)} of "
                    f"{len(self.jobs)} done). Buttons work meanwhile, but wait for it.")
        failed = "".join(f"\n- {f}" for f in self.failures)
        return f"Ready: models loaded and warmed up in {self.seconds:.1f} s.{failed}"

    def outputs(self) -> list:
        return [component for _, outputs, _, _ in self.jobs for component in outputs]

    def values(self) -> list:
        """Every job's result for its outputs; ``gr.skip()`` where it is not done (or failed)."""
        values = []
        for i, (_, outputs, _, _) in enumerate(self.jobs):
            result = self.results.get(i)
            if result is None:
                values += [gr.skip()] * len(outputs)
            else:
                values += list(result) if isinstance(result, (list, tuple)) and len(outputs) > 1 else [result]
        return values

    def fill(self):
        """Page-load handler: the status and every result, yielded again as each job finishes."""
        self.start()
        shown = set()
        while True:
            ready = {i for i, event in enumerate(self.finished) if event.is_set()}
            if ready != shown or not shown:
                shown = ready
                yield [self.status(), *self.values()]
            if self.done.is_set():
                if len(ready) == len(self.jobs):
                    yield [self.status(), *self.values()]
                return
            self.done.wait(0.5)


CSS = """
/* samples: as many columns as fit, never clipped; no captions on the digits */
.genlab-samples .grid-wrap .grid-container { grid-template-columns: repeat(auto-fill, minmax(64px, 1fr)) !important; }
.genlab-samples, .genlab-samples .gallery-container, .genlab-samples .grid-wrap, .genlab-samples .grid-wrap.fixed-height {
  height: auto !important; min-height: 0 !important; max-height: none !important; overflow: visible !important; }
.genlab-samples .thumbnail-item { aspect-ratio: 1 / 1; height: auto !important; }
.genlab-samples img { image-rendering: pixelated; object-fit: contain !important; }
.genlab-pixels img { image-rendering: pixelated; }
#genlab-status { padding: 0.2em 0.8em; border-radius: 6px; background: var(--block-background-fill); }
.genlab-report-error { color: #b00020; }
"""

PROMPT_EXAMPLES = ["a thick seven", "an upright 1", "a thin slanted four", "3",
                   "please draw me a really nice thick and slanted seven"]


def build_app() -> gr.Blocks:
    from .registry import get_models

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401 - imported once here: two threads importing it at once break it

    rows = measured_rows()
    samplers = get_models(Capability.SAMPLE)
    warm = WarmUp()
    with LabBlocks(title="genlab", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# genlab\nSee and measure how generative image models differ. "
            "Every model here comes from a plugin; tabs follow what each model can do."
        )
        status = gr.Markdown(warm.status(), elem_id="genlab-status")
        if samplers:
            with gr.Tab("Compare", elem_id="tab-compare"):
                _compare_tab(samplers, get_models(Capability.INTERPOLATE), rows, warm)
        with gr.Tab("Sample", elem_id="tab-sample"):
            if not samplers:
                gr.Markdown("No model that can sample is installed: see the Plugins tab.")
            else:
                _sample_tab(samplers, rows, warm)

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
                    build(models, rows, warm)

        with gr.Tab("Report", elem_id="tab-report"):
            _report_tab()
        with gr.Tab("Plugins", elem_id="tab-plugins"):
            _plugins_tab()

        def fill():
            """On page load: the warm-up's results, as they come (the status says what is left)."""
            yield from warm.fill()

        demo.load(fill, None, [status, *warm.outputs()], api_visibility="private", show_progress="hidden",
                  concurrency_limit=None)
        gr.api(warm.status, api_name="status")
    demo.genlab_warm_up = warm
    return demo


def _compare_tab(samplers: dict, interpolators: dict, rows: list[dict], warm: WarmUp):
    prompted = [m for m, c in samplers.items() if c.can(Capability.PROMPT)]
    gr.Markdown(
        "The same seed and count on every model that can sample, side by side"
        + (" (and the same prompt for the models that take one)" if prompted else "")
        + ". Each column opens on its family's best-FID setting in the newest report on disk; its "
        "FID/precision/recall are that report's (FID: lower is closer to real digits; precision: share of "
        "samples that look real; recall: share of real digits the samples cover)."
    )
    with gr.Row(equal_height=True):
        with gr.Column(scale=2, min_width=220):
            seed = _seed_row(elem_id="compare-seed")
        count = SliderInput(1, MAX_COUNT, value=8, step=1, label="count", elem_id="compare-count", scale=2,
                            min_width=160)
        prompt = gr.Textbox(value="{digit}", label="prompt", scale=3, min_width=200, elem_id="compare-prompt",
                            info="for " + ", ".join(prompted) + "; {digit} cycles 0-9, as the eval did",
                            visible=bool(prompted))
        button = gr.Button("Compare", variant="primary", elem_id="compare-button", scale=1, min_width=120)
    columns, option_inputs, option_keys = [], [], []
    with gr.Row(equal_height=False, elem_id="compare-columns"):
        for model_id, cls in samplers.items():
            with gr.Column(min_width=250, elem_id=f"compare-{api_name('col', model_id)}"):
                gr.Markdown(f"### {model_id}\n{cls.family}")
                gallery = gr.Gallery(show_label=False, columns=4, height="auto", format="png", object_fit="contain",
                                     elem_classes="genlab-samples", elem_id=f"compare-gallery-{api_name('m', model_id)}",
                                     allow_preview=True)
                stats = gr.Markdown(elem_id=f"compare-stats-{api_name('m', model_id)}")
                best = best_options(cls, rows)
                names = [n for n in cls.Options.model_fields if n != "prompt"]
                with gr.Accordion("settings", open=False):
                    widgets = [option_widget(n, cls.Options.model_fields[n], best.get(n)) for n in names]
                columns.append((model_id, names, gallery, stats))
                option_inputs += widgets
                option_keys += [f"{api_name('', model_id).lstrip('_')}_{n}" for n in names]

    def compare(seed, count, prompt, *values, progress=None):
        """Every column in turn; the page fills column by column as each model finishes."""
        values = list(values)
        out = [gr.skip()] * (2 * len(columns))
        for i, (model_id, names, _, _) in enumerate(columns):
            options = dict(zip(names, values[: len(names)]))
            values = values[len(names):]
            try:
                out[2 * i : 2 * i + 2] = compare_one(model_id, seed, count, prompt, options, progress=progress, rows=rows)
            except gr.Error as exc:
                if str(exc.message).startswith(("seed must", "count must")):
                    raise
                out[2 * i : 2 * i + 2] = [None, f"**failed**: {exc.message}"]
            yield list(out)

    run = endpoint(compare, ["seed", "count", "prompt", *option_keys], name="compare")
    outputs = [c for _, _, gallery, stats in columns for c in (gallery, stats)]
    inputs = [seed, count, prompt, *option_inputs]
    button.click(run, inputs, outputs, api_name="compare", **model_event())
    prompt.submit(run, inputs, outputs, api_visibility="private", **model_event())
    gr.Examples([[0, 8, "{digit}"], [7, 16, "a thick slanted seven"], [3, 8, "an upright thin 2"]],
                [seed, count, prompt], label="try")
    defaults = {k: w.value for k, w in zip(option_keys, option_inputs)}
    warm.add("compare", outputs, lambda: run(0, 8, "{digit}", *defaults.values(), None), priority=1)

    if interpolators:
        first = next(iter(interpolators))
        gr.Markdown("### Interpolation, side by side\nEach family walks between the same two real digits its "
                    "own way: a VAE in its latent, a model with a sampler between the noises its sampler "
                    "inverts the two digits to (DDIM inversion for the DDPM, the ODE run backwards for a flow).")
        pick_a, pick_b = (lambda: _first_of(first, 1, 0)), (lambda: _first_of(first, 7, 1))  # a 1 and a 7
        with gr.Row(equal_height=True):
            index_a = _digit_picker(first, "from", warm, pick_a, elem_id="compare-interp-a")
            index_b = _digit_picker(first, "to", warm, pick_b, elem_id="compare-interp-b")
            points = SliderInput(2, 16, value=8, step=1, label="points", elem_id="compare-points")
            go = gr.Button("Interpolate", variant="primary", elem_id="compare-interp-button")
        strips = []
        for model_id in interpolators:
            with gr.Row(equal_height=True):
                strip = gr.Image(show_label=False, format="png", elem_classes="genlab-pixels",
                                 elem_id=f"compare-strip-{api_name('m', model_id)}", scale=4, height=110, min_width=300)
                note = gr.Markdown()
            strips += [strip, note]
        models = list(interpolators)
        run_strips = endpoint(lambda a, b, n, progress=None: compare_interpolations(models, a, b, n, progress),
                              ["first_digit", "second_digit", "points"], name="compare_interpolation")
        go.click(run_strips, [index_a, index_b, points], strips, api_name="compare_interpolation", **model_event())
        warm.add("interpolation strips", strips, lambda: run_strips(pick_a(), pick_b(), 8, None), priority=8)


def _sample_tab(samplers: dict, rows: list[dict], warm: WarmUp):
    first = next(iter(samplers))
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            model_choice = ChoiceInput(list(samplers), value=first, label="model", elem_id="sample-model")
            description = gr.Markdown(samplers[first].description)
            seed = _seed_row(elem_id="sample-seed")
            count = SliderInput(1, MAX_COUNT, value=16, step=1, label="count", elem_id="sample-count")
            model_choice.change(lambda m: samplers[m].description, model_choice, description,
                                api_visibility="private")
            controls = gr.Column()
        with gr.Column(scale=2, min_width=300):
            gallery = gr.Gallery(show_label=False, columns=8, height="auto", format="png", elem_id="sample-gallery",
                                 object_fit="contain",
                                 elem_classes="genlab-samples")
            caption = gr.Markdown(elem_id="sample-caption")
    with controls:
        buttons = _per_model_controls(samplers, "sample", "Sample", sample_images, [seed, count],
                                      [gallery, caption], model_choice, ["seed", "count"], rows)
    gr.Examples([[0, 16], [42, 64], [7, 1]], [seed, count], label="try")
    run, inputs = buttons[first]
    warm.add("sample", [gallery, caption], lambda: run(*[w.value for w in inputs], None), priority=2)


def _prompt_tab(models: dict, rows: list[dict], warm: WarmUp):
    gr.Markdown(
        "Type a prompt (a digit, optionally *thick*/*thin* and *upright*/*slanted*) and press Enter. The "
        "UNet reads it through cross-attention; each heatmap shows where one word's attention fell on the "
        "image, averaged over heads, layers and denoising steps (at every pixel the tokens' shares sum to "
        "1), stretched to its own range. **Stroke AUC** is how often a stroke pixel gets more of the word's "
        "attention than a background pixel (0.5: no preference; 1: always). The start token [CLS] is where "
        "positions the prompt says nothing about put their attention. "
        "Guidance > 1 pushes the sample toward the prompt (classifier-free guidance)."
    )
    first = next(iter(models))
    fields = models[first].Options.model_fields
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            model_choice = ChoiceInput(list(models), value=first, label="model", elem_id="prompt-model")
            prompt = gr.Textbox(value="a thick seven", label="prompt", elem_id="prompt-text",
                                info="press Enter to generate")
            # the same widgets (ranges, defaults) as the model's own options in the other tabs
            guidance = option_widget("guidance", fields["guidance"]) if "guidance" in fields else \
                SliderInput(0, 20, value=3.0, step=0.2, label="guidance")
            steps = option_widget("steps", fields["steps"]) if "steps" in fields else \
                SliderInput(1, 1000, value=20, step=1, label="steps")
            seed = _seed_row()
            button = gr.Button("Generate", variant="primary", elem_id="prompt-button")
        with gr.Column(scale=2, min_width=300):
            with gr.Row():
                image = gr.Image(label="sample", image_mode="L", height=224, format="png", elem_id="prompt-image",
                                 elem_classes="genlab-pixels", min_width=160)
                caption = gr.Markdown(elem_id="prompt-caption")
            gr.Markdown("**Cross-attention per token** (each map stretched to its own range; colour scale on the right)")
            heatmaps = gr.Plot(show_label=False, elem_id="prompt-attention", format="png")
            table = gr.Dataframe(headers=["token", "share of attention", "stroke AUC", "on strokes vs background"],
                                 interactive=False, elem_id="prompt-table", wrap=True)
    run = endpoint(prompt_attention, ["model", "prompt", "guidance", "steps", "seed"], name="prompt_attention")
    inputs, outputs = [model_choice, prompt, guidance, steps, seed], [image, heatmaps, table, caption]
    button.click(run, inputs, outputs, api_name="prompt_attention", **model_event())
    prompt.submit(run, inputs, outputs, api_visibility="private", **model_event())
    gr.Examples([[p] for p in PROMPT_EXAMPLES], [prompt], label="try")
    warm.add("prompt", outputs, lambda: run(*[w.value for w in inputs], None), priority=2)


def _autoencoder_tab(models: dict, rows: list[dict], warm: WarmUp):
    gr.Markdown(
        "What each model keeps of a digit: its latent and the image decoded back from it. A VAE keeps "
        "a short vector; the latent diffusion model's autoencoder a small 4-channel image; a diffusion "
        "model's DDIM latent is as large as the image itself."
    )
    first = next(iter(models))
    with gr.Row(equal_height=True):
        model_choice = ChoiceInput(list(models), value=first, label="model", elem_id="ae-model")
        index = _digit_picker(first, "held-out digit", warm, elem_id="ae-index")
        button = gr.Button("Encode and decode", variant="primary", elem_id="ae-button")
    with gr.Row():
        original = gr.Image(label="image", image_mode="L", height=224, format="png", elem_classes="genlab-pixels")
        latent = gr.Plot(label="latent", format="png")
        recon = gr.Image(label="reconstruction", image_mode="L", height=224, format="png", elem_classes="genlab-pixels")
    text = gr.Markdown(elem_id="ae-text")
    run = endpoint(autoencoder_view, ["model", "index"], name="autoencode")
    outputs = [original, latent, recon, text]
    button.click(run, [model_choice, index], outputs, api_name="autoencode", **model_event())
    warm.add("autoencoder", outputs, lambda: run(first, 0, None), priority=6)


def _latent_tab(models: dict, rows: list[dict], warm: WarmUp):
    gr.Markdown(
        "Each family walks between two real digits in its own way: a VAE encodes both and moves in "
        "its compressed latent; a diffusion model inverts both to their noise with DDIM and moves "
        "there (the latent has the size of the image). Left and right of the strip are the real digits."
    )
    first = next(iter(models))
    with gr.Row(equal_height=True):
        model_choice = ChoiceInput(list(models), value=first, label="model", elem_id="latent-model")
        index_a = _digit_picker(first, "first digit", warm, elem_id="latent-a")
        index_b = _digit_picker(first, "second digit", warm, lambda: 1, elem_id="latent-b")
        steps = SliderInput(2, 16, value=8, step=1, label="points")
        method = RadioInput(["slerp", "lerp"], value="slerp", label="path")
    strip = gr.Image(label="interpolation", format="png", elem_id="latent-strip", elem_classes="genlab-pixels")
    with gr.Row():
        pairs = gr.Image(label="reconstructions", format="png", elem_id="latent-recon", elem_classes="genlab-pixels")
        caption = gr.Markdown(elem_id="latent-caption")
    run = endpoint(latent_view, ["model", "first_digit", "second_digit", "points", "path"], name="interpolate")
    outputs = [strip, pairs, caption]
    gr.Button("Interpolate", variant="primary", elem_id="latent-button").click(
        run, [model_choice, index_a, index_b, steps, method], outputs, api_name="interpolate", **model_event())
    warm.add("latent space", outputs, lambda: run(first, 0, 1, 8, "slerp", None), priority=7)


def _diffusion_tab(models: dict, rows: list[dict], warm: WarmUp):
    first = next(iter(models))
    gr.Markdown(
        "**Forward process**: noise a real digit in closed form, "
        "x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε, and watch the signal-to-noise ratio fall. "
        "**Reverse process**: start from pure noise and denoise step by step; beside x_t is the "
        "model's current guess of the clean image, x̂_0."
    )
    model_choice = ChoiceInput(list(models), value=first, label="model", elem_id="diffusion-model")
    with gr.Row():
        with gr.Column(min_width=240):
            index = _digit_picker(first, "held-out digit", warm, elem_id="forward-index")
            t = SliderInput(1, 1000, value=250, step=1, label="t", elem_id="forward-t")
            noise_seed = NumberInput(value=0, precision=0, minimum=0, maximum=SEED_MAX, label="noise seed")
            forward_text = gr.Markdown(elem_id="forward-text")
        x0_view = gr.Image(label="x_0 (real digit)", image_mode="L", height=224, format="png", min_width=160,
                           elem_classes="genlab-pixels")
        xt_view = gr.Image(label="x_t ~ q(x_t | x_0)", image_mode="L", height=224, format="png", min_width=160,
                           elem_classes="genlab-pixels")
        curve = gr.Plot(label="ᾱ_t and SNR", elem_id="forward-curve", format="png", min_width=240)
    forward_inputs = [model_choice, index, t, noise_seed]
    forward_outputs = [x0_view, xt_view, forward_text, curve]
    forward = endpoint(forward_view, ["model", "index", "t", "seed"], name="forward_process")
    # the button first: its event takes the API name, the others are private
    gr.Button("Noise it", elem_id="forward-button").click(forward, forward_inputs, forward_outputs,
                                                             api_name="forward_process", **model_event())
    for control in (index, t, noise_seed, model_choice):
        control.change(forward, forward_inputs, forward_outputs, api_visibility="private", **model_event())
    warm.add("forward process", forward_outputs,
             lambda: forward(first, 0, min(250, _model(first).num_train_timesteps), 0, None), priority=4)

    gr.Markdown("### Reverse process")
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            reverse_seed = _seed_row(elem_id="reverse-seed")
            frames = SliderInput(2, 50, value=20, step=1, label="frames to show")
            controls = gr.Column()
        with gr.Column(scale=2, min_width=300):
            with gr.Row():
                xt_stream = gr.Image(label="x_t", image_mode="L", height=224, format="png", elem_id="reverse-xt",
                                     elem_classes="genlab-pixels", min_width=140)
                x0_stream = gr.Image(label="x̂_0 (predicted clean image)", image_mode="L", height=224,
                                     format="png", elem_id="reverse-x0", elem_classes="genlab-pixels", min_width=140)
            reverse_text = gr.Markdown(elem_id="reverse-text")
    trajectory = gr.Image(show_label=False, format="png", elem_id="reverse-trajectory", elem_classes="genlab-pixels")
    reverse_outputs = [xt_stream, x0_stream, trajectory, reverse_text]
    with controls:
        buttons = _per_model_controls(models, "reverse", "Denoise with", reverse_stream, [reverse_seed, frames],
                                      reverse_outputs, model_choice, ["seed", "frames"], rows)
    run, inputs = buttons[first]
    warm.add("reverse process", reverse_outputs, lambda: run(*[w.value for w in inputs], None), priority=4)

    editors = {m: c for m, c in models.items() if c.can(Capability.IMAGE_TO_IMAGE)}
    if editors:
        gr.Markdown("### Clean up a drawing (SDEdit)\nDraw a digit, noise it to t = strength × T, "
                    "and let the model denoise it back onto the digits it knows. Your drawing is prepared "
                    "as MNIST digits were: cropped to the strokes, fitted in a 20x20 box, centred by mass.")
        with gr.Row():
            import numpy as np

            white = np.full((280, 280, 4), 255, dtype=np.uint8)  # a background: the canvas opens in draw mode
            sketch = DrawingInput(value={"background": white, "layers": [], "composite": white},
                                  label="draw a digit", canvas_size=(280, 280), type="numpy", image_mode="RGBA",
                                  elem_id="sketch", layers=False, transforms=(), sources=(),
                                  brush=gr.Brush(default_size=14, colors=["#000000"], color_mode="fixed"),
                                  min_width=240)
            with gr.Column(min_width=200):
                strength = SliderInput(0.05, 1.0, value=0.5, step=0.05, label="strength")
                edit_seed = NumberInput(value=0, precision=0, minimum=0, maximum=SEED_MAX, label="seed")
                edit_button = gr.Button("Clean up", elem_id="edit-button", variant="primary")
            edit_in = gr.Image(label="your digit, prepared as MNIST", image_mode="L", height=224, format="png",
                               elem_classes="genlab-pixels", min_width=140)
            edit_out = gr.Image(label="cleaned up", image_mode="L", height=224, format="png", elem_id="edit-out",
                                elem_classes="genlab-pixels", min_width=140)
        edit = endpoint(clean_up_drawing, ["model", "drawing", "strength", "seed"], name="image_to_image")
        edit_button.click(edit, [model_choice, sketch, strength, edit_seed], [edit_in, edit_out],
                          api_name="image_to_image", **model_event())


METRIC_SCALES = """**How to read the numbers**
- **FID** ↓ (Fréchet distance between feature statistics of samples and real digits): 0 = the same
  distribution; the real held-out digits' own FID is the floor, no model can be expected below it.
- **KID** ↓: like FID but unbiased for small N; 0 = the same distribution.
- **precision** / **recall** (0 to 1, ↑): the share of samples that fall among real digits / the share of
  real digits the samples cover.
- **Inception score** ↑: confident and varied classifications; at most 10 for ten digits.
- **NLL** ↓ in bits per dimension of the 8-bit image: 8 = uniform noise; lower = more likely data.
- **PSNR** ↑ in dB of a reconstruction (30 dB: hard to tell apart); **MSE** ↓ on pixels in [0, 1].
- **NFE**: network evaluations per image; **images/s**: sampling throughput on the eval's machine.
- **stroke AUC** (0.5 to 1): 0.5 = the word's attention ignores the strokes; 1 = always on them."""


def _with_contents(html: str) -> str:
    """The report with an id on each section heading and a table of contents of links to them."""
    from html import escape, unescape

    entries = []

    def anchor(match):
        level, inner = match.group(1), match.group(2)
        title = unescape(re.sub(r"<[^>]+>", "", inner)).strip()
        slug = "report-" + (re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or str(len(entries)))
        entries.append((level, slug, title))
        return f'<h{level} id="{slug}">{inner}</h{level}>'

    body = re.sub(r"<h([23])>(.*?)</h\1>", anchor, html, flags=re.S)
    if not entries:
        return body
    items = "".join(f'<li style="margin-left:{(int(level) - 2) * 1.2}em"><a href="#{slug}">{escape(title)}</a></li>'
                    for level, slug, title in entries)
    return f'<nav class="genlab-contents"><strong>Contents</strong><ul>{items}</ul></nav>{body}'


def _report_tab():
    reports = report_folders()
    first = next(iter(reports), None)
    with gr.Row(equal_height=True):
        report_choice = ChoiceInput(list(reports), value=first, label="report", elem_id="report-choice")
        refresh = gr.Button("Refresh list", min_width=120, scale=0, size="sm")
    gr.Markdown(METRIC_SCALES)
    report_view = gr.HTML(show_report(first), elem_id="report-view")
    report_choice.change(show_report, report_choice, report_view, api_name="report")
    refresh.click(lambda: gr.update(choices=list(report_folders())), None, report_choice,
                  api_visibility="private")


def _plugins_tab():
    loaded, failed = plugin_rows()
    gr.Markdown("Models registered by installed plugins (entry-point group `genlab`).")
    gr.Dataframe(loaded, headers=["plugin", "model", "family", "capabilities", "description"],
                 interactive=False, wrap=True, elem_id="plugins-loaded",
                 column_widths=["10%", "13%", "12%", "25%", "40%"], max_height=800)
    if failed:
        gr.Markdown("Plugins that failed to load; every other plugin keeps working.")
        gr.Dataframe(failed, headers=["plugin", "reason"], interactive=False, wrap=True,
                     elem_id="plugins-failed", column_widths=["20%", "80%"])
    else:
        gr.Markdown("No plugin failed to load.")
    gr.api(plugins_api, api_name="plugins")


def launch(demo: gr.Blocks, *, host: str = "127.0.0.1", port: int | None = None, block: bool = False,
           warm_up: bool | None = None):
    """Serve ``demo`` through the queue; returns the local URL when not blocking. The models load and
    warm up in the background unless ``warm_up`` is False (or ``GENLAB_APP_WARMUP=0``)."""
    if warm_up is None:
        warm_up = os.environ.get("GENLAB_APP_WARMUP", "1") != "0"
    demo.queue(default_concurrency_limit=None)  # model work is limited by its own group (model_event)
    for attempt in range(3):
        try:
            _, url, _ = demo.launch(server_name=host, server_port=port, prevent_thread_lock=True, share=False,
                                    quiet=not block, max_file_size=MAX_FILE_SIZE, css=CSS)
            break
        except ValueError as exc:
            # Gradio starts the server, then gives it one 3-second HEAD request to answer; on a busy
            # machine that times out. The server is up by then: asking again re-checks it.
            if "localhost is not accessible" not in str(exc) or attempt == 2:
                raise
    if warm_up and getattr(demo, "genlab_warm_up", None) is not None:
        demo.genlab_warm_up.start()
    if block:
        demo.block_thread()
    return url
