"""ELBO terms and outlier scores in PyTorch: the twins of ``edgevae.runtime.scores`` (tests keep them equal)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, NamedTuple, Protocol

import torch
import torch.nn.functional as F

from edgevae.runtime.methods import method as registry_method
from edgevae.runtime.options import DEFECT_WINDOW, SMOOTH_SIGMA

if TYPE_CHECKING:
    from edgevae.runtime.maps import Combination, MapStats

_LOG_2PI = math.log(2.0 * math.pi)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row (N,), in nats."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0).sum(dim=-1)


def log_likelihood(x: torch.Tensor, likelihood: str, x_mean: torch.Tensor, x_param: torch.Tensor) -> torch.Tensor:
    """log p(x|t) per image (N,), summed over pixels."""
    n = x.shape[0]
    if likelihood == "bernoulli":
        return -F.binary_cross_entropy_with_logits(x_param, x, reduction="none").reshape(n, -1).sum(dim=1)
    logvar = x_param.reshape(n)
    sq = (x - x_mean).pow(2).reshape(n, -1).sum(dim=1)
    pixels = x[0].numel()
    return -0.5 * sq * torch.exp(-logvar) - 0.5 * pixels * (logvar + _LOG_2PI)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The reparameterisation trick: t = mu + exp(logvar / 2) * eps, a draw of q(t|x) that gradients pass through.
    ``eps`` broadcasts against ``mu`` (e.g. (K, 1, D) noise shared by every image against (N, D) means)."""
    return mu + torch.exp(0.5 * logvar) * eps


class LatentVariableModel(Protocol):
    """What the ELBO needs of a model: q(t|x) and log p(x|t). ``VAE`` is one; design experiments add others."""

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def log_likelihood(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...


class Autoencoder(LatentVariableModel, Protocol):
    """What the reconstruction scores need as well: the decoder's mean image and likelihood parameter."""

    def decode(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class ELBOTerms(NamedTuple):
    """One reparameterised sample of the ELBO per image: -log p(x|t) (N,), KL (N,), and q's mean and log-variance."""

    nll: torch.Tensor
    kl: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    variational: bool = True

    def loss_sum(self, beta: float = 1.0) -> torch.Tensor:
        """Sum over the batch of -log p(x|t) + beta * KL (beta = 1: the negative ELBO); a plain autoencoder
        (``variational`` False) minimises -log p(x|t) alone. A sum, not a mean: a process of a distributed run
        holds a share of the global batch, and the loop divides by the global batch size."""
        return (self.nll + beta * self.kl).sum() if self.variational else self.nll.sum()


def elbo_terms(model: LatentVariableModel, x: torch.Tensor, gen: torch.Generator | None,
               eps: torch.Tensor | None = None) -> ELBOTerms:
    """The ELBO of a batch with the reparameterisation trick: t = mu + exp(logvar / 2) * eps, eps ~ N(0, I) drawn
    from ``gen`` (or given as ``eps`` (N, D)), one sample per image. Training and evaluation both use it."""
    mu, logvar, kl = model.encode(x)  # (N, D), (N, D), (N,)
    if eps is None:
        if gen is None:
            raise ValueError("elbo_terms needs a generator or the noise eps")
        eps = torch.randn(mu.shape, generator=gen)
    eps = eps.to(mu.device)
    t = reparameterize(mu, logvar, eps)
    return ELBOTerms(nll=-model.log_likelihood(x, t), kl=kl, mu=mu, logvar=logvar,
                     variational=bool(getattr(model, "variational", True)))


def reconstruction_error(x: torch.Tensor, x_mean: torch.Tensor) -> torch.Tensor:
    """Sum of squared differences per image (N,)."""
    return (x - x_mean).pow(2).reshape(x.shape[0], -1).sum(dim=1)


def relative_reconstruction_error(x: torch.Tensor, x_mean: torch.Tensor) -> torch.Tensor:
    """sum (x - x_mean)^2 / (sum x^2 + sum x_mean^2 + 1) per image (N,)."""
    xf, mf = x.reshape(x.shape[0], -1), x_mean.reshape(x.shape[0], -1)
    return (xf - mf).pow(2).sum(1) / (xf.pow(2).sum(1) + mf.pow(2).sum(1) + 1.0)


def smoothed_residual(x: torch.Tensor, x_mean: torch.Tensor, sigma: float) -> torch.Tensor:
    """The residual x - x_mean after a Gaussian blur per channel (conv2d, zero padding): (N, C, H, W)."""
    n, c, h, w = x.shape
    radius = int(math.ceil(4.0 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (offsets / sigma) ** 2)
    g = (g / g.sum()).to(x.dtype)
    kernel = (g[:, None] * g[None, :])[None, None]  # (1, 1, k, k): separable Gaussian
    return F.conv2d((x - x_mean).reshape(n * c, 1, h, w), kernel, padding=radius).reshape(n, c, h, w)


def smoothed_relative_reconstruction_error(x: torch.Tensor, x_mean: torch.Tensor, sigma: float) -> torch.Tensor:
    """``relative_reconstruction_error`` of the residual after a Gaussian blur (depthwise conv2d, zero padding)."""
    n = x.shape[0]
    r = smoothed_residual(x, x_mean, sigma)
    xf, mf = x.reshape(n, -1), x_mean.reshape(n, -1)
    return r.reshape(n, -1).pow(2).sum(1) / (xf.pow(2).sum(1) + mf.pow(2).sum(1) + 1.0)


def anomaly_map(x: torch.Tensor, x_mean: torch.Tensor, maps: "MapStats") -> torch.Tensor:
    """Per-pixel anomaly maps (N, H, W): the smoothed residual's magnitude over channels, standardised by the
    normal images' per-pixel mean and spread (``edgevae.runtime.maps``)."""
    magnitude = smoothed_residual(x, x_mean, maps.sigma).pow(2).sum(dim=1).sqrt()  # (N, H, W)
    return (magnitude - torch.from_numpy(maps.mean)) / torch.from_numpy(maps.spread)


def local_score(maps_nhw: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of each map's k largest values (N,)."""
    return maps_nhw.reshape(maps_nhw.shape[0], -1).topk(k, dim=1).values.mean(dim=1)


def iwae_nll(model: LatentVariableModel, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Importance-weighted estimate of -log p(x) per image (N,) with shared noise ``eps`` (K, D)."""
    mu, logvar, _ = model.encode(x)
    k, n = eps.shape[0], x.shape[0]
    e = eps[:, None, :].expand(k, n, eps.shape[1])
    t = reparameterize(mu[None], logvar[None], e)  # (K, N, D)
    x_rep = x.unsqueeze(0).expand((k,) + x.shape).reshape((k * n,) + x.shape[1:])
    ll = model.log_likelihood(x_rep, t.reshape(k * n, -1)).reshape(k, n)
    log_w = ll + (0.5 * (e.pow(2) - t.pow(2) + logvar[None])).sum(-1)
    return -(torch.logsumexp(log_w, dim=0) - math.log(k))


def negative_elbo(model: LatentVariableModel, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Monte-Carlo negative ELBO per image (N,) with shared noise ``eps`` (K, D), as the runtime computes it."""
    mu, logvar, kl = model.encode(x)
    k, n = eps.shape[0], x.shape[0]
    t = reparameterize(mu[None], logvar[None], eps[:, None, :]).reshape(k * n, -1)  # (K*N, D)
    x_rep = x.unsqueeze(0).expand((k,) + x.shape).reshape((k * n,) + x.shape[1:])
    ll = model.log_likelihood(x_rep, t).reshape(k, n)
    return kl - ll.mean(dim=0)


def _local(x: torch.Tensor, x_mean: torch.Tensor, smooth_sigma: float, maps: "MapStats | None") -> torch.Tensor:
    if maps is None:
        raise ValueError("the local score needs the map statistics (maps)")
    return local_score(anomaly_map(x, x_mean, maps), maps.top_k)


# The PyTorch twins of the registry's reconstruction methods (edgevae.runtime.methods): f(x, x_mean, sigma, maps).
RECONSTRUCTION_TWINS: dict[str, Callable[[torch.Tensor, torch.Tensor, float, "MapStats | None"], torch.Tensor]] = {
    "recon": lambda x, m, sigma, maps: reconstruction_error(x, m),
    "rel_recon": lambda x, m, sigma, maps: relative_reconstruction_error(x, m),
    "smooth_recon": lambda x, m, sigma, maps: smoothed_relative_reconstruction_error(x, m, sigma),
    "local": _local,
}


def defect_score(logits: torch.Tensor, window: int) -> torch.Tensor:
    """The largest mean of each image's defect logits (N, 1, H, W) over a window x window square (clipped to the
    image), (N,), in float64 as the runtime sums."""
    kh, kw = min(window, logits.shape[-2]), min(window, logits.shape[-1])
    return F.avg_pool2d(logits.double(), (kh, kw), stride=1).amax(dim=(1, 2, 3))


@torch.no_grad()
def score(model: Autoencoder, x: torch.Tensor, method: str, eps: torch.Tensor | None = None,
          smooth_sigma: float = SMOOTH_SIGMA, maps: "MapStats | None" = None,
          combination: "Combination | None" = None, noise: "dict[str, torch.Tensor] | None" = None,
          defect_head: torch.nn.Module | None = None, defect_window: int = DEFECT_WINDOW) -> torch.Tensor:
    """Outlier score per image (N,) with the runtime's definitions; ``eps`` (K, D) for the Monte-Carlo methods.

    ``local`` needs the map statistics ``maps``; ``defect`` the defect head; ``combined`` also needs
    ``combination`` and, for Monte-Carlo parts, their noise by method in ``noise``. What each method is comes
    from the registry.
    """
    spec = registry_method(method)
    if spec.kind == "combination":
        if combination is None:
            raise ValueError(f"the {method} score needs its parts' reference scores (combination)")
        parts = {p: score(model, x, p, (noise or {}).get(p), smooth_sigma, maps, defect_head=defect_head,
                          defect_window=defect_window).numpy() for p in combination.parts}
        return torch.from_numpy(combination.statistic(parts))
    if spec.kind == "defect":
        if defect_head is None:
            raise ValueError("the defect score needs the defect head")
        return defect_score(defect_head(x), defect_window).float()
    if spec.kind == "monte_carlo":
        if eps is None:
            raise ValueError(f"the {method} score needs the shared noise eps (K, D)")
        value = iwae_nll(model, x, eps) if spec.importance else negative_elbo(model, x, eps)
        return -value if spec.negate else value
    mu, logvar, kl = model.encode(x)
    if spec.kind == "encoder":
        return kl
    return RECONSTRUCTION_TWINS[method](x, model.decode(mu)[0], smooth_sigma, maps)
