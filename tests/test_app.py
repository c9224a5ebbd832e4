"""The app launched in-process and driven the way a user (or a script) drives it: through gradio_client."""

import pytest
from gradio_client import Client
from PIL import Image

import genlab.app as app_module


@pytest.fixture
def served(fake_entry_points, tiny_vae_dir, tiny_ddpm_dir, tiny_first_stage_dir, tiny_ldm_dir, monkeypatch):
    """The app with the in-tree models (tiny weights), the example plugin and one broken plugin."""
    fake_entry_points({"vae": "genlab_vae", "ddpm": "genlab_ddpm", "ldm": "genlab_ldm",
                       "example": "genlab_example", "broken": "genlab_no_such_module"})
    monkeypatch.setattr("genlab_ldm.LDM.default_weights", tiny_ldm_dir)
    monkeypatch.setattr("genlab_ldm.LDMAutoencoder.default_weights", tiny_first_stage_dir)
    monkeypatch.setattr("genlab_vae.VAE.default_weights", tiny_vae_dir)
    monkeypatch.setattr("genlab_ddpm.DDPM.default_weights", tiny_ddpm_dir)
    app_module._model.cache_clear()
    demo = app_module.build_app()
    url = app_module.launch(demo, port=None, warm_up=False)
    try:
        yield Client(url, verbose=False, analytics_enabled=False)
    finally:
        demo.close()
        app_module._model.cache_clear()


def test_sample_tab_returns_vae_samples(served):
    gallery, caption = served.predict(3, 5, 1.0, "mean", api_name="/sample_vae")
    assert len(gallery) == 5
    images = [Image.open(item["image"]) for item in gallery]
    assert all(img.size == (32, 32) for img in images)  # 8x8 digits shown 4x
    assert "5 samples, seed 3, 1 network evaluation per image" in caption
    assert all(item.get("caption") is None for item in gallery)  # labels stay off the digits


def test_one_sample_is_singular(served):
    gallery, caption = served.predict(3, 1, 1.0, "mean", api_name="/sample_vae")
    assert len(gallery) == 1 and "**vae**: 1 sample, seed 3" in caption


def test_same_seed_gives_the_same_images(served):
    first, _ = served.predict(11, 2, 1.0, "mean", api_name="/sample_vae")
    second, _ = served.predict(11, 2, 1.0, "mean", api_name="/sample_vae")
    assert [Image.open(a["image"]).tobytes() for a in first] == [Image.open(b["image"]).tobytes() for b in second]


def test_third_party_model_gets_its_own_widgets_and_endpoint(served):
    gallery, caption = served.predict(0, 4, 0.5, api_name="/sample_uniform_noise")
    assert len(gallery) == 4 and "uniform-noise" in caption


def test_bad_option_is_a_clear_error_not_a_crash(served):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="temperature must be a number from 0 to 3, got 7.0"):
        served.predict(0, 2, 7.0, "mean", api_name="/sample_vae")
    # the app still serves afterwards
    gallery, _ = served.predict(0, 1, 1.0, "mean", api_name="/sample_vae")
    assert len(gallery) == 1


def test_model_errors_become_one_sentence_gradio_errors(tiny_vae_dir, monkeypatch):
    import gradio as gr

    monkeypatch.setattr("genlab_vae.VAE.default_weights", tiny_vae_dir)
    app_module._model.cache_clear()
    with pytest.raises(gr.Error, match="invalid option temperature=7.0 for model vae"):
        app_module.sample_images("vae", 0, 2, {"temperature": 7.0})
    with pytest.raises(gr.Error, match="count must be a whole number from 1 to 64, got 0"):
        app_module.sample_images("vae", 0, 0, {})
    with pytest.raises(gr.Error, match="unknown model 'nope'"):
        app_module.sample_images("nope", 0, 1, {})
    app_module._model.cache_clear()


def test_plugins_tab_lists_loaded_and_failed_plugins(served):
    result = served.predict(api_name="/plugins")
    loaded = {row[1]: row for row in result["loaded"]}
    assert loaded["vae"][0] == "vae" and "likelihood" in loaded["vae"][3]
    assert loaded["uniform-noise"][0] == "example"
    (failed,) = result["failed"]
    assert failed[0] == "broken" and "ModuleNotFoundError" in failed[1]


def test_option_widgets_follow_the_schema():
    import gradio as gr
    from genlab_vae import VAE

    fields = VAE.Options.model_fields
    temperature = app_module.option_widget("temperature", fields["temperature"])
    output = app_module.option_widget("output", fields["output"])
    assert isinstance(temperature, gr.Slider) and (temperature.minimum, temperature.maximum) == (0.0, 3.0)
    assert isinstance(output, gr.Dropdown) and [c[0] for c in output.choices] == ["mean", "sample"]


def test_forward_process_shows_a_noised_digit_and_its_snr(served):
    x0, xt, text, plot = served.predict("ddpm", 3, 50, 0, api_name="/forward_process")
    clean, noisy = Image.open(x0), Image.open(xt)
    assert clean.size == noisy.size == (64, 64)  # an 8x8 digit of the model's own dataset, shown 8x
    assert clean.tobytes() != noisy.tobytes()
    assert text.startswith("t = 50 of 100: ᾱ_t = ") and "SNR" in text


def test_reverse_process_streams_from_noise_to_a_digit(served):
    job = served.submit(0, 6, "ddim", 10, 0.0, "auto", "fp32", api_name="/reverse_ddpm")
    frames = list(job)
    assert len(frames) >= 5  # the caller sees the denoising as it happens, not only the end
    captions = [caption for _, _, _, caption in frames]
    strip = Image.open(frames[-1][2])
    assert strip.size[0] > 2.5 * strip.size[1]  # 6 recorded frames side by side, in 2 rows
    assert captions[0].startswith("step 1/10") and captions[-1].startswith("done 10/10")
    assert "10 network evaluations" in captions[-1]


def test_reverse_process_rejects_more_steps_than_t(served):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="steps=500 is more than the model's T=100"):
        served.predict(0, 6, "ddim", 500, 0.0, "auto", "fp32", api_name="/reverse_ddpm")


def test_drawing_is_cleaned_up(served, tmp_path):
    import numpy as np

    canvas = np.zeros((280, 280, 4), dtype=np.uint8)
    canvas[60:220, 130:150] = (0, 0, 0, 255)  # a black stroke: a "1"
    path = tmp_path / "one.png"
    Image.fromarray(canvas, "RGBA").save(path)
    from gradio_client import handle_file

    sketch = {"background": None, "layers": [], "composite": handle_file(str(path))}
    digit, cleaned = served.predict("ddpm", sketch, 0.3, 0, api_name="/image_to_image")
    # prepared at the model's own size (the tiny DDPM's 8x8), shown 8x
    assert Image.open(digit).size == (64, 64) and Image.open(cleaned).size == (64, 64)


def test_empty_drawing_is_a_clear_error():
    import numpy as np

    with pytest.raises(app_module.GenlabError, match="draw a digit first"):
        app_module.drawing_to_digit(None)
    with pytest.raises(app_module.GenlabError, match="canvas is empty"):
        app_module.drawing_to_digit({"composite": np.zeros((50, 50, 4), dtype=np.uint8)})


@pytest.mark.parametrize("model_id", ["vae", "ddpm"])
def test_latent_tab_interpolates_with_each_familys_own_method(served, model_id):
    strip, pairs, caption = served.predict(model_id, 3, 7, 4, "slerp", api_name="/interpolate")
    assert Image.open(strip).size[0] > Image.open(strip).size[1] * 4  # a strip of 2 + 4 images
    assert Image.open(pairs) is not None and "reconstruction MSE" in caption


def test_prompt_tab_shows_a_heatmap_per_token(served):
    image, heatmaps, table, caption = served.predict("ldm", "a thick 7", 3.0, 4, 0, api_name="/prompt_attention")
    assert Image.open(image).size == (64, 64)
    assert heatmaps is not None  # one figure: a tile per token, its numbers under it, one colour scale
    rows = table["data"]
    assert [row[0] for row in rows] == ["[CLS]", "a", "thick", "7"]
    shares = [float(row[1].rstrip("%")) for row in rows]
    assert all(0.0 <= float(row[2]) <= 1.0 and row[3].endswith("x") for row in rows)  # stroke AUC, contrast
    assert sum(shares) == pytest.approx(100, abs=2)  # the tokens share all the attention
    assert "8 network evaluations" in caption


def test_prompt_tab_explains_an_awkward_prompt(served):
    _, _, _, caption = served.predict("ldm", "draw a twelve", 3.0, 2, 0, api_name="/prompt_attention")
    assert "words the model never saw are ignored: draw, twelve" in caption


def test_an_empty_prompt_shows_no_meaningless_start_token_map(served):
    image, heatmaps, table, caption = served.predict("ldm", "", 1.0, 2, 0, api_name="/prompt_attention")
    assert Image.open(image).size == (64, 64) and heatmaps is None
    assert "empty prompt: sampling unconditionally" in caption and "no word to show attention for" in caption


@pytest.mark.parametrize("model_id, size_text", [("vae", "latent size 4 vs 64 pixels"),
                                                 ("ddpm", "latent size 64 vs 64 pixels"),
                                                 ("ldm-autoencoder", "latent size 64 vs 64 pixels")])
def test_autoencoder_view_shows_each_familys_latent(served, model_id, size_text):
    original, plot, recon, text = served.predict(model_id, 5, api_name="/autoencode")
    assert Image.open(original).size == Image.open(recon).size
    assert size_text in text


@pytest.fixture
def report_on_disk(tmp_path, monkeypatch):
    folder = tmp_path / "reports" / "demo"
    folder.mkdir(parents=True)
    (folder / "report.html").write_text("<html><body><h1>genlab eval: demo</h1><table></table></body></html>")
    monkeypatch.setattr(app_module, "report_folders", lambda: {"reports/demo": str(folder)})


def test_report_tab_shows_a_report_from_disk(report_on_disk, served):
    html = served.predict("reports/demo", api_name="/report")
    assert "genlab eval: demo" in html and "<body>" not in html
    with pytest.raises(app_module.gr.Error, match="no report 'nope'; reports on disk: reports/demo"):
        app_module.show_report("nope")
