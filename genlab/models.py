"""The contract every model plugin implements.

A model is a small class with declared attributes (id, family, description, capabilities) and a
nested pydantic ``Options`` class. The app and the eval runner decide what to show or measure from
``capabilities`` alone. Weights load lazily, on first use, through diffusers'
``ModelMixin.from_pretrained`` (config.json + safetensors, from a local folder or a Hub repo id).
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import CapabilityError, GenlabError


class Capability(str, enum.Enum):
    """What a model can do; the app shows a tab and the eval runner a metric only for declared ones."""

    SAMPLE = "sample"  # draw new images from seeds
    ENCODE = "encode"  # image -> latent
    DECODE = "decode"  # latent -> image
    RECONSTRUCT = "reconstruct"  # image -> latent -> image
    INTERPOLATE = "interpolate"  # a path between two images or seeds
    TRAJECTORY = "trajectory"  # intermediate states of an iterative sampler
    PROMPT = "prompt"  # text-conditioned sampling: Options has a `prompt` field; see prompt_metrics
    ATTENTION = "attention"  # cross-attention maps per prompt token
    LIKELIHOOD = "likelihood"  # a bound on the negative log-likelihood, in bits/dim
    FORWARD_PROCESS = "forward-process"  # closed-form noising q(x_t | x_0) and its schedule
    IMAGE_TO_IMAGE = "image-to-image"  # start from a user's image and let the model redraw it


class Options(BaseModel):
    """Base for a model's sampling options. Unknown fields are rejected and ranges validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


@dataclass
class Samples:
    """Images in [0, 1] as a float tensor [N, C, H, W], with what it took to make them."""

    images: Any
    nfe: int  # network evaluations per image
    seconds: float
    info: dict = field(default_factory=dict)


def unwrap(network):
    """The module itself when a training wrapper (accelerate's DDP) holds it: its config and helpers live there."""
    return getattr(network, "module", network)


class Model:
    """Base class of every genlab model. Subclasses set the class attributes and implement
    ``network_class`` and ``training_loss``, plus a method per declared capability."""

    model_id: ClassVar[str]
    family: ClassVar[str]
    description: ClassVar[str] = ""
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    training_objective: ClassVar[str] = ""  # in words, for reports: what the training loss is
    Options: ClassVar[type[Options]] = Options
    # A local folder (shipped with the plugin) or a Hub repo id; None means "train me first".
    default_weights: ClassVar[str | Path | None] = None

    def __init__(self, weights: str | Path | None = None):
        self.weights = weights if weights is not None else self.default_weights
        self._network = None

    # ----- weights -------------------------------------------------------------------------------
    @classmethod
    def network_class(cls):
        """The diffusers ``ModelMixin`` subclass holding this model's weights."""
        raise NotImplementedError

    @classmethod
    def create_network(cls, **config):
        """A freshly initialised network; ``config`` is the network section of a training config."""
        return cls.network_class()(**config)

    @property
    def network(self):
        """The network, loaded from ``self.weights`` the first time it is needed."""
        if self._network is None:
            self._network = self.load_network(self.weights)
        return self._network

    @network.setter
    def network(self, value):
        self._network = value

    def load_network(self, weights):
        if weights is None:
            raise GenlabError(
                f"model {self.model_id} has no weights: train it with `genlab train {self.model_id}` "
                "and pass the run folder with --weights"
            )
        text = str(weights)
        local = Path(text).expanduser()
        hub_id = not local.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", text)
        if not hub_id and (not (local / "config.json").is_file() or not any(local.glob("*.safetensors"))):
            raise GenlabError(
                f"no checkpoint at {text}: give a folder that holds config.json and a .safetensors "
                "file (a run's final/ folder or one of its checkpoints) or a Hugging Face Hub repo id"
            )
        try:
            network = self.network_class().from_pretrained(text if hub_id else str(local), use_safetensors=True)
        except (OSError, ValueError) as exc:
            raise GenlabError(f"could not load weights {text} for model {self.model_id}: {exc}") from None
        return network.eval().requires_grad_(False)

    @classmethod
    def from_network(cls, network, **kwargs) -> "Model":
        model = cls(**kwargs)
        model.network = network
        return model

    def metadata(self) -> dict:
        """Training metadata saved beside the weights (steps, wall time, dataset, config), if any."""
        if self.weights is None:
            return {}
        path = Path(self.weights) / "metadata.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def training_log(self) -> list[dict]:
        """The loss curve logged while training these weights (``training_log.jsonl``), if shipped."""
        if self.weights is None:
            return []
        path = Path(self.weights) / "training_log.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def latent_shape(self) -> tuple | None:
        """Shape of one sample's latent (what generation starts from), or None if the model has none."""
        return None

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.network.parameters())

    # ----- options and capabilities --------------------------------------------------------------
    @classmethod
    def parse_options(cls, options: dict | Options | None = None) -> Options:
        """Validated options; a bad value raises one sentence naming it and the valid range."""
        if isinstance(options, cls.Options):
            return options
        try:
            return cls.Options(**(options or {}))
        except ValidationError as exc:
            err = exc.errors()[0]
            name = ".".join(str(p) for p in err["loc"]) or "options"
            valid = ", ".join(cls.Options.model_fields) or "none"
            if err["type"] == "extra_forbidden":
                raise GenlabError(
                    f"model {cls.model_id} has no option {name!r}; valid options: {valid}"
                ) from None
            raise GenlabError(
                f"invalid option {name}={err.get('input')!r} for model {cls.model_id}: {err['msg']}"
            ) from None

    @classmethod
    def can(cls, capability: Capability | str) -> bool:
        return Capability(capability) in cls.capabilities

    def require(self, capability: Capability | str) -> None:
        if not self.can(capability):
            have = ", ".join(sorted(c.value for c in self.capabilities))
            raise CapabilityError(
                f"model {self.model_id} cannot {Capability(capability).value}; it can: {have}"
            )

    # ----- training ------------------------------------------------------------------------------
    def training_loss(self, network, batch: dict, generator=None):
        """(loss tensor, dict of floats to log) for one batch: ``{"images": uint8 [B,C,H,W], "labels"}``."""
        raise NotImplementedError

    # ----- capabilities (override the ones you declare) ------------------------------------------
    def sample(self, count: int, *, seed: int = 0, options: dict | Options | None = None) -> Samples:
        self.require(Capability.SAMPLE)
        raise NotImplementedError

    def encode(self, images):
        """Latent of float images [N, C, H, W] in [0, 1]."""
        self.require(Capability.ENCODE)
        raise NotImplementedError

    def posterior(self, images):
        """(mean, log-variance) of q(z|x) for float images in [0, 1], for models whose encoder is a
        distribution; log-variance is None for a deterministic one. Used for active units and
        per-dimension KL; models without such an encoder leave this unimplemented."""
        raise NotImplementedError

    def decode(self, latents):
        """Images in [0, 1] from latents."""
        self.require(Capability.DECODE)
        raise NotImplementedError

    def reconstruct(self, images):
        """Images in [0, 1] after a round trip through the model's latent."""
        self.require(Capability.RECONSTRUCT)
        raise NotImplementedError

    def interpolate(self, start, end, steps: int = 8, method: str = "slerp"):
        """Images along the model's own path between two images."""
        self.require(Capability.INTERPOLATE)
        raise NotImplementedError

    def bits_per_dim(self, images_uint8, *, k: int = 64, seed: int = 0) -> dict:
        """An upper bound on -log2 P(x) per dimension of 8-bit images:
        ``{"bpd": float, "method": str, "images": int, ...}``."""
        self.require(Capability.LIKELIHOOD)
        raise NotImplementedError

    def prompt_metrics(self, *, per_prompt: int = 20, seed: int = 0, options=None) -> dict:
        """How often samples obey their prompts: ``{"prompt_accuracy": float, ...}`` (digit asked =
        digit the bundled MNIST classifier sees), plus whatever attributes the model can check."""
        self.require(Capability.PROMPT)
        raise NotImplementedError

    @classmethod
    def describe(cls) -> dict:
        return {
            "id": cls.model_id,
            "family": cls.family,
            "description": cls.description,
            "capabilities": sorted(c.value for c in cls.capabilities),
        }
