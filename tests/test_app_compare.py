"""The Compare tab, the warm-up, and what the app reads from reports on disk, driven as a user drives them."""

import json

import numpy as np
import pytest
from gradio_client import Client
from PIL import Image

import genlab.app as app_module


@pytest.fixture
def reports(tmp_path, monkeypatch):
    """Two reports on disk: an older one and a newer one that measured the tiny DDPM twice."""
    root = tmp_path / "evals"

    def write(folder, created, models):
        path = root / folder
        path.mkdir(parents=True)
        (path / "metrics.json").write_text(json.dumps({"created_at": created, "feature_extractor": "mnist-classifier",
                                                       "models": models}))

    ddpm = {"sampler": "ddim", "steps": 4, "eta": 0.0, "precision": "fp32"}
    write("reports/old", "2026-01-01T00:00:00", [{"id": "ddpm", "options": ddpm, "fid": 99.0, "precision": 0.5,
                                                   "recall": 0.5}])
    write("runs/new", "2026-02-01T00:00:00", [
        {"id": "ddpm", "options": {**ddpm, "steps": 8}, "fid": 40.0, "precision": 0.7, "recall": 0.9},
        {"id": "ddpm", "options": {**ddpm, "sampler": "dpm-solver++", "steps": 5}, "fid": 30.0, "precision": 0.75,
         "recall": 0.8},
        # other weights than the app's: never shown as the default model's number, nor its best setting
        {"id": "ddpm", "options": {**ddpm, "sampler": "ddim", "steps": 8}, "fid": 10.0, "precision": 0.9,
         "recall": 0.9, "weights": "ddpm-other-set"},
        {"id": "ldm", "options": {"prompt": "{digit}", "guidance": 1.0, "sampler": "ddim", "steps": 3}, "fid": 20.0,
         "precision": 0.8, "recall": 0.85},
        {"id": "vae", "options": {}, "fid": None, "failed": "boom"},
    ])
    (root / "runs" / "broken").mkdir()
    (root / "runs" / "broken" / "metrics.json").write_bytes(b"\xff\xfe not json")
    monkeypatch.setenv("GENLAB_EVALS_DIR", str(root))
    return root


@pytest.fixture
def served(reports, fake_entry_points, tiny_vae_dir, tiny_ddpm_dir, tiny_first_stage_dir, tiny_ldm_dir, monkeypatch):
    fake_entry_points({"vae": "genlab_vae", "ddpm": "genlab_ddpm", "ldm": "genlab_ldm", "example": "genlab_example"})
    monkeypatch.setattr("genlab_ldm.LDM.default_weights", tiny_ldm_dir)
    monkeypatch.setattr("genlab_ldm.LDMAutoencoder.default_weights", tiny_first_stage_dir)
    monkeypatch.setattr("genlab_vae.VAE.default_weights", tiny_vae_dir)
    monkeypatch.setattr("genlab_ddpm.DDPM.default_weights", tiny_ddpm_dir)
    app_module._model.cache_clear()
    demo = app_module.build_app()
    url = app_module.launch(demo, port=None, warm_up=False)
    try:
        yield Client(url, verbose=False, analytics_enabled=False), demo
    finally:
        demo.close()
        app_module._model.cache_clear()


def test_newest_report_rows_and_best_settings(reports, fake_entry_points):
    fake_entry_points({"ddpm": "genlab_ddpm", "ldm": "genlab_ldm"})
    from genlab_ddpm import DDPM
    from genlab_ldm import LDM

    rows = app_module.measured_rows()
    assert [r["report"] for r in rows][:1] == ["runs/new"]  # newest first; the unreadable one skipped
    # the best FID of the newest report that measured the model, not the older report's row
    # backend and precision are this machine's choice, not the report's
    assert app_module.best_options(DDPM, rows) == {"sampler": "dpm-solver++", "steps": 5, "eta": 0.0}
    assert app_module.best_options(LDM, rows) == {"guidance": 1.0, "sampler": "ddim", "steps": 3}
    assert app_module.measured("ddpm", {"sampler": "ddim", "steps": 8}, rows)["fid"] == 40.0
    old = app_module.measured("ddpm", {"sampler": "ddim", "steps": 4}, rows)
    assert old["fid"] == 99.0 and old["report"] == "reports/old"  # rows are matched by parsed options
    assert app_module.measured("ddpm", {"sampler": "ddim", "steps": 7}, rows) is None


def test_compare_runs_every_sampler_side_by_side(served):
    client, _ = served
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/compare"]
    names = [p["parameter_name"] for p in api["parameters"]]
    assert names[:3] == ["seed", "count", "prompt"]
    assert {"vae_temperature", "ddpm_sampler", "ddpm_steps", "ldm_guidance", "uniform_noise_brightness"} <= set(names)
    defaults = {p["parameter_name"]: p["parameter_default"] for p in api["parameters"]}
    assert (defaults["ddpm_sampler"], defaults["ddpm_steps"]) == ("dpm-solver++", 5)  # best FID on disk

    result = client.predict(seed=3, count=2, prompt="a 7", api_name="/compare")
    columns = dict(zip(["vae", "ddpm", "ldm", "uniform-noise"], zip(result[::2], result[1::2])))
    for model_id, (gallery, stats) in columns.items():
        assert len(gallery) == 2, model_id
        assert "2 samples" in stats and "network evaluation" in stats
    assert "FID 30.0 · precision 0.75 · recall 0.80" in columns["ddpm"][1] and "runs/new" in columns["ddpm"][1]
    assert "FID 20.0" in columns["ldm"][1]  # measured with {digit} prompts; the prompt is the user's
    # the third-party plugin is a column like the others, with nothing on disk about it
    assert "no report on disk measured uniform-noise" in columns["uniform-noise"][1]
    # the same seed gives the same samples in Compare and in Sample
    same, _ = client.predict(3, 2, 1.0, "mean", api_name="/sample_vae")
    assert [Image.open(a["image"]).tobytes() for a in same] == [Image.open(b["image"]).tobytes()
                                                                for b in columns["vae"][0]]


def test_compare_streams_column_by_column(served):
    client, _ = served
    frames = list(client.submit(seed=0, count=1, api_name="/compare"))
    assert len(frames) >= 4  # one update per finished model
    assert isinstance(frames[0][0], list) and not isinstance(frames[0][2], list)  # the first column before the second


def test_interpolation_strips_side_by_side(served):
    client, _ = served
    vae_strip, vae_note, ddpm_strip, ddpm_note = client.predict(3, 7, 4, api_name="/compare_interpolation")
    for strip in (vae_strip, ddpm_strip):
        image = Image.open(strip)
        assert image.size[0] > 4 * image.size[1]  # 2 real digits + 4 points in a row
    assert "vae" in vae_note and "inverting its sampler" in ddpm_note


def test_warm_up_fills_every_tab_and_reports_ready(served):
    client, demo = served
    warm = demo.genlab_warm_up
    assert client.predict(api_name="/status").startswith("Not warmed up")
    warm.start()
    assert warm.done.wait(300)
    assert client.predict(api_name="/status").startswith("Ready"), warm.failures
    assert not warm.failures
    whats = [what for what, _, _, _ in warm.jobs]
    assert {"compare", "interpolation strips", "prompt", "reverse process", "sample"} <= set(whats)
    assert next(iter(warm.timings)) == "compare"  # the first tab's result comes first
    values = warm.values()
    assert len(values) == len(warm.outputs()) and all(v is not None for v in values)
    pickers = [v for v in values if isinstance(v, dict) and "choices" in v]
    assert pickers and all(p["choices"][0][0].startswith("a ") for p in pickers)  # labelled once known


def test_held_out_digits_are_chosen_by_their_label(served, fake_entry_points):
    choices = app_module.heldout_choices("vae")
    from genlab.datasets import load_dataset

    labels = load_dataset("digits", "heldout").labels.tolist()
    assert choices[0] == (f"a {labels[0]} (#0)", 0) and len(choices) == len(labels)


def test_a_drawing_is_prepared_as_mnist_digits_are():
    canvas = np.full((280, 280, 4), 255, dtype=np.uint8)
    canvas[..., 3] = 0
    canvas[20:120, 200:215] = (0, 0, 0, 255)  # a thin "1" high in the right corner
    digit = app_module.drawing_to_digit({"composite": canvas})[0, 0].numpy()
    rows, cols = np.nonzero(digit > 0.05)
    assert rows.max() - rows.min() + 1 == 20  # fitted to a 20-pixel box, aspect kept: tall and thin
    assert cols.max() - cols.min() + 1 <= 5
    ys, xs = np.mgrid[0:28, 0:28]
    centre = ((digit * ys).sum() / digit.sum(), (digit * xs).sum() / digit.sum())
    assert centre == pytest.approx((13.5, 13.5), abs=0.6)  # centred by mass


def test_report_tab_has_contents_and_metric_scales(tmp_path, monkeypatch):
    folder = tmp_path / "evals" / "reports" / "demo"
    folder.mkdir(parents=True)
    (folder / "report.html").write_text("<body><h1>genlab eval</h1><h2>Models</h2><p>x</p><h2>Claims &amp; verdicts</h2></body>")
    monkeypatch.setenv("GENLAB_EVALS_DIR", str(tmp_path / "evals"))
    html = app_module.show_report("reports/demo")
    assert '<a href="#report-models">Models</a>' in html and '<h2 id="report-models">Models</h2>' in html
    assert 'href="#report-claims-verdicts">Claims &amp; verdicts</a>' in html
    assert "FID" in app_module.METRIC_SCALES and "stroke AUC" in app_module.METRIC_SCALES
