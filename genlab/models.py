"""The contract every model plugin implements.

A model is a small class with declared attributes (id, family, description, capabilities) and a
nested pydantic ``Options`` class. The app and the eval runner decide what to show or measure from
``capabilities`` alone. Weights load lazily, on first use, through diffusers'
``ModelMixin.from_pretrained`` (config.json + safetensors, from a local folder or a Hub repo id).

What a plugin author needs to know beyond the method docstrings:

- Errors: raise ``genlab.GenlabError`` with one sentence for a problem the user can fix (a bad
  option, a prompt the model cannot read); the CLI and the app show its message as is. Anything
  else a model raises is treated as a bug of its plugin: the CLI prints one line naming the model
  and the error, the app shows it, and the eval runner records that model's row as failed and goes
  on with the others.
- Data: ``genlab.load_dataset(name, split, seed=...)`` gives the same seeded train/held-out split
  every genlab tool uses, as uint8 tensors [N, C, H, W]; ``genlab.to_unit`` and
  ``genlab.dequantize`` turn them into floats.
- Seeds are integers in [0, ``MAX_SEED``] (2**32 - 1); a model may add small offsets to them.
- A model without a network (a baseline drawing noise, a closed-form model) does not implement
  ``network_class``: ``parameter_count()`` is then 0, and it reports ``nfe=0``.
- Devices: ``model.device`` is where the network runs (``genlab.runtime.resolve_device``: ``--device``,
  ``GENLAB_DEVICE``, else CUDA, MPS or the CPU); the base class moves the loaded network there. Draw
  seeded noise on the CPU (``genlab.runtime.randn``) and move it, so a seed means the same numbers on
  every device, and return images (``Samples.images``, decoded or reconstructed images) on the CPU.
- Backends: a sampler whose options declare ``backend`` and ``precision`` (``genlab.runtime``'s
  ``backend_field`` and ``precision_field``) runs its network through ``genlab.runtime.network_runner``.
- The app's endpoints are named ``{action}_{model id}`` with every character outside
  [0-9A-Za-z_] replaced by ``_`` (``genlab.app.api_name``): ``sample_uniform_noise`` for the model
  ``uniform-noise``.
"""

from __future__ import annotations

import enum
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import CapabilityError, GenlabError, describe

# Seeds reach torch.manual_seed, numpy's default_rng and the eval runner's per-shard arithmetic
# (seed * 100_003 + shard), which must all stay inside 64 bits.
MAX_SEED = 2**32 - 1


def check_seed(seed, name: str = "seed") -> int:
    """``seed`` as an int in [0, MAX_SEED], or one sentence saying what is wrong with it."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise GenlabError(f"{name} must be a whole number between 0 and {MAX_SEED}, got {seed!r}")
    if not 0 <= seed <= MAX_SEED:
        raise GenlabError(f"{name} must be between 0 and {MAX_SEED}, got {seed}")
    return seed


def _expected_type(default):
    """The JSON/TOML types a setting whose default is ``default`` accepts, and their name."""
    if isinstance(default, bool):
        return (bool,), "true or false"
    if isinstance(default, int):
        return (int,), "a whole number"
    if isinstance(default, float):
        return (int, float), "a number"
    if isinstance(default, str):
        return (str,), "a string"
    if isinstance(default, (tuple, list)):
        return (list, tuple), "a list"
    return None, None


def settings_problem(functions, values: dict, *, allow_unknown: bool = False) -> str | None:
    """What is wrong with ``values`` as keyword arguments of ``functions`` (a network constructor,
    or a model's ``create_network`` followed by the constructor its ``**config`` goes to), or None.

    A key none of them takes is unknown (unless ``allow_unknown`` or the last takes ``**kwargs``);
    a value whose type differs from its parameter's default (``latent_dim = "big"``) is ill-typed.
    Ranges are the constructor's to check: its ValueError is shown as is."""
    import inspect

    params: dict = {}
    open_ended = False
    for function in functions:
        signature = inspect.signature(function).parameters
        for name, p in signature.items():
            if name not in ("self", "cls") and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                params.setdefault(name, p)
        open_ended = any(p.kind is p.VAR_KEYWORD for p in signature.values())
        if not open_ended:
            break
    for key, value in values.items():
        if key not in params:
            if allow_unknown or open_ended:
                continue
            return f"unknown setting {key!r}; valid settings: {', '.join(params) or 'none'}"
        types, expected = _expected_type(params[key].default)
        if types is not None and (isinstance(value, bool) and bool not in types or not isinstance(value, types)):
            return f"{key} = {value!r} should be {expected} (default {params[key].default!r})"
    return None


@contextmanager
def quiet_loading():
    """Silence diffusers' and the Hub's warnings and log lines while weights load: what goes wrong
    is reported in one sentence by the caller instead."""
    import logging
    import warnings

    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    hub_logger = logging.getLogger("huggingface_hub")
    hub_level = hub_logger.level
    diffusers_logging.set_verbosity_error()
    hub_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        diffusers_logging.set_verbosity(level)
        hub_logger.setLevel(hub_level)


def read_json(path: Path, what: str):
    """A JSON file beside weights or in a run folder, or one sentence saying it is damaged."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GenlabError(f"{path} is not valid JSON ({describe(exc)}): {what}") from None
    except OSError as exc:
        raise GenlabError(f"cannot read {path}: {exc.strerror or exc}") from None


class Capability(str, enum.Enum):
    """What a model can do; the app shows a tab and the eval runner a metric only for declared ones."""

    SAMPLE = "sample"  # draw new images from seeds
    ENCODE = "encode"  # image -> latent
    DECODE = "decode"  # latent -> image
    RECONSTRUCT = "reconstruct"  # image -> latent -> image
    INTERPOLATE = "interpolate"  # a path between two images or seeds
    # intermediate states of an iterative sampler: trajectory() yields {"step", "steps", "t", "x_t",
    # "x0_hat"}, and "nfe" (network evaluations so far) where a step is not one evaluation
    TRAJECTORY = "trajectory"
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
    """Images in [0, 1] as a float tensor [N, C, H, W] on the CPU, with what it took to make them."""

    images: Any
    nfe: int  # network evaluations per image; 0 for a model without a network
    seconds: float  # wall time of the call
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
        # a bundled set beside the default one may be named by its folder (--weights vae-dlogistic-mnist-5k)
        if weights is not None and not Path(str(weights)).expanduser().exists() and str(weights) in self.bundled_weights():
            weights = Path(self.default_weights).parent / str(weights)
        self.weights = weights if weights is not None else self.default_weights
        self._network = None
        self._device = None

    # ----- device --------------------------------------------------------------------------------
    @property
    def device(self):
        """The ``torch.device`` the network runs on: set by ``get_model(..., device=...)`` or by
        assignment, else ``GENLAB_DEVICE``, else CUDA, Apple MPS or the CPU, whichever is there."""
        if getattr(self, "_device", None) is None:
            from .runtime import resolve_device

            self._device = resolve_device()
        return self._device

    @device.setter
    def device(self, value):
        from .runtime import resolve_device

        self._device = resolve_device(value)
        if getattr(self, "_network", None) is not None:
            self._network.to(self._device)

    # ----- weights -------------------------------------------------------------------------------
    @classmethod
    def bundled_weights(cls) -> list[str]:
        """Names of the bundled sets of weights: the default's folder and the folders beside it."""
        if cls.default_weights is None or not Path(cls.default_weights).parent.is_dir():
            return []
        return sorted(p.name for p in Path(cls.default_weights).parent.iterdir() if (p / "config.json").is_file())

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
        self.__dict__.pop("_genlab_runners", None)  # runners of the previous network

    def load_network(self, weights):
        if weights is None:
            raise GenlabError(
                f"model {self.model_id} has no weights: train it with `genlab train CONFIG` "
                "and pass the run's final/ folder with --weights"
            )
        text = str(weights)
        local = Path(text).expanduser()
        hub_id = not local.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", text)
        network_class = self.network_class()
        if not hub_id:
            if not (local / "config.json").is_file() or not any(local.glob("*.safetensors")):
                bundled = self.bundled_weights()
                raise GenlabError(
                    f"no checkpoint at {text}: give a folder that holds config.json and a .safetensors "
                    "file (a run's final/ folder or one of its checkpoints), a Hugging Face Hub repo id"
                    + (f", or a bundled set: {', '.join(bundled)}" if bundled else "")
                )
            self._check_saved_config(network_class, local / "config.json")
        try:
            with quiet_loading():
                network = network_class.from_pretrained(text if hub_id else str(local), use_safetensors=True)
        except GenlabError:
            raise
        except Exception as exc:
            if hub_id:
                from huggingface_hub import constants

                where = ("the Hugging Face Hub is offline (HF_HUB_OFFLINE=1) and holds no cached copy of it"
                         if constants.HF_HUB_OFFLINE else f"the Hugging Face Hub could not give it ({describe(exc, 120)})")
                raise GenlabError(
                    f"could not load weights {text} for model {self.model_id}: there is no folder {text} here, "
                    f"and {where}; give a run's final/ folder or a checkpoint folder"
                ) from None
            raise GenlabError(f"could not load weights {text} for model {self.model_id}: {describe(exc)}") from None
        return network.eval().requires_grad_(False).to(self.device)

    def _check_saved_config(self, network_class, path: Path) -> None:
        """config.json of a weights folder: valid JSON, this model's network class, sensible types."""
        config = read_json(path, "the weights folder is damaged; train again or restore it")
        if not isinstance(config, dict):
            raise GenlabError(f"{path} is not a JSON object: the weights folder is damaged")
        saved = config.get("_class_name")
        if saved is not None and saved not in {c.__name__ for c in network_class.__mro__}:
            raise GenlabError(
                f"weights {path.parent} hold a {saved} network, not the {network_class.__name__} that model "
                f"{self.model_id} loads: give {self.model_id}'s weights, or the model these weights belong to"
            )
        problem = settings_problem([network_class.__init__], {k: v for k, v in config.items() if not k.startswith("_")},
                                   allow_unknown=True)
        if problem:
            raise GenlabError(f"{path} is damaged: {problem}")

    @classmethod
    def from_network(cls, network, **kwargs) -> "Model":
        model = cls(**kwargs)
        model.network = network.to(model.device)
        return model

    def metadata(self) -> dict:
        """Training metadata saved beside the weights (steps, wall time, dataset, config), if any."""
        if self.weights is None:
            return {}
        path = Path(self.weights) / "metadata.json"
        if not path.is_file():
            return {}
        data = read_json(path, "fix or delete it (it only describes how the weights were trained)")
        if not isinstance(data, dict):
            raise GenlabError(f"{path} is not a JSON object: fix or delete it (it only describes how the weights were trained)")
        return data

    def training_log(self) -> list[dict]:
        """The loss curve logged while training these weights (``training_log.jsonl``), if shipped."""
        if self.weights is None:
            return []
        path = Path(self.weights) / "training_log.jsonl"
        if not path.is_file():
            return []
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise GenlabError(f"cannot read {path} ({describe(exc)}): fix or delete it") from None
        rows = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            loss = row.get("loss") if isinstance(row, dict) else None
            if not isinstance(row, dict) or not (loss is None or isinstance(loss, (int, float)) and not isinstance(loss, bool)):
                raise GenlabError(f"{path} line {number} is not a JSON object with a numeric loss: fix or delete the file "
                                  "(it only holds the training loss curve)")
            rows.append(row)
        return rows

    def latent_shape(self) -> tuple | None:
        """Shape of one sample's latent (what generation starts from), or None if the model has none."""
        return None

    def image_shape(self) -> tuple[int, int, int] | None:
        """(C, H, W) of the images this model makes and takes (what ``training_loss``, ``encode``,
        ``reconstruct`` and ``bits_per_dim`` receive), or None if it does not say. Training and the
        eval runner check it against the dataset's images and stop with one sentence on a mismatch."""
        return None

    @classmethod
    def has_network(cls) -> bool:
        """Whether the model has weights at all, i.e. implements ``network_class``."""
        return getattr(cls.network_class, "__func__", None) is not Model.network_class.__func__

    def parameter_count(self) -> int:
        """Parameters of the network; 0 for a model without one (no ``network_class``)."""
        if self._network is None and not self.has_network():
            return 0
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
        """``count`` images drawn with ``seed`` (the same seed gives the same images), as ``Samples``:
        float images in [0, 1] of shape [count, C, H, W], ``nfe`` (network evaluations per image;
        0 without a network) and wall ``seconds``. ``options`` is a dict or this model's Options."""
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
        ``{"bpd": float, "method": str, "images": int, ...}``.

        ``images_uint8``: held-out images as uint8 [N, C, H, W] (the eval passes its suite's
        ``likelihood_images`` of them, 500 by default); ``seed`` fixes any randomness; every other
        keyword comes from the suite's per-model ``likelihood = {...}`` table (unknown keywords are
        refused before the eval starts). The number is bits per dimension of the 8-bit image: a
        density p on dequantized values y = (x + u) / 256, u ~ U[0, 1), bounds it by
        E_u[-log2 p(y)] / D + 8 (log2 256 per dimension for the change of scale), as
        ``genlab.dequantize`` documents. Raise ``GenlabError`` when the bound cannot be computed
        for a deliberate reason: the report shows the message in the row."""
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
