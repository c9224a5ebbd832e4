"""The latent diffusion plugin on tiny seeded models: conditioning switch, guidance, attention maps,
latent scaling, the first stage, and prompts a user might type."""

import numpy as np
import pytest
import torch
from conftest import TINY_FIRST_STAGE
from genlab_ldm import LDM, LDMAutoencoder, captions
from genlab_ldm.network import CONDITIONING, LatentDiffusion

from genlab import GenlabError
from genlab.datasets import load_dataset, to_unit


def tiny_ldm(conditioning="crossattn", **kw):
    torch.manual_seed(0)
    edges = {"thickness": [2.5, 3.1], "slant": [0.0, 0.26]}
    net = LatentDiffusion(first_stage_config=TINY_FIRST_STAGE, conditioning=conditioning, band_edges=edges,
                          vocabulary=captions.vocabulary(), block_out_channels=(16, 32), num_train_timesteps=50,
                          latent_size=4, text_hidden=32, **kw)
    return LDM.from_network(net.eval())


DIGITS = load_dataset("digits", "train")


@pytest.mark.parametrize("conditioning", CONDITIONING)
def test_each_conditioning_mode_trains_and_samples(conditioning):
    model = tiny_ldm(conditioning)
    net = model.network.train()
    batch = {"images": DIGITS.images[:16], "labels": DIGITS.labels[:16]}
    loss, _ = model.training_loss(net, batch, torch.Generator().manual_seed(0))
    loss.backward()
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert loss.item() > 0 and any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    assert all(p.grad is None for p in net.first_stage.parameters())  # the first stage stays frozen
    net.eval()
    result = model.sample(3, seed=0, options={"prompt": "a thick 7", "steps": 4, "guidance": 2.0})
    assert result.images.shape == (3, 1, 8, 8) and torch.isfinite(result.images).all()
    assert result.nfe == (4 if conditioning == "none" else 8)  # guidance doubles the evaluations


def test_guidance_scale_one_is_the_plain_conditional_prediction():
    model = tiny_ldm()
    net = model.network
    z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    t = torch.tensor(20)
    with torch.no_grad():
        cond = net.condition(["7", "7", "", ""])
        eps_c, eps_u = net.predict_noise(torch.cat([z, z]), t, cond).chunk(2)
        guided = eps_u + 1.0 * (eps_c - eps_u)
        plain = net.predict_noise(z, t, net.condition(["7", "7"]))
    torch.testing.assert_close(guided, plain, atol=1e-5, rtol=1e-5)
    # and sampling with guidance 1 is the unguided conditional sampler (one evaluation per step)
    a = model.sample(2, seed=3, options={"prompt": "7", "steps": 5, "guidance": 1.0})
    assert a.nfe == 5


def test_attention_maps_are_distributions_over_tokens_at_every_position():
    model = tiny_ldm()
    out = model.attention_maps(seed=0, options={"prompt": "a thin slanted 3", "steps": 3})
    maps = out["maps"]
    assert out["tokens"] == ["a", "thin", "slanted", "3"]
    assert maps.shape == (4, 8, 8)
    assert maps.min() >= 0
    torch.testing.assert_close(maps.sum(0), torch.ones(8, 8), atol=1e-4, rtol=0)


def test_start_token_and_causal_encoder_give_attention_a_content_free_sink():
    model = tiny_ldm(start_token=True, causal_text=True)
    out = model.attention_maps(seed=0, options={"prompt": "a thin slanted 3", "steps": 3})
    assert out["tokens"] == ["[CLS]", "a", "thin", "slanted", "3"]
    torch.testing.assert_close(out["maps"].sum(0), torch.ones(8, 8), atol=1e-4, rtol=0)
    net = model.network
    with torch.no_grad():
        hidden, mask = net.encode_prompts(["a thick 7", "2", ""])
    assert mask[:, 0].all()  # every prompt, even the empty one, starts with [CLS]
    # causal: the start token sees only itself, so it says nothing about the prompt
    torch.testing.assert_close(hidden[0, 0], hidden[1, 0])
    torch.testing.assert_close(hidden[0, 0], hidden[2, 0])
    bidirectional = tiny_ldm(start_token=True).network
    bidirectional.text_model.load_state_dict(net.text_model.state_dict())
    with torch.no_grad():
        mixed, _ = bidirectional.encode_prompts(["a thick 7", "2"])
    assert not torch.allclose(mixed[0, 0], mixed[1, 0])


def test_sampling_encodes_each_distinct_prompt_once():
    """A "{digit}" batch asks for ten prompts over and over: each is encoded once, and every sample
    gets exactly what encoding it alone gives (training still encodes every row, dropout and all)."""
    net = tiny_ldm().network
    prompts = ["3", "a thick 7", "3", "", "a thick 7", "3"]
    seen = []
    forward = net.text_model.forward
    net.text_model.forward = lambda *a, **k: seen.append(len(k["input_ids"])) or forward(*a, **k)
    with torch.no_grad():
        hidden, mask = net.encode_prompts(prompts)
        alone = [net.encode_prompts([p]) for p in prompts]
    assert seen[0] == 3  # the batch: three distinct prompts
    torch.testing.assert_close(hidden, torch.cat([h for h, _ in alone]), atol=1e-6, rtol=0)
    assert torch.equal(mask, torch.cat([m for _, m in alone]))
    seen.clear()
    net.encode_prompts(prompts)  # with gradients (training): every row
    assert seen == [6]


def test_attention_maps_need_cross_attention():
    with pytest.raises(GenlabError, match="conditions by class: it has no cross-attention"):
        tiny_ldm("class").attention_maps(options={"prompt": "3", "steps": 2})


@pytest.mark.parametrize("prompt, note", [
    ("", "empty prompt: sampling unconditionally"),
    ("draw a twelve", "words the model never saw are ignored: draw, twelve"),
    ("a thick thick thick thick thick thick thick thick 7", "prompt cut to its first 8 words"),
    ("a thick one ✨", "words the model never saw are ignored: ✨"),
    ("a slanted digit", "no digit 0-9 in the prompt"),
])
def test_awkward_prompts_have_a_documented_fallback(prompt, note):
    result = tiny_ldm().sample(1, seed=0, options={"prompt": prompt, "steps": 2})
    assert any(note in n for n in result.info["notes"]), result.info["notes"]
    assert torch.isfinite(result.images).all()


def test_a_long_prompt_keeps_its_digit_word():
    # unknown words are dropped before the prompt is cut to 8 tokens ([CLS] + 7 words), not after
    model = tiny_ldm(start_token=True, causal_text=True)
    prompt, notes = model.check_prompt("please draw me a really nice thick and slanted seven")
    assert prompt == "a thick and slanted seven"
    ids = model.network.tokenizer(prompt, truncation=True, max_length=model.network.config.max_prompt_tokens)["input_ids"]
    assert model.network.tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "a", "thick", "and", "slanted", "seven"]
    assert notes == ["words the model never saw are ignored: draw, me, nice, please, really"]
    _, notes = model.check_prompt("a thick thin thick thin thick thin thick 7")
    assert "prompt cut to its first 7 words" in notes  # the eighth token is the start token


def test_over_long_prompt_is_rejected_by_the_options():
    with pytest.raises(GenlabError, match="invalid option prompt="):
        LDM.parse_options({"prompt": "7" * 201})


def test_first_stage_round_trips_a_tiny_batch(tiny_first_stage_dir):
    autoencoder = LDMAutoencoder(weights=tiny_first_stage_dir)
    x = to_unit(DIGITS.images[:6])
    latents = autoencoder.encode(x)
    assert latents.shape == (6, 4, 4, 4)
    recon = autoencoder.reconstruct(x)
    assert recon.shape == x.shape and recon.min() >= 0 and recon.max() <= 1
    metrics = autoencoder.reconstruction_metrics(x)
    assert metrics["mse"] == pytest.approx(float((recon - x).pow(2).mean()), rel=1e-5)
    assert metrics["psnr"] > 0 and -1 <= metrics["ssim"] <= 1


def test_latent_scaling_makes_training_latents_unit_variance(tiny_first_stage_dir):
    net = LDM.create_network(first_stage_weights=str(tiny_first_stage_dir), calibration_dataset="digits",
                             block_out_channels=(16, 32), text_hidden=32, num_train_timesteps=50)
    data = load_dataset("digits", "train")
    with torch.no_grad():
        z = net.first_stage.sample_latent(to_unit(data.images[:1000]), torch.Generator().manual_seed(5))
    assert float((z * net.config.scale_factor).std()) == pytest.approx(1.0, abs=0.05)
    # the first stage's weights came along
    source = LDMAutoencoder(weights=tiny_first_stage_dir).network.state_dict()
    for key, value in net.first_stage.state_dict().items():
        torch.testing.assert_close(value, source[key])


def test_captions_describe_the_measured_attributes():
    thick = np.zeros((1, 1, 28, 28), dtype=np.uint8)
    thick[0, 0, 4:24, 10:18] = 255  # a wide, upright bar
    thin = np.zeros_like(thick)
    thin[0, 0, 4:24, 13:15] = 255
    assert captions.measure(thick)["thickness"][0] > captions.measure(thin)["thickness"][0]
    slanted = np.zeros_like(thick)
    for row in range(4, 24):  # the top leans right
        col = 18 - (row - 4) // 3
        slanted[0, 0, row, col : col + 2] = 255
    assert captions.measure(slanted)["slant"][0] > 0.2 > abs(captions.measure(thin)["slant"][0])
    import random

    rng = random.Random(0)
    texts = {captions.caption(7, 2, 2, rng) for _ in range(200)}
    assert {"7", "seven"} <= texts and any("thick" in t and "slanted" in t for t in texts)
    assert captions.parse_prompt("a thick slanted seven") == {"digit": 7, "thickness": 2, "slant": 2}


def test_digit_template_prompts_cycle_through_the_digits():
    model = tiny_ldm()
    result = model.sample(12, seed=0, options={"prompt": "a thick {digit}", "steps": 2})
    assert result.images.shape[0] == 12 and result.info["prompt"] == "a thick {digit}"
    assert result.info["notes"] == []  # every filled-in prompt names a digit


def test_vq_first_stage_trains_and_round_trips():
    from genlab_ldm.first_stage import FirstStage

    torch.manual_seed(0)
    net = FirstStage(regularizer="vq", **{k: v for k, v in TINY_FIRST_STAGE.items()}, num_vq_embeddings=16)
    x = to_unit(DIGITS.images[:8])
    terms = net(x, generator=torch.Generator().manual_seed(0))
    terms["loss"].backward()
    assert terms["reg"] > 0  # the commitment loss
    model = LDMAutoencoder.from_network(net.eval())
    latents = model.encode(x)
    assert latents.shape == (8, 4, 4, 4)
    codebook = net.autoencoder.quantize.embedding.weight
    with torch.inference_mode():
        quantized = model.network.autoencoder.quantize(latents)[0]
    assert all(any(torch.allclose(v, c, atol=1e-5) for c in codebook) for v in quantized.permute(0, 2, 3, 1).reshape(-1, 4)[:5])
    assert model.reconstruct(x).shape == x.shape


def test_frozen_pretrained_text_encoder_from_the_local_wheel():
    model = tiny_ldm(text_encoder="pretrained")
    net = model.network
    hidden, mask = net.encode_prompts(["a thick seven", ""])
    assert hidden.shape[-1] == 384 and mask[0].sum() > mask[1].sum()
    assert not any("text" in name for name, _ in net.named_parameters())  # frozen and never saved here
    net.train()
    loss, _ = model.training_loss(net, {"images": DIGITS.images[:4], "labels": DIGITS.labels[:4]},
                                  torch.Generator().manual_seed(0))
    loss.backward()
    out = model.attention_maps(options={"prompt": "a thick seven", "steps": 2})
    assert out["tokens"][:3] == ["[CLS]", "a", "thick"]
    torch.testing.assert_close(out["maps"].sum(0), torch.ones(8, 8), atol=1e-4, rtol=0)
