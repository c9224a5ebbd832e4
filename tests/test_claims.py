"""The seed texts' claims table: verdicts follow the measured numbers, in both directions."""

import copy

from genlab.evals.claims import seed_claims


def _row(model, family, **extra):
    base = {"model": model, "family": family, "data_shape": [1, 28, 28], "nfe": 1, "latency_ms": 1.0,
            "spread": {"fid": 1.0}, "sharpness": 0.05, "recall": 0.8, "objective": "a loss",
            "class_balance": {"digits_covered": 10, "normalized_entropy": 0.99},
            "training": {"steps": 100, "cpu_seconds": 100.0}}
    return base | extra


RESULT = {
    "real_data_floor": {"fid": 20.0, "sharpness": 0.06},
    "models": [
        _row("vae", "vae", latent_shape=[16], fid=200.0, images_per_second=10_000.0, sharpness=0.02, recall=0.6,
             latents={"latent_dim": 16, "active_units": 12, "kl_total": 20.0},
             interpolation={"ppl": 50.0, "path_over_direct": 1.1, "largest_step": 0.1}, reconstruction={"psnr": 20.0}),
        _row("ddpm", "diffusion", latent_shape=[1, 28, 28], fid=40.0, nfe=20, images_per_second=30.0,
             training={"steps": 10_000, "cpu_seconds": 4000.0},
             interpolation={"ppl": 90.0, "path_over_direct": 1.5, "largest_step": 0.3}),
        _row("ldm", "latent-diffusion", latent_shape=[4, 8, 8], fid=30.0, nfe=20, images_per_second=60.0),
    ],
}


def _verdicts(result):
    return {c["aspect"]: c["verdict"] for c in seed_claims(result)}


def test_every_claim_gets_a_verdict_from_the_numbers():
    verdicts = _verdicts(RESULT)
    assert verdicts == {
        "Latent dimension": "held", "Generation": "held", "Sample quality": "held",
        "Training": "held (by construction)", "Interpolation": "held (by construction)", "Posterior collapse": "held",
        "Sampling speed": "held", "Training cost": "held",
        "Training stability / mode collapse": "partly held (diffusion diverse; VAE did not collapse)",
        "Latent diffusion": "held",
    }
    rows = {c["aspect"]: c for c in seed_claims(RESULT)}
    assert "4 of 16" not in rows["Posterior collapse"]["measured"]["vae"]
    assert rows["Posterior collapse"]["measured"]["vae"].startswith("12 of 16 units active")
    assert "784 (data: 784)" in rows["Latent dimension"]["measured"]["diffusion"]


def test_verdicts_flip_when_the_numbers_do():
    flipped = copy.deepcopy(RESULT)
    vae, ddpm, ldm = flipped["models"]
    vae["images_per_second"] = 10.0  # slower than diffusion
    vae["latents"]["active_units"] = 16  # no collapsed unit
    ddpm["fid"] = 250.0  # worse than the VAE
    ddpm["training"]["cpu_seconds"] = 50.0  # cheaper than the VAE
    ldm["fid"], ldm["images_per_second"] = 400.0, 1.0
    verdicts = _verdicts(flipped)
    assert verdicts["Sampling speed"] == "did not hold"
    assert verdicts["Posterior collapse"] == "not observed"
    assert verdicts["Sample quality"] == "partly held"  # still blurrier, no longer worse
    assert verdicts["Training cost"] == "did not hold"
    assert verdicts["Latent diffusion"] == "did not hold"


def test_a_suite_without_both_families_says_what_is_missing():
    only_vae = {"real_data_floor": RESULT["real_data_floor"], "models": [RESULT["models"][0]]}
    claims = {c["aspect"]: c for c in seed_claims(only_vae)}
    assert claims["Sampling speed"]["verdict"] == "not measured"
    assert "needs a diffusion and a vae model" in claims["Sampling speed"]["why"]
    assert claims["Posterior collapse"]["verdict"] == "held"  # needs the VAE only


def test_a_feature_extractor_that_ranks_the_families_the_other_way_is_reported():
    result = copy.deepcopy(RESULT)
    result["extractors"] = ["mnist-classifier", "inception-v3-tf"]
    vae, ddpm, _ = result["models"]
    vae["extractors"] = {"inception-v3-tf": {"fid": 40.0}}
    ddpm["extractors"] = {"inception-v3-tf": {"fid": 64.0}}
    quality = next(c for c in seed_claims(result) if c["aspect"] == "Sample quality")
    assert quality["verdict"] == "depends on the feature extractor"  # not one verdict for both
    assert "inception-v3-tf features rank the two the other way" in quality["why"]
    assert "FID 64.000 on inception-v3-tf" in quality["measured"]["diffusion"]


def _with_flow(*fids):
    """RESULT plus a flow-matching family measured at 1, 2 and 4 NFE (Euler) and 15 (Heun 8)."""
    result = copy.deepcopy(RESULT)
    for (nfe, fid), label in zip(zip((1, 2, 4, 15), fids), ("reflow euler-1", "reflow euler-2", "flow euler-4", "flow heun-8")):
        result["models"].append(_row(label, "flow-matching", latent_shape=[4, 8, 8], fid=fid, nfe=nfe,
                                     images_per_second=3000.0 / nfe))
    return result


def test_the_flow_family_gets_a_line_in_the_generation_and_speed_claims():
    claims = {c["aspect"]: c for c in seed_claims(_with_flow(45.0, 31.0, 41.0, 28.0))}
    line = claims["Generation"]["measured"]["flow-matching"]
    assert line == ("FID 45.000 ± 1.00 at 1 NFE (reflow euler-1); FID 31.000 ± 1.00 at 2 NFE (reflow euler-2); "
                    "FID 41.000 ± 1.00 at 4 NFE (flow euler-4); best FID 28.000 ± 1.00 at 15 NFE (flow heun-8)")
    # at 2 NFE the flow is within the best diffusion model's FID (the LDM's 30 at 20 NFE): "iterative"
    # held only as the diffusion models were sampled
    assert claims["Generation"]["verdict"] == "partly held"
    assert "matches the best diffusion model's quality (ldm) at 2 NFE" in claims["Generation"]["why"]
    speed = claims["Sampling speed"]
    assert "images/s" in speed["measured"]["flow-matching"] and speed["verdict"] == "held"
    assert "at 2 NFE (FID 31.000 ± 1.00) samples 50.0x as fast as the DDPM" in speed["why"]
    # better than the pixel DDPM (40) in 2 steps, but not the latent model: the claim stands
    claims = {c["aspect"]: c for c in seed_claims(_with_flow(45.0, 38.0, 41.0, 28.0))}
    assert claims["Generation"]["verdict"] == "held"
    assert "does not reach the best diffusion model's quality (ldm) in 4 NFE or fewer" in claims["Generation"]["why"]
    assert "flow-matching" not in {c["aspect"]: c for c in seed_claims(RESULT)}["Generation"]["measured"]


def test_a_flow_matches_diffusion_only_where_every_n_agrees():
    """Within two seed spreads at the floor's N, but clearly behind at the suite's larger N (whose
    spread is smaller): the flow does not match the LDM, and the verdict says at which N."""
    result = _with_flow(45.0, 38.0, 31.0, 28.0)  # 31 at 4 NFE: within 2 x 1.0 of the LDM's 30
    for row in result["models"]:
        row["eq_fid"], row["spread"] = row["fid"], {"fid": 0.2, "eq_fid": 1.0}
        row["fid"] = row["fid"] - 10 if row["family"] == "latent-diffusion" else row["fid"] - 6
    generation = {c["aspect"]: c for c in seed_claims(result)}["Generation"]
    assert generation["verdict"] == "held"
    assert ("does not reach the best diffusion model's quality (ldm) in 4 NFE or fewer (flow euler-4 at the "
            "suite's N: FID 25.000 against 20.000, more than twice the larger seed spread (0.20) apart)") in generation["why"]
    for row in result["models"]:  # as close at the suite's N, with the same spread: it matches
        row["fid"], row["spread"]["fid"] = row["eq_fid"], 1.0
    assert {c["aspect"]: c for c in seed_claims(result)}["Generation"]["verdict"] == "partly held"


def test_the_flow_row_a_verdict_cites_is_in_its_line():
    result = _with_flow(45.0, 38.0, 41.0, 28.0)
    result["models"].append(_row("flow heun-2", "flow-matching", fid=30.5, nfe=3, images_per_second=1000.0))
    generation = {c["aspect"]: c for c in seed_claims(result)}["Generation"]
    assert "matches the best diffusion model's quality (ldm) at 3 NFE" in generation["why"]
    assert "FID 30.500 ± 1.00 at 3 NFE (flow heun-2)" in generation["measured"]["flow-matching"]
