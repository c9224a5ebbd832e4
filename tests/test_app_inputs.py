"""Bad input, failing plugins, oversized uploads and hostile reports, sent to the running app as an
API caller sends them: every one answers with one sentence naming the input and its valid range."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from gradio_client import Client, handle_file
from PIL import Image

import genlab.app as app_module

HERE = Path(__file__).parent
NAN, INF = math.nan, math.inf
SEED = "seed must be a whole number from 0 to 4294967295"


@pytest.fixture(scope="module")
def lab(tmp_path_factory, tiny_vae_dir, tiny_ddpm_dir, tiny_first_stage_dir, tiny_ldm_dir):
    """The app with the tiny in-tree models, the example plugin and a plugin whose sample() raises."""
    import importlib.metadata
    import sys

    from genlab import plugins, registry

    mp = pytest.MonkeyPatch()
    for folder in (HERE / "plugin_example", HERE / "app_plugins"):
        mp.syspath_prepend(str(folder))
    mapping = {"vae": "genlab_vae", "ddpm": "genlab_ddpm", "ldm": "genlab_ldm", "example": "genlab_example",
               "faulty": "genlab_faulty_sampler"}
    eps = importlib.metadata.EntryPoints(
        importlib.metadata.EntryPoint(name=n, value=v, group="genlab") for n, v in mapping.items())
    real = importlib.metadata.entry_points
    mp.setattr(importlib.metadata, "entry_points", lambda **kw: eps if kw.get("group") == "genlab" else real(**kw))
    mp.setattr("genlab_ldm.LDM.default_weights", tiny_ldm_dir)
    mp.setattr("genlab_ldm.LDMAutoencoder.default_weights", tiny_first_stage_dir)
    mp.setattr("genlab_vae.VAE.default_weights", tiny_vae_dir)
    mp.setattr("genlab_ddpm.DDPM.default_weights", tiny_ddpm_dir)
    plugins.reset()
    registry.refresh()
    app_module._model.cache_clear()
    demo = app_module.build_app()
    url = app_module.launch(demo, port=None, warm_up=False)
    try:
        yield SimpleNamespace(url=url, demo=demo)
    finally:
        demo.close()
        app_module._model.cache_clear()
        mp.undo()
        plugins.reset()
        registry.refresh()
        assert "genlab_faulty_sampler" in sys.modules  # it was really loaded through its entry point


def call(url: str, endpoint: str, data: list):
    """POST raw JSON (NaN and inf included, as a careless script sends them) and read the answer:
    ("complete", outputs) or ("error", message)."""
    with httpx.Client(timeout=60) as http:
        sent = http.post(f"{url}gradio_api/call/{endpoint}", content=json.dumps({"data": data}),
                         headers={"Content-Type": "application/json"})
        sent.raise_for_status()
        answer = http.get(f"{url}gradio_api/call/{endpoint}/{sent.json()['event_id']}").text
    event = [line[7:] for line in answer.splitlines() if line.startswith("event: ")][-1]
    payload = json.loads([line[6:] for line in answer.splitlines() if line.startswith("data: ")][-1])
    if event == "error":
        return "error", (payload or {}).get("error") if isinstance(payload, dict) else payload
    return event, payload


VAE_OK = [0, 2, 1.0, "mean"]  # seed, count, temperature, output
DDPM_OK = [0, 2, "ddim", 4, 0.0, "auto", "fp32"]  # seed, count, sampler, steps, eta, backend, precision
LDM_OK = [0, 1, "a 7", 1.0, "ddim", 2, "auto", "auto"]  # seed, count, prompt, guidance, sampler, steps, backend, precision


def with_(row, index, value):
    row = list(row)
    row[index] = value
    return row


BAD_INPUTS = [
    # endpoint, inputs, what the one sentence must say
    ("sample_vae", with_(VAE_OK, 0, None), f"{SEED}, got None"),
    ("sample_vae", with_(VAE_OK, 0, "abc"), f"{SEED}, got 'abc'"),
    ("sample_vae", with_(VAE_OK, 0, NAN), f"{SEED}, got nan"),
    ("sample_vae", with_(VAE_OK, 0, INF), f"{SEED}, got inf"),
    ("sample_vae", with_(VAE_OK, 0, 1e30), f"{SEED}, got 1e+30"),
    ("sample_vae", with_(VAE_OK, 0, -1), f"{SEED}, got -1"),
    ("sample_vae", with_(VAE_OK, 1, None), "count must be a whole number from 1 to 64, got None"),
    ("sample_vae", with_(VAE_OK, 1, "16"), "count must be a whole number from 1 to 64, got '16'"),
    ("sample_vae", with_(VAE_OK, 1, -INF), "count must be a whole number from 1 to 64, got -inf"),
    ("sample_vae", with_(VAE_OK, 1, 1e30), "count must be a whole number from 1 to 64, got 1e+30"),
    ("sample_vae", with_(VAE_OK, 1, 2.5), "count must be a whole number from 1 to 64, got 2.5"),
    ("sample_vae", with_(VAE_OK, 2, NAN), "temperature must be a number from 0 to 3, got nan"),
    ("sample_vae", with_(VAE_OK, 2, "hot"), "temperature must be a number from 0 to 3, got 'hot'"),
    ("sample_vae", [0], "/sample_vae takes 4 inputs and got 1: missing count, temperature, output"),
    ("sample_ddpm", with_(DDPM_OK, 3, 1e30), "steps must be a whole number from 1 to 1000, got 1e+30"),
    ("sample_ddpm", with_(DDPM_OK, 3, None), "steps must be a whole number from 1 to 1000, got None"),
    ("sample_ddpm", with_(DDPM_OK, 4, -INF), "eta must be a number from 0 to 1, got -inf"),
    ("sample_ldm", with_(LDM_OK, 3, NAN), "guidance must be a number from 0 to 20, got nan"),
    ("sample_ldm", with_(LDM_OK, 6, "tensorrt"), "backend"),
    ("sample_uniform_noise", [0, 2, INF], "brightness must be a number from 0 to 1, got inf"),
    ("forward_process", ["ddpm", 3, None, 0], "t must be a whole number from 1 to"),
    ("forward_process", ["ddpm", "x", 50, 0], "held-out digit must be a whole number from 0 to"),
    ("forward_process", ["ddpm", 3, 1e30, 0], "t must be a whole number from 1 to"),
    ("forward_process", ["ddpm", 3, 50, -1], "noise seed must be a whole number from 0 to 4294967295, got -1"),
    ("forward_process", ["ddpm", 3, 500, 0], "t must be a whole number from 1 to 100, got 500"),  # the tiny T
    ("reverse_ddpm", [0, INF, "ddim", 4, 0.0, "auto", "fp32"], "frames to show must be a whole number from 2 to 50, got inf"),
    ("reverse_ddpm", [0, 6, "ddim", NAN, 0.0, "auto", "fp32"], "steps must be a whole number from 1 to 1000, got nan"),
    ("interpolate", ["vae", None, 1, 4, "slerp"], "first digit must be a whole number from 0 to"),
    ("interpolate", ["vae", 0, 1, NAN, "slerp"], "points must be a whole number from 2 to 16, got nan"),
    ("interpolate", [], "/interpolate takes 5 inputs and got 0: missing model, first digit, second digit"),
    ("autoencode", ["vae", 1e30], "held-out digit must be a whole number from 0 to"),
    ("prompt_attention", ["ldm", "a 7", INF, 2, 0], "guidance must be a number from 0 to 20, got inf"),
    ("prompt_attention", ["ldm", "a 7", 1.0, "many", 0], "steps must be a whole number from 1 to 1000, got 'many'"),
    ("prompt_attention", ["ldm", "a 7", 1.0, 2, NAN], f"{SEED}, got nan"),
    ("image_to_image", ["ddpm", None, NAN, 0], "strength must be a number from 0.05 to 1, got nan"),
    ("image_to_image", ["ddpm", None, 0.5, None], f"{SEED}, got None"),
]


@pytest.mark.parametrize("endpoint, inputs, message", BAD_INPUTS,
                         ids=[f"{e}-{i}" for i, (e, _, _) in enumerate(BAD_INPUTS)])
def test_bad_input_is_one_sentence_naming_the_input_and_its_range(lab, endpoint, inputs, message):
    status, answer = call(lab.url, endpoint, inputs)
    assert status == "error" and answer and message in answer, answer


def test_the_app_still_serves_after_bad_input(lab):
    call(lab.url, "sample_vae", with_(VAE_OK, 0, NAN))
    status, (gallery, caption) = call(lab.url, "sample_vae", VAE_OK)
    assert status == "complete" and len(gallery) == 2 and "2 samples, seed 0" in caption


def test_per_model_endpoints_take_named_parameters(lab):
    api = Client(lab.url, verbose=False, analytics_enabled=False).view_api(return_format="dict", print_info=False)
    names = {e: [p["parameter_name"] for p in api["named_endpoints"][f"/{e}"]["parameters"]]
             for e in ("sample_vae", "sample_ddpm", "sample_ldm", "reverse_ddpm", "sample_uniform_noise")}
    assert names["sample_vae"] == ["seed", "count", "temperature", "output"]
    assert names["sample_ddpm"] == ["seed", "count", "sampler", "steps", "eta", "backend", "precision"]
    assert names["sample_ldm"] == ["seed", "count", "prompt", "guidance", "sampler", "steps", "backend", "precision"]
    assert names["reverse_ddpm"] == ["seed", "frames", "sampler", "steps", "eta", "backend", "precision"]
    assert names["sample_uniform_noise"] == ["seed", "count", "brightness"]
    client = Client(lab.url, verbose=False, analytics_enabled=False)
    gallery, caption = client.predict(seed=4, count=3, temperature=0.5, output="mean", api_name="/sample_vae")
    assert len(gallery) == 3 and "seed 4" in caption


def test_a_plugin_that_fails_at_run_time_is_named_and_the_app_goes_on(lab):
    status, message = call(lab.url, "sample_faulty_sampler", [0, 2])
    assert status == "error"
    assert message == ("model 'faulty-sampler' (plugin 'faulty') failed: "
                       "ZeroDivisionError: division by zero in the plugin's sampler")
    status, _ = call(lab.url, "sample_vae", VAE_OK)
    assert status == "complete"


def test_an_oversized_image_is_refused_before_it_is_decoded(lab, tmp_path):
    path = tmp_path / "huge.png"
    Image.new("1", (12000, 12000)).save(path, optimize=True)  # 12000x12000 pixels in a few kB
    assert path.stat().st_size < 200_000
    from gradio_client.exceptions import AppError

    client = Client(lab.url, verbose=False, analytics_enabled=False)
    sketch = {"background": None, "layers": [], "composite": handle_file(str(path))}
    with pytest.raises(AppError, match="the drawing is 12000x12000 pixels; the largest accepted is 2048x2048"):
        client.predict("ddpm", sketch, 0.5, 0, api_name="/image_to_image")


def test_uploads_are_bounded_and_cleaned(lab):
    config = httpx.get(f"{lab.url}config").json()
    assert config["max_file_size"] == 5 * 1024 * 1024


def test_model_endpoints_share_one_concurrency_budget(lab):
    groups = {fn.api_name: (fn.concurrency_id, fn.concurrency_limit) for fn in lab.demo.fns.values()
              if fn.api_name in ("sample_vae", "sample_ddpm", "reverse_ddpm", "forward_process", "interpolate",
                                 "autoencode", "prompt_attention", "image_to_image")}
    assert len(groups) == 8 and set(groups.values()) == {(app_module.MODEL_WORK, app_module.model_workers())}


# ----- reports on disk ----------------------------------------------------------------------------
HOSTILE = """<html><body><h1>genlab eval: <img src=x onerror="alert(1)">demo</h1>
<script>alert(2)</script><p onclick="alert(3)">label <a href="javascript:alert(4)">here</a></p>
<table><tr><td>FID</td><td>25.1</td></tr></table><img src="data:image/png;base64,iVBORw0KGgo=" alt="chart">
</body></html>"""


@pytest.fixture
def reports_on_disk(tmp_path, monkeypatch):
    reports = tmp_path / "evals" / "reports"
    for name in ("hostile", "latin1", "dangling"):
        (reports / name).mkdir(parents=True)
    (reports / "hostile" / "report.html").write_text(HOSTILE)
    (reports / "latin1" / "report.html").write_bytes("<body>caf\xe9</body>".encode("latin-1"))
    (reports / "dangling" / "report.html").symlink_to(tmp_path / "nowhere.html")
    monkeypatch.setenv("GENLAB_EVALS_DIR", str(tmp_path / "evals"))
    return reports


def test_report_html_is_sanitized(reports_on_disk):
    html = app_module.show_report("reports/hostile")
    assert "<script" not in html and "onerror" not in html and "onclick" not in html and "javascript:" not in html
    assert "genlab eval:" in html and "<td>25.1</td>" in html
    assert 'src="data:image/png;base64,iVBORw0KGgo="' in html  # inlined charts survive


def test_unreadable_reports_show_an_error_and_do_not_stop_the_app(reports_on_disk, clean_registry):
    assert set(app_module.report_folders()) == {"reports/hostile", "reports/latin1", "reports/dangling"}
    assert "reports/latin1 could not be shown" in app_module.show_report("reports/latin1")
    assert "not UTF-8" in app_module.show_report("reports/latin1")
    assert "reports/dangling could not be shown" in app_module.show_report("reports/dangling")
    demo = app_module.build_app()  # the app builds (and would start) with all three on disk
    assert demo is not None
