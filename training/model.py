"""The convolutional VAE: encoder q(t|x) = N(mu(x), diag exp(logvar(x))), decoder p(x|t), prior N(0, I)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
from torch import nn

from edgevae import options
from edgevae.runtime.contract import InputContract

from .objectives import kl_divergence, log_likelihood

# Activation between layers, by ModelConfig.activation (and encoder_activation); names from edgevae.options.
ACTIVATIONS: dict[str, type[nn.Module]] = {"silu": nn.SiLU, "relu": nn.ReLU}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a VAE; stored with the weights in every checkpoint.

    Args:
        channels: image channels, 1 or 3.
        height, width: image size (>= 8).
        latent_dim: size D of the latent code t.
        widths: channels of the stride-2 convolution stages (each halves the image, rounding up).
        hidden: width of the fully connected layer between the convolutions and the latent code.
        refine: channels of an extra 3x3 convolution at full resolution that forms the decoder's output
            (0: none; the last transposed convolution then outputs the image directly).
        activation: ``silu`` or ``relu`` between layers. ReLU folds into int8 convolutions, so an int8
            variant of a ReLU model runs faster; SiLU reaches a better held-out ELBO (docs/benchmarks.md).
        encoder_activation: the encoder's activation when it should differ from ``activation`` (None: the
            same). ``relu`` here with a SiLU decoder gives the int8 encoder most of the ReLU model's speed for a
            smaller loss of ELBO (docs/benchmarks.md).
        likelihood: ``bernoulli`` (pixels in [0, 1]), ``gaussian`` (unit variance) or ``gaussian_learned``
            (one learned variance for all pixels).
    """

    channels: int = 1
    height: int = 28
    width: int = 28
    latent_dim: int = options.LATENT_DIM
    widths: tuple[int, ...] = options.WIDTHS
    hidden: int = options.HIDDEN
    likelihood: str = options.LIKELIHOOD
    refine: int = options.REFINE
    activation: str = options.ACTIVATION
    encoder_activation: str | None = None

    def __post_init__(self) -> None:
        InputContract(self.channels, self.height, self.width)  # validates channels and size
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if not 1 <= self.latent_dim <= 1024:
            raise ValueError(f"latent_dim must be in 1..1024, got {self.latent_dim}")
        if not self.widths or any(w < 1 for w in self.widths) or len(self.widths) > 6:
            raise ValueError(f"widths must be 1 to 6 positive channel counts, got {self.widths}")
        if self.hidden < 1:
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
    def contract(self) -> InputContract:
        return InputContract(self.channels, self.height, self.width)

    def feature_sizes(self) -> list[tuple[int, int]]:
        """Spatial size (H, W) before each stage and after the last: stride 2, padding 1, kernel 3."""
        sizes = [(self.height, self.width)]
        for _ in self.widths:
            h, w = sizes[-1]
            sizes.append(((h + 1) // 2, (w + 1) // 2))
        return sizes

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["widths"] = list(self.widths)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelConfig":
        return cls(**{**data, "widths": tuple(data["widths"])})


class Encoder(nn.Module):
    """x (N, C, H, W) -> mu (N, D), logvar (N, D), KL from the prior (N,)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = cfg.channels
        act = ACTIVATIONS[cfg.encoder_activation or cfg.activation]
        for c_out in cfg.widths:
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), act()]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        h, w = cfg.feature_sizes()[-1]
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(c_in * h * w, cfg.hidden), act())
        self.head = nn.Linear(cfg.hidden, 2 * cfg.latent_dim)
        self.latent_dim = cfg.latent_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.fc(self.features(x))  # (N, hidden)
        mu, logvar = self.head(h).chunk(2, dim=1)  # (N, D) each
        return mu, logvar, kl_divergence(mu, logvar)


class Decoder(nn.Module):
    """t (N, D) -> mean image (N, C, H, W) in [0, 1] and the likelihood parameter.

    The parameter is the Bernoulli logits (N, C, H, W) or the Gaussian log-variance (N, 1).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
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
    """Encoder + decoder with the reparameterisation trick t = mu + exp(logvar / 2) * eps."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return mu + torch.exp(0.5 * logvar) * eps

    def decode(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decoder(t)

    def log_likelihood(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log p(x|t) per image (N,) for codes t (N, D)."""
        mean, param = self.decode(t)
        return log_likelihood(x, self.config.likelihood, mean, param)

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, ...]:
        mu, logvar, kl = self.encode(x)
        mean, param = self.decode(self.reparameterize(mu, logvar, eps))
        return mu, logvar, kl, mean, param
