"""The Gradio app. UI code only: the work is done by the models and plain functions elsewhere.

Tabs and widgets follow the registry: a model appears in the Sample tab because it declares the
``sample`` capability, and its option widgets are built from its pydantic ``Options`` schema.
"""

from __future__ import annotations

import functools
import os
import re
import typing

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home from a lab tool

import gradio as gr  # noqa: E402

from .errors import GenlabError  # noqa: E402
from .models import Capability  # noqa: E402

CONCURRENCY_LIMIT = 2  # two cores: more parallel model calls only slow each other down
MAX_COUNT = 64


def api_name_for(model_id: str) -> str:
    return "sample_" + re.sub(r"\W", "_", model_id)


@functools.lru_cache(maxsize=None)
def _model(model_id: str):
    from .registry import get_model

    return get_model(model_id)


# ----- work functions (plain Python, called by the UI and by tests) ----------------------------
def sample_images(model_id: str, seed, count, options: dict):
    """Gallery items and a caption for ``count`` seeded samples; user mistakes become ``gr.Error``."""
    from .images import to_pil_list

    try:
        model = _model(model_id)
        model.require(Capability.SAMPLE)
        count = int(count)
        if not 1 <= count <= MAX_COUNT:
            raise GenlabError(f"count must be between 1 and {MAX_COUNT}, got {count}")
        result = model.sample(count, seed=int(seed), options=model.parse_options(options))
    except GenlabError as exc:
        raise gr.Error(str(exc), print_exception=False) from None
    images = to_pil_list(result.images, scale=4)
    caption = (
        f"**{model_id}**: {count} samples, seed {int(seed)}, {result.nfe} network evaluation"
        f"{'s' if result.nfe != 1 else ''} per image, {result.seconds * 1000:.0f} ms"
    )
    return [(img, f"seed {int(seed)} #{i}") for i, img in enumerate(images)], caption


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
            return gr.Slider(lo, hi, value=default, step=step, label=label, info=info)
        return gr.Number(value=default, label=label, info=info, precision=0 if annotation is int else None)
    return gr.Textbox(value=None if default is None else str(default), label=label, info=info)


# ----- the app ---------------------------------------------------------------------------------
def build_app() -> gr.Blocks:
    from .registry import get_models

    samplers = get_models(Capability.SAMPLE)
    with gr.Blocks(title="genlab") as demo:
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
                    model_choice = gr.Dropdown(list(samplers), value=first, label="model", elem_id="sample-model")
                    seed = gr.Number(value=0, precision=0, label="seed", elem_id="sample-seed")
                    count = gr.Slider(1, MAX_COUNT, value=16, step=1, label="count", elem_id="sample-count")
                description = gr.Markdown(samplers[first].description)
                gallery = gr.Gallery(label="samples", columns=8, height="auto", format="png", elem_id="sample-gallery")
                caption = gr.Markdown(elem_id="sample-caption")
                groups = []
                for model_id, cls in samplers.items():
                    with gr.Group(visible=model_id == first) as group:
                        fields = cls.Options.model_fields
                        widgets = [option_widget(name, field) for name, field in fields.items()]
                        button = gr.Button(f"Sample {model_id}", variant="primary",
                                           elem_id=f"sample-button-{model_id}")
                    groups.append(group)

                    def run(seed_value, count_value, *values, _id=model_id, _names=tuple(fields)):
                        return sample_images(_id, seed_value, count_value, dict(zip(_names, values)))

                    button.click(run, [seed, count, *widgets], [gallery, caption], api_name=api_name_for(model_id))

                def show(model_id):
                    return [gr.update(visible=mid == model_id) for mid in samplers] + [samplers[model_id].description]

                model_choice.change(show, model_choice, [*groups, description], api_visibility="private")

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


def launch(demo: gr.Blocks, *, host: str = "127.0.0.1", port: int | None = None, block: bool = False):
    """Serve ``demo`` through the queue; returns the local URL when not blocking."""
    demo.queue(default_concurrency_limit=CONCURRENCY_LIMIT)
    _, url, _ = demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block,
                            share=False, quiet=not block)
    return url
