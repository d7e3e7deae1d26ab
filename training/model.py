"""The convolutional VAE: encoder q(t|x) = N(mu(x), diag exp(logvar(x))), decoder p(x|t), prior N(0, I)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping

import torch
from torch import nn

from edgevae.runtime import options
from edgevae.runtime.contract import InputContract

from .objectives import kl_divergence, log_likelihood

# Activation between layers, by ModelConfig.activation (and encoder_activation); names from edgevae.runtime.options.
ACTIVATIONS: dict[str, type[nn.Module]] = {"silu": nn.SiLU, "relu": nn.ReLU}


def architecture_for(channels: int, height: int, width: int) -> dict[str, Any]:
    """The architecture rule: stages, widths, latent size and hidden width that suit (channels, height, width).

    - stride-2 stages until the feature map is at most ``BOTTLENECK_MAX`` pixels on its longer side (at least
      ``MIN_STAGES``, at most 6), so that the fully connected layer stays small at any image size;
    - ``WIDTH_START`` channels in the first stage, doubling per stage up to ``WIDTH_MAX``;
    - ``LATENT_DIM`` latent dimensions for a 28x28 grayscale image's worth of values (784), doubling for every
      fourfold growth of C*H*W, up to ``LATENT_DIM_MAX``; a hidden width of ``HIDDEN`` or four times the latent
      size, whichever is larger.

    A 1x28x28 input gets the digits' architecture (widths 32, 64; latent 16; hidden 256); 3x64x64 gets widths
    32, 64, 128, 128 (a 4x4 bottleneck) and latent 32; 3x256x256 six stages and latent 128.
    """
    side, stages = max(height, width), options.MIN_STAGES
    while stages < 6 and -(-side // 2 ** stages) > options.BOTTLENECK_MAX:
        stages += 1
    widths = tuple(min(options.WIDTH_START * 2 ** i, options.WIDTH_MAX) for i in range(stages))
    growth = max(channels * height * width / options.REFERENCE_VALUES, 1.0)
    latent = min(options.LATENT_DIM_MAX, options.LATENT_DIM * 2 ** int(math.floor(math.log(growth, 4) + 1e-9)))
    return {"widths": widths, "latent_dim": latent, "hidden": max(options.HIDDEN, 4 * latent)}


# Fields of ModelConfig that the architecture rule fills when they are not set, and those the data fills.
RULE_FIELDS = ("widths", "latent_dim", "hidden")
SHAPE_FIELDS = ("channels", "height", "width")
# log-variance of q(t|x) in the plain-autoencoder limit (variational=False): s = exp(-10), about 4.5e-5, so
# sampling is a no-op at float32 precision and every score still has a finite value.
PLAIN_LOGVAR = -20.0


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a VAE; stored with the weights in every checkpoint.

    Fields left at None come from the data and the architecture rule (:func:`architecture_for`) when training
    starts (:meth:`resolved`); a field that is set always wins. The checkpoint stores the resolved config.

    Args:
        channels: image channels, 1 or 3 (None: from the data).
        height, width: image size (>= 8; None: from the data).
        latent_dim: size D of the latent code t (None: by the rule).
        widths: channels of the stride-2 convolution stages (each halves the image, rounding up; None: by the rule).
        hidden: width of the fully connected layer between the convolutions and the latent code (None: by the rule).
        refine: channels of an extra 3x3 convolution at full resolution that forms the decoder's output
            (0: none; the last transposed convolution then outputs the image directly).
        activation: ``silu`` or ``relu`` between layers. ReLU folds into int8 convolutions, so an int8
            variant of a ReLU model runs faster; SiLU reaches a better held-out ELBO (docs/benchmarks.md).
        encoder_activation: the encoder's activation (None: as ``activation``). The default, ``relu`` with a
            SiLU decoder, gives the int8 encoder most of an all-ReLU model's speed for a smaller loss of ELBO;
            ``silu`` gives the all-SiLU model of earlier versions (docs/benchmarks.md).
        likelihood: ``bernoulli`` (pixels in [0, 1]), ``gaussian`` (unit variance) or ``gaussian_learned``
            (one learned variance for all pixels).
        variational: False trains the plain-autoencoder limit: s = 0 (no sampling; the encoder's log-variance is
            fixed at ``PLAIN_LOGVAR``) and no KL term in the loss. For measuring what the variational part buys;
            its ``kl`` score is only ½|m|² plus a constant, and generation from the prior is meaningless.
    """

    channels: int | None = None
    height: int | None = None
    width: int | None = None
    latent_dim: int | None = None
    widths: tuple[int, ...] | None = None
    hidden: int | None = None
    likelihood: str = options.LIKELIHOOD
    refine: int = options.REFINE
    activation: str = options.ACTIVATION
    encoder_activation: str | None = options.ENCODER_ACTIVATION
    variational: bool = True

    def __post_init__(self) -> None:
        if self.channels is not None or self.height is not None or self.width is not None:
            InputContract(self.channels or 1, self.height or 28, self.width or 28)  # validates channels and size
        if self.widths is not None:
            object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
            if not self.widths or any(w < 1 for w in self.widths) or len(self.widths) > 6:
                raise ValueError(f"widths must be 1 to 6 positive channel counts, got {self.widths}")
        if self.latent_dim is not None and not 1 <= self.latent_dim <= 1024:
            raise ValueError(f"latent_dim must be in 1..1024, got {self.latent_dim}")
        if self.hidden is not None and self.hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {self.hidden}")
        if self.refine < 0:
            raise ValueError(f"refine must be >= 0 channels, got {self.refine}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if self.encoder_activation is not None and self.encoder_activation not in ACTIVATIONS:
            raise ValueError(f"encoder_activation must be one of {', '.join(ACTIVATIONS)} or None, "
                             f"got {self.encoder_activation!r}")
        if self.likelihood not in options.LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {', '.join(options.LIKELIHOODS)}; got {self.likelihood!r}")

    @property
    def is_resolved(self) -> bool:
        return all(getattr(self, f) is not None for f in SHAPE_FIELDS + RULE_FIELDS)

    def unset(self) -> tuple[str, ...]:
        """The fields left to the data and the rule."""
        return tuple(f for f in SHAPE_FIELDS + RULE_FIELDS if getattr(self, f) is None)

    def resolved(self, contract: InputContract | None = None) -> "ModelConfig":
        """This config with the unset fields filled: channels and size from ``contract`` (without one, the
        embedded digits' 1x28x28), then widths, latent size and hidden width by :func:`architecture_for`."""
        shape = dict(zip(SHAPE_FIELDS, contract.shape if contract is not None else (1, 28, 28)))
        filled = {f: getattr(self, f) if getattr(self, f) is not None else shape[f] for f in SHAPE_FIELDS}
        rule = architecture_for(filled["channels"], filled["height"], filled["width"])
        filled.update({f: getattr(self, f) if getattr(self, f) is not None else rule[f] for f in RULE_FIELDS})
        return replace(self, **filled)

    def _need_resolved(self) -> "ModelConfig":
        if not self.is_resolved:
            raise ValueError(f"the model config leaves {', '.join(self.unset())} to the data; call resolved() first")
        return self

    @property
    def contract(self) -> InputContract:
        cfg = self._need_resolved()
        return InputContract(int(cfg.channels or 0), int(cfg.height or 0), int(cfg.width or 0))

    def feature_sizes(self) -> list[tuple[int, int]]:
        """Spatial size (H, W) before each stage and after the last: stride 2, padding 1, kernel 3."""
        cfg = self._need_resolved()
        sizes = [(int(cfg.height or 0), int(cfg.width or 0))]
        for _ in cfg.widths or ():
            h, w = sizes[-1]
            sizes.append(((h + 1) // 2, (w + 1) // 2))
        return sizes

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["widths"] = list(self.widths) if self.widths is not None else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelConfig":
        """Read a stored config. One stored before ``encoder_activation`` existed had its encoder use
        ``activation``: it is read as None (not today's default), so old checkpoints keep their architecture."""
        widths = data.get("widths")
        return cls(**{"encoder_activation": None, **data, "widths": tuple(widths) if widths is not None else None})


class Encoder(nn.Module):
    """x (N, C, H, W) -> mu (N, D), logvar (N, D), KL from the prior (N,)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg = cfg if cfg.is_resolved else cfg.resolved()
        layers: list[nn.Module] = []
        c_in = cfg.channels
        act = ACTIVATIONS[cfg.encoder_activation or cfg.activation]
        for c_out in cfg.widths:
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), act()]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        h, w = cfg.feature_sizes()[-1]
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(c_in * h * w, cfg.hidden), act())
        self.variational = cfg.variational
        self.head = nn.Linear(cfg.hidden, (2 if cfg.variational else 1) * cfg.latent_dim)
        self.latent_dim = cfg.latent_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.fc(self.features(x))  # (N, hidden)
        if self.variational:
            mu, logvar = self.head(h).chunk(2, dim=1)  # (N, D) each
        else:
            mu = self.head(h)  # (N, D)
            logvar = torch.zeros_like(mu) + PLAIN_LOGVAR  # s -> 0: the plain-autoencoder limit
        return mu, logvar, kl_divergence(mu, logvar)


class Decoder(nn.Module):
    """t (N, D) -> mean image (N, C, H, W) in [0, 1] and the likelihood parameter.

    The parameter is the Bernoulli logits (N, C, H, W) or the Gaussian log-variance (N, 1).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg = cfg if cfg.is_resolved else cfg.resolved()
        sizes = cfg.feature_sizes()
        self.start = (cfg.widths[-1],) + sizes[-1]
        self.fc = nn.Sequential(
            nn.Linear(cfg.latent_dim, cfg.hidden), ACTIVATIONS[cfg.activation](),
            nn.Linear(cfg.hidden, cfg.widths[-1] * sizes[-1][0] * sizes[-1][1]), ACTIVATIONS[cfg.activation](),
        )
        layers: list[nn.Module] = []
        outs = list(reversed(cfg.widths[:-1])) + [cfg.refine or cfg.channels]
        c_in = cfg.widths[-1]
        for stage, c_out in enumerate(outs):
            (h_in, w_in), (h_out, w_out) = sizes[-1 - stage], sizes[-2 - stage]
            pad = (h_out - (2 * h_in - 1), w_out - (2 * w_in - 1))  # output_padding that restores the size
            layers.append(nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=pad))
            if stage < len(outs) - 1 or cfg.refine:
                layers.append(ACTIVATIONS[cfg.activation]())
            c_in = c_out
        if cfg.refine:
            layers.append(nn.Conv2d(cfg.refine, cfg.channels, 3, padding=1))
        self.deconv = nn.Sequential(*layers)
        self.likelihood = cfg.likelihood
        # Gaussian log-variance: learned for gaussian_learned, fixed at 0 (unit variance) for gaussian.
        logvar = torch.zeros(1, 1)
        if cfg.likelihood == "gaussian_learned":
            self.obs_logvar = nn.Parameter(logvar)
        else:
            self.register_buffer("obs_logvar", logvar)

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.fc(t).reshape((-1,) + self.start)  # (N, C_last, h, w)
        logits = self.deconv(h)  # (N, C, H, W)
        mean = torch.sigmoid(logits)
        if self.likelihood == "bernoulli":
            return mean, logits
        return mean, self.obs_logvar.expand(t.shape[0], 1)  # (N, 1)


class VAE(nn.Module):
    """Encoder q(t|x) and decoder p(x|t); the ELBO and its reparameterisation live in ``objectives``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg = cfg.resolved() if not cfg.is_resolved else cfg
        self.config = cfg
        self.variational = cfg.variational
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    def decode(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decoder(t)

    def log_likelihood(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log p(x|t) per image (N,) for codes t (N, D)."""
        mean, param = self.decode(t)
        return log_likelihood(x, self.config.likelihood, mean, param)
