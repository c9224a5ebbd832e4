"""The app in a real browser: headless Chromium (the system's, driven by Playwright) visits every tab
at desktop and phone widths, runs its main action, checks that the result appears and that the page
raised no error, and saves a screenshot of each tab under tests/artifacts/browser/ (gitignored)."""

import os
import shutil
from pathlib import Path

import pytest

import genlab.app as app_module

ARTIFACTS = Path(__file__).parent / "artifacts" / "browser"
CHROMIUM = os.environ.get("GENLAB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
VIEWPORTS = {"desktop": (1280, 900), "phone": (390, 844)}

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra) for the browser test")
if not Path(CHROMIUM).exists():
    pytest.skip("no Chromium for the browser test: install it with `apt-get install -y chromium` "
                "(or set GENLAB_CHROMIUM to a Chromium binary)", allow_module_level=True)


@pytest.fixture(scope="module")
def app_url(tiny_vae_dir, tiny_ddpm_dir, tiny_first_stage_dir, tiny_ldm_dir, tmp_path_factory):
    """The app with the tiny in-tree models, the example plugin and a small report on disk, warmed up
    as at launch."""
    import importlib.metadata

    from genlab import plugins, registry

    mp = pytest.MonkeyPatch()
    evals = tmp_path_factory.mktemp("evals")
    (evals / "reports" / "small").mkdir(parents=True)
    (evals / "reports" / "small" / "report.html").write_text(
        "<body><h1>genlab eval: small</h1><h2>Sample quality</h2><table><tr><th>model</th><th>FID</th></tr>"
        "<tr><td>vae</td><td>217.6</td></tr></table><h2>Claims</h2><p>held</p></body>")
    mp.setenv("GENLAB_EVALS_DIR", str(evals))
    mp.syspath_prepend(str(Path(__file__).parent / "plugin_example"))
    mapping = {"vae": "genlab_vae", "ddpm": "genlab_ddpm", "ldm": "genlab_ldm", "example": "genlab_example"}
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
    url = app_module.launch(demo, port=None, warm_up=True)
    assert demo.genlab_warm_up.done.wait(300)
    try:
        yield url
    finally:
        demo.close()
        app_module._model.cache_clear()
        mp.undo()
        plugins.reset()
        registry.refresh()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def open_tab(page, name: str):
    tab = page.get_by_role("tab", name=name, exact=True)
    if tab.count() and tab.first.is_visible():
        tab.first.click()
    else:  # on a phone the tabs that do not fit sit behind Gradio's "More tabs" menu
        page.get_by_role("button", name="More tabs").click()
        page.locator(".overflow-dropdown button", has_text=name).first.click()
    page.locator(f"[role=tabpanel]:visible").first.wait_for(state="visible")


def text_of(page, selector: str) -> str:
    return page.locator(selector).first.inner_text()


def wait_text(page, selector: str, needle: str, timeout: float = 60_000):
    page.locator(selector).filter(has_text=needle).first.wait_for(state="visible", timeout=timeout)


@pytest.mark.parametrize("viewport", list(VIEWPORTS))
def test_every_tab_works_in_a_real_browser(app_url, browser, viewport):
    width, height = VIEWPORTS[viewport]
    folder = ARTIFACTS / viewport
    folder.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": width, "height": height})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(app_url)
    wait_text(page, "#genlab-status", "Ready")

    import time

    began = time.perf_counter()
    timings = []

    def shot(name):
        page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
        timings.append(f"{name} {time.perf_counter() - began:.1f} s")
        (folder / "timings.txt").write_text("\n".join(timings) + "\n")

    # Compare: opens with every column filled; a new seed and count runs every model again
    open_tab(page, "Compare")
    for model_id in ("vae", "ddpm", "ldm", "uniform_noise"):
        wait_text(page, f"#compare-stats-m_{model_id}", "network evaluation")
    page.locator("#compare-count input[type=number]").fill("3")
    page.locator("#compare-count input[type=number]").press("Enter")
    page.locator("#compare-button").click()
    for model_id in ("vae", "ddpm", "ldm", "uniform_noise"):
        wait_text(page, f"#compare-stats-m_{model_id}", "3 samples")
    assert page.locator("#compare-gallery-m_ddpm img").count() >= 3
    if viewport == "desktop":  # the strips run once; on the phone the warm-up's strips are checked
        page.locator("#compare-points input[type=number]").fill("5")
        page.locator("#compare-points input[type=number]").press("Enter")
        page.locator("#compare-interp-button").click()
        wait_text(page, "#tab-compare", "inverting its sampler, 5 points")
    else:
        wait_text(page, "#tab-compare", "inverting its sampler, 8 points")
    assert page.locator("#compare-strip-m_ddpm img").count() == 1
    shot("compare")

    open_tab(page, "Sample")
    page.locator("#sample-button-vae").click()
    wait_text(page, "#sample-caption", "16 samples")
    assert page.locator("#sample-gallery img").count() == 16
    shot("sample")

    open_tab(page, "Diffusion process")
    wait_text(page, "#forward-text", "SNR")
    page.locator("#reverse-button-ddpm").click()
    wait_text(page, "#reverse-text", "done")
    canvas = page.locator("#sketch canvas").last
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.8, steps=12)
    page.mouse.up()
    page.locator("#edit-button").click()
    page.locator("#edit-out img").first.wait_for(state="visible", timeout=60_000)
    shot("diffusion")

    open_tab(page, "Prompt & attention")
    wait_text(page, "#prompt-table", "stroke AUC")
    page.locator("#prompt-text textarea").fill("a thin 3")
    page.locator("#prompt-text textarea").press("Enter")
    wait_text(page, "#prompt-table", "thin")
    shot("prompt")

    open_tab(page, "Autoencoders")
    page.locator("#ae-button").click()
    wait_text(page, "#ae-text", "MSE")
    shot("autoencoders")

    open_tab(page, "Latent space")
    page.locator("#latent-button").click()
    wait_text(page, "#latent-caption", "slerp")
    shot("latent")

    open_tab(page, "Report")
    wait_text(page, "#report-view", "Contents")
    shot("report")

    open_tab(page, "Plugins")
    wait_text(page, "#plugins-loaded", "uniform-noise")
    shot("plugins")

    toasts = page.locator(".toast-body.error, [data-testid='toast-body']").all_inner_texts()
    page.close()
    assert not errors, errors
    assert not [t for t in toasts if "rror" in t], toasts
