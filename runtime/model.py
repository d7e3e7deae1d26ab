"""The maths of a loaded bundle: encode, decode, reconstruct, generate, score.

:class:`Scorer` computes everything a bundle's graphs can give without a calibration (latent codes, images,
raw scores); :class:`Model` adds the calibration (p-values, thresholds, flags). Both run their graphs through
a :class:`~edgevae.runtime.runner.GraphRunner`; :func:`edgevae.runtime.load` builds a Model from a bundle.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
from numpy.typing import NDArray

from .contract import InputContract
from .errors import ArrayInputError
from .maps import MAGNITUDES, Combination, MapStats, defect_score, residual_magnitude, sigmoid
from .methods import METHODS, RECONSTRUCTION_METHODS, SCORE_METHODS, method as registry_method
from .manifest import DECODER_INPUT, DEFECT_INPUT, DEFECT_OUTPUT, ENCODER_INPUT, ENCODER_OUTPUTS, Manifest, ScoringSpec
from .runner import GraphInfo, GraphRunner
from .tiles import (
    Positional,
    TiledScore,
    Tiling,
    aggregate,
    calibrated_tiles,
    image_tile_scores,
    packed_tile_scores,
    positional_tile_scores,
    size_adjusted_fpr,
    size_adjusted_p,
    stitch,
    tile_view,
)
from .scores import (
    Residuals,
    ScoreResult,
    log_likelihood,
    log_prior_over_posterior,
    logmeanexp,
    p_values,
    prior_noise,
    threshold_at_fpr,
    warn_if_unpromisable,
)

F32 = NDArray[np.float32]
# Largest number of latent codes sent to the decoder in one call by the Monte-Carlo scores, and of decoded values
# (codes x C x H x W) per call: the second bounds memory for large images (2**22 float32 values are 16 MB an array).
DECODE_CHUNK = 4096
DECODE_VALUES = 1 << 22


class Posterior(NamedTuple):
    """q(t|x) of each image: mean (N, D), log-variance (N, D) and KL from the prior (N,), in nats."""

    mu: F32
    logvar: F32
    kl: F32


class Scorer:
    """A bundle's graphs and the score maths, without a calibration.

    Methods accept arrays in any layout the input contract accepts (uint8 or float in [0, 1]); they are
    validated before they reach onnxruntime. Safe to use from several threads at once. ``close()`` (or
    ``with``) shuts the runner's slice pool down.

    Args:
        spec: input contract, latent size, likelihood and score settings.
        runner: the encoder and decoder sessions.
        noise: the shared prior noise (K, D) of Monte-Carlo methods as a bundle stores it; methods not given
            draw it from ``spec.seed`` (the same values: export writes what the seed gives).
        maps: the per-pixel statistics of anomaly maps (``anomaly_map``, the ``local`` score); None in bundles
            made before them.
        combination: the parts and reference scores of the ``combined`` score; None in bundles made before it.
    """

    def __init__(self, spec: ScoringSpec, runner: GraphRunner, noise: Mapping[str, F32] | None = None,
                 maps: MapStats | None = None, combination: Combination | None = None) -> None:
        self.spec = spec
        self.runner = runner
        self._noise = dict(noise or {})
        self.maps = maps
        self.combination = combination
        self.contract: InputContract = spec.contract
        self.latent_dim = spec.latent_dim
        self.likelihood = spec.likelihood
        self._decoder_outputs = list(spec.decoder_outputs)
        self._encoder_outputs = list(ENCODER_OUTPUTS)

    def __enter__(self) -> "Scorer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the slice pool's threads."""
        self.runner.close()

    # --------------------------------------------------------------- introspection
    @property
    def providers(self) -> dict[str, list[str]]:
        """Providers each session actually runs on."""
        return self.runner.providers

    def graph_info(self) -> dict[str, GraphInfo]:
        return self.runner.graph_info()

    @property
    def slice_workers(self) -> int:
        """Concurrent graph calls a large batch (>= 64 images or codes) is split into (see :func:`load`)."""
        return self.runner.slice_workers

    # --------------------------------------------------------------- graphs
    def prepare(self, x: NDArray[Any]) -> F32:
        """Apply the input contract: validate and convert to float32 (N, C, H, W)."""
        return self.contract.prepare(x)

    def encode(self, x: NDArray[Any]) -> Posterior:
        """Run the encoder: ``Posterior(mu (N, D), logvar (N, D), kl (N,))``.

        Raises:
            ArrayInputError: the images do not fit the input contract.
        """
        return self._encode(self.prepare(x))

    def _encode(self, xb: F32) -> Posterior:
        mu, logvar, kl = self.runner.run_encoder(self._encoder_outputs, ENCODER_INPUT, xb)
        return Posterior(mu, logvar, kl)

    def kl(self, x: NDArray[Any]) -> F32:
        """KL(q(t|x) || N(0, I)) per image, in nats, computed inside the encoder graph."""
        return self.encode(x).kl

    def _check_latents(self, t: NDArray[Any]) -> F32:
        t = np.asarray(t)
        if t.ndim != 2 or t.shape[1] != self.latent_dim:
            raise ArrayInputError(f"latent codes must have shape (N, {self.latent_dim}), got {t.shape}")
        if t.dtype != np.float32:
            if not np.issubdtype(t.dtype, np.floating):
                raise ArrayInputError(f"latent codes must be float, got dtype {t.dtype}")
            t = t.astype(np.float32)
        if not np.isfinite(t.sum()):  # one reduction; NaN or Inf anywhere makes the sum non-finite
            if not np.isfinite(t).all():
                raise ArrayInputError("latent codes contain NaN or Inf")
        return np.ascontiguousarray(t)

    def decode_params(self, t: NDArray[Any]) -> tuple[F32, F32]:
        """Decode latent codes (N, D): (mean image (N, C, H, W), likelihood parameter)."""
        mean, param = self.runner.run_decoder(self._decoder_outputs, DECODER_INPUT, self._check_latents(t))
        return mean, param

    def decode(self, t: NDArray[Any]) -> F32:
        """Decoded mean images (N, C, H, W) in [0, 1]."""
        mean: F32 = self.runner.run_decoder(self._decoder_outputs[:1], DECODER_INPUT, self._check_latents(t))[0]
        return mean

    def reconstruct(self, x: NDArray[Any]) -> F32:
        """Decode the posterior mean of each image: (N, C, H, W)."""
        return self.decode(self.encode(x).mu)

    def generate(self, n: int, seed: int = 0) -> F32:
        """Sample t ~ N(0, I) with ``numpy.random.default_rng(seed)`` and decode: (n, C, H, W)."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        t = np.random.default_rng(seed).standard_normal((n, self.latent_dim), dtype=np.float32)
        return self.decode(t)

    @property
    def has_defect_head(self) -> bool:
        """Whether the bundle has a defect head (``defect.onnx``): the defect map and the ``defect`` score."""
        return self.runner.defect is not None

    @property
    def computable_methods(self) -> tuple[str, ...]:
        """Score methods this scorer can compute: all, less those that need map statistics, a defect head or a
        combination's references the bundle does not store."""
        return tuple(name for name, m in METHODS.items()
                     if not (m.needs_maps and self.maps is None) and not (m.kind == "combination" and self.combination is None)
                     and not ("defect" in m.graphs and not self.has_defect_head)
                     and not (m.kind == "combination" and "defect" in self.spec.combined_parts
                              and not self.has_defect_head))

    # --------------------------------------------------------------- defect head
    def defect_logits(self, x: NDArray[Any]) -> F32:
        """The defect head's output for each image: logits (N, H, W) (``defect_map`` gives probabilities).

        Raises:
            ArrayInputError: the images do not fit the input contract.
            ValueError: the bundle has no defect head.
        """
        self.runner.defect_session(False)
        return self._defect_logits(self.prepare(x))

    def _defect_logits(self, xb: F32) -> F32:
        out = self.runner.map_slices(
            lambda part, in_slice: self.runner.defect_session(in_slice).run([DEFECT_OUTPUT], {DEFECT_INPUT: part}), xb)
        logits: F32 = out[0].reshape(xb.shape[0], xb.shape[2], xb.shape[3])
        return logits

    def defect_map(self, x: NDArray[Any]) -> F32:
        """Per-pixel defect probabilities (N, H, W) in [0, 1] from the defect head: the sigmoid of its logits.

        Raises:
            ArrayInputError: the images do not fit the input contract.
            ValueError: the bundle has no defect head.
        """
        return sigmoid(self.defect_logits(x))

    # --------------------------------------------------------------- maps
    def with_maps(self, maps: MapStats, combination: Combination | None = None) -> "Scorer":
        """A scorer over the same sessions with these map statistics and combined-score references."""
        return Scorer(self.spec, self.runner, self._noise, maps, combination)

    def _map_stats(self) -> MapStats:
        if self.maps is None:
            raise ValueError("this bundle stores no anomaly-map statistics (it predates them); re-export it with this "
                             "edgevae for anomaly maps and the local and combined scores")
        return self.maps

    def anomaly_map(self, x: NDArray[Any]) -> F32:
        """Per-pixel anomaly maps (N, H, W): each image's smoothed residual against its reconstruction,
        standardised by what normal training images show at that pixel (``edgevae.runtime.maps``).

        Raises:
            ArrayInputError: the images do not fit the input contract.
            ValueError: the bundle stores no map statistics.
        """
        return self.map_and_reconstruction(x)[0]

    def residual_magnitudes(self, x: NDArray[Any]) -> F32:
        """The anomaly map before standardisation (N, H, W): each image's smoothed residual magnitude at the map
        statistics' width (what a fixed camera's tiles stitch, ``edgevae.runtime.tiles``).

        Raises: as :meth:`anomaly_map`.
        """
        stats = self._map_stats()
        xb = self.prepare(x)
        return residual_magnitude(xb, self.decode(self._encode(xb).mu), stats.sigma)

    def map_and_reconstruction(self, x: NDArray[Any]) -> tuple[F32, F32]:
        """``anomaly_map`` and the reconstructions it compares with: (N, H, W) and (N, C, H, W)."""
        stats = self._map_stats()
        xb = self.prepare(x)
        mean = self.decode(self._encode(xb).mu)
        return stats.standardise(residual_magnitude(xb, mean, stats.sigma)), mean

    # --------------------------------------------------------------- scores
    def noise(self, method: str, samples: int | None = None) -> F32 | None:
        """The shared prior noise (K, D) of a Monte-Carlo method (``samples`` overrides K); None for the others."""
        k = self.spec.samples(method)
        if not k:
            return None
        if method in self._noise and samples in (None, k):
            return self._noise[method]
        return prior_noise(samples or k, self.latent_dim, self.spec.seed)

    def raw_scores(self, x: NDArray[Any], method: str | None = None, *, samples: int | None = None) -> F32:
        """Outlier scores (N,) without calibration; higher means more anomalous.

        Methods: ``kl`` (KL of q(t|x) from the prior), ``elbo`` (negative ELBO, Monte-Carlo), ``recon``
        (squared error of the decoded posterior mean), ``rel_recon`` (that error divided by the energy of
        the image and of its reconstruction), ``smooth_recon`` (``rel_recon`` of the residual after a
        Gaussian blur of ``spec.smooth_sigma`` pixels), ``iwae`` (importance-weighted estimate of -log p(x),
        nats), ``local`` (mean of the top of the anomaly map), ``combined`` (-log of the smallest p-value of
        its parts, ``spec.combined_parts``); the registry (``edgevae.runtime.methods``) says what each runs. The
        Monte-Carlo methods use the spec's K and seed unless ``samples`` overrides K; the noise is shared by all
        images, so scores are deterministic and independent of batching.

        Raises:
            ArrayInputError: the images do not fit the input contract.
            ValueError: unknown method or bad ``samples``.
        """
        method = method or self.spec.default_method
        spec = registry_method(method)
        if samples is not None and (not isinstance(samples, int) or samples < 1):
            raise ValueError(f"samples must be a positive integer, got {samples!r}")
        if spec.needs_maps:
            self._map_stats()
        if spec.kind == "combination":
            return self._combined(x, samples)
        if spec.kind == "defect":
            self.runner.defect_session(False)
            return defect_score(self._defect_logits(self.prepare(x)), self.spec.defect_window)
        xb = self.prepare(x)
        eps = self.noise(method, samples)
        one_sample = eps is not None and not spec.importance and eps.shape[0] == 1
        if spec.kind == "reconstruction" or one_sample:
            # Per image one encoder and one decoder pass: each slice of a large batch runs both graphs and
            # the score math in one worker, so no stage waits for the slowest slice of the one before and
            # the numpy part runs on every core as well.
            return self.runner.map_slices(lambda part, in_slice: [self._one_pass_score(part, method, eps, in_slice)],
                                          xb)[0]
        posterior = self._encode(xb)
        if eps is None:  # kind encoder: kl, which the encoder graph computes
            return posterior.kl
        if not spec.importance:  # the Monte-Carlo ELBO
            ll, _ = self._monte_carlo(xb, posterior, eps, importance=False)
            # the mean over the K samples, as add.reduce + divide (what ndarray.mean does, without its overhead)
            mean_ll = np.add.reduce(ll, axis=0, dtype=np.float32) / np.float32(ll.shape[0])
            out: F32 = np.subtract(posterior.kl, mean_ll, dtype=np.float32)
            return np.negative(out) if spec.negate else out
        ll, log_w_prior = self._monte_carlo(xb, posterior, eps, importance=True)  # (K, N) each
        return (-logmeanexp(ll + log_w_prior, axis=0)).astype(np.float32)

    def _one_pass_score(self, xb: F32, method: str, eps: F32 | None, in_slice: bool) -> F32:
        """Scores that decode one code per image: the reconstruction errors and the one-sample ELBO."""
        encoder, decoder = self.runner.sessions(in_slice)
        if eps is not None:  # the one-sample ELBO, no sample axis: the cheapest Monte-Carlo score on a device
            mu, logvar, kl = encoder.run(self._encoder_outputs, {ENCODER_INPUT: xb})
            mean, param = decoder.run(self._decoder_outputs, {DECODER_INPUT: _one_sample_code(mu, logvar, eps)})
            elbo = self._one_sample_elbo(xb, kl, mean, param)
            return np.negative(elbo) if METHODS[method].negate else elbo
        return self._from_reconstruction(xb, self._reconstruct_in(xb, in_slice), method)

    def _one_sample_elbo(self, xb: F32, kl: F32, mean: F32, param: F32) -> F32:
        """KL - log p(x|t) for one decoded code t per image."""
        elbo: F32 = np.subtract(kl, log_likelihood(xb, self.likelihood, mean, param), dtype=np.float32)
        return elbo

    def _reconstruct_in(self, xb: F32, in_slice: bool) -> F32:
        """The decoded posterior means of prepared images, on the sessions of a slice or the shared ones."""
        encoder, decoder = self.runner.sessions(in_slice)
        mu = encoder.run(self._encoder_outputs[:1], {ENCODER_INPUT: xb})[0]
        mean: F32 = decoder.run(self._decoder_outputs[:1], {DECODER_INPUT: mu})[0]
        return mean

    def _from_reconstruction(self, xb: F32, mean: F32, method: str) -> F32:
        """A score that compares images with their reconstructions (the decoded posterior means)."""
        return self._from_reconstructions(xb, mean, (method,))[0]

    def _from_reconstructions(self, xb: F32, mean: F32, methods: Sequence[str], magnitudes: bool = False) -> list[F32]:
        """Several such scores at once, each the registry's function of one shared :class:`Residuals` (what two
        methods both need is computed once); with ``magnitudes``, :meth:`residual_magnitudes` of the same
        reconstructions after them."""
        if magnitudes or any(METHODS[m].needs_maps for m in methods):
            self._map_stats()
        shared = Residuals(xb, mean, self.spec.smooth_sigma, self.maps)
        out = [METHODS[m].resolve()(shared) for m in methods]
        if magnitudes:
            assert self.maps is not None
            same = self.maps.sigma == self.spec.smooth_sigma  # the smoothed residual is shared then
            out.append(residual_magnitude(xb, mean, self.maps.sigma, residual=shared.smoothed if same else None))
        return out

    def _combined(self, x: NDArray[Any], samples: int | None) -> F32:
        if self.combination is None:
            raise ValueError("this bundle stores no reference scores for the combined score (it predates it); "
                             "re-export it with this edgevae, or pass another method")
        return self.combination.statistic(self.combined_parts(x, samples))

    def combined_parts(self, x: NDArray[Any], samples: int | None = None, magnitudes: bool = False,
                       skip: Sequence[str] = ()) -> dict[str, F32]:
        """The raw scores of the parts of ``combined`` (``spec.combined_parts``), as it computes them: the parts
        that compare images with their reconstructions share one encoder and decoder pass, and a Monte-Carlo part
        draws ``spec.part_samples(part)`` samples (``samples`` overrides); a one-sample ELBO part joins the shared
        pass, its code decoded beside the means.

        With ``magnitudes``, the result also holds :meth:`residual_magnitudes` under ``MAGNITUDES`` (N, H, W): from
        the shared pass's reconstructions when there is one (a fixed camera's tiles need both), else computed.
        Parts named in ``skip`` are not computed (a fixed camera reads them from whole frames instead)."""
        xb = self.prepare(x)
        wanted = [p for p in self.spec.combined_parts if p not in skip]
        shared = [p for p in wanted if p in RECONSTRUCTION_METHODS]
        if magnitudes and not shared:
            return {**self.combined_parts(xb, samples, skip=skip), MAGNITUDES: self.residual_magnitudes(xb)}
        joining = [p for p in wanted if METHODS[p].draws_noise and not METHODS[p].importance
                   and (samples or self.spec.part_samples(p)) == 1]
        one = joining[0] if shared and joining else None
        eps = self.noise(one, 1) if one is not None else None
        parts: dict[str, F32] = {}
        if shared:
            def one_pass(part: F32, in_slice: bool) -> list[F32]:
                if eps is None or 2 * part.size > DECODE_VALUES:  # large images: two smaller decoder calls
                    scores = self._from_reconstructions(part, self._reconstruct_in(part, in_slice), shared, magnitudes)
                    return scores + ([] if one is None else [self._one_pass_score(part, one, eps, in_slice)])
                encoder, decoder = self.runner.sessions(in_slice)
                mu, logvar, kl = encoder.run(self._encoder_outputs, {ENCODER_INPUT: part})
                codes = np.concatenate([mu, _one_sample_code(mu, logvar, eps)])
                means, params = decoder.run(self._decoder_outputs, {DECODER_INPUT: codes})
                n = part.shape[0]
                elbo = self._one_sample_elbo(part, kl, means[n:], params[n:])
                negate = one is not None and METHODS[one].negate
                return (self._from_reconstructions(part, means[:n], shared, magnitudes)
                        + [np.negative(elbo) if negate else elbo])

            names = shared + ([MAGNITUDES] if magnitudes else []) + ([one] if one is not None else [])
            parts.update(zip(names, self.runner.map_slices(one_pass, xb)))
        extra = {MAGNITUDES: parts.pop(MAGNITUDES)} if magnitudes else {}
        for part in wanted:
            if part not in parts:
                k = samples or self.spec.part_samples(part)
                twin = _negated_twin(part, parts, self.spec, samples)
                parts[part] = np.negative(parts[twin]) if twin is not None else self.raw_scores(xb, part, samples=k or None)
        return {**parts, **extra}

    def _monte_carlo(self, xb: F32, posterior: Posterior, eps: F32, importance: bool = True) -> tuple[F32, F32]:
        """For t_k = mu + std * eps_k: log p(x|t_k) and (if ``importance``) log p(t_k) - log q(t_k|x), (K, N) each.

        Without ``importance`` the second array is empty.
        """
        mu, logvar = posterior.mu, posterior.logvar
        n, k = xb.shape[0], eps.shape[0]
        std = np.exp(np.float32(0.5) * logvar)
        ll = np.empty((k, n), dtype=np.float32)
        log_w_prior = np.empty((k if importance else 0, n), dtype=np.float32)
        per_chunk = max(1, min(DECODE_CHUNK, DECODE_VALUES // xb[0].size) // max(n, 1))
        for start in range(0, k, per_chunk):
            e = eps[start:start + per_chunk]  # (k', D)
            reps = e.shape[0]
            t = mu[None] + std[None] * e[:, None, :]  # (k', N, D)
            mean, param = self.decode_params(t.reshape(-1, self.latent_dim))
            ll[start:start + reps] = log_likelihood(xb, self.likelihood, mean, param).reshape(reps, n)
            if importance:
                log_w_prior[start:start + reps] = log_prior_over_posterior(e[:, None, :], t, logvar)
        return ll, log_w_prior


def _negated_twin(part: str, computed: Mapping[str, F32], spec: ScoringSpec, samples: int | None) -> str | None:
    """A computed part whose negative ``part`` is (``too_likely`` of ``elbo``: the same kind, noise and K), or None."""
    m = METHODS[part]
    if not m.negate:
        return None
    for name in computed:
        other = METHODS[name]
        if (other.kind == m.kind and other.samples_setting == m.samples_setting and not other.negate
                and other.importance == m.importance
                and (samples or spec.part_samples(name)) == (samples or spec.part_samples(part))):
            return name
    return None


def _one_sample_code(mu: F32, logvar: F32, eps: F32) -> F32:
    """t = mu + exp(logvar / 2) * eps_1: the code of the first noise row, per image (N, D)."""
    t: F32 = mu + np.exp(np.float32(0.5) * logvar) * eps[0]
    return t


class Model(Scorer):
    """A loaded bundle: its graphs, its manifest and the calibration that turns scores into p-values and flags.

    Create with :func:`edgevae.runtime.load`, which verifies the bundle first.

    Args:
        manifest: the bundle's validated manifest (calibration of the variant that is loaded).
        runner: the sessions of the bundle's graphs.
        path: the bundle folder, if loaded from one.
        variant: the edge variant the sessions run (``fp32`` for the plain ONNX graphs).
        noise: the Monte-Carlo noise the bundle stores (see :class:`Scorer`).
    """

    def __init__(self, manifest: Manifest, runner: GraphRunner, *, path: Path | None = None,
                 variant: str = "fp32", noise: Mapping[str, F32] | None = None, maps: MapStats | None = None,
                 combination: Combination | None = None, positional: Positional | None = None) -> None:
        super().__init__(manifest.scoring, runner, noise, maps, combination)
        self.manifest = manifest
        # a fixed camera's per-position statistics (tiling.positional): its local and combined tile scores read them
        self.positional = positional
        self.path = path
        self.variant = variant

    def __enter__(self) -> "Model":
        return self

    @property
    def methods(self) -> tuple[str, ...]:
        """Score methods this bundle calibrates."""
        return tuple(m for m in SCORE_METHODS if m in self.manifest.calibration)

    def score(self, x: NDArray[Any], method: str | None = None, *, fpr: float | None = None,
              threshold: float | None = None) -> ScoreResult:
        """Score images and compare them with the calibration.

        Args:
            x: images, any layout the input contract accepts.
            method: one of ``SCORE_METHODS``; default: the manifest's default method.
            fpr: target false-positive rate for the outlier flag (default: the calibrated one).
            threshold: explicit threshold; overrides ``fpr``.

        Returns:
            ScoreResult with scores, p-values, flags and the threshold used.

        Raises:
            ArrayInputError: the images do not fit the input contract.
            ValueError: unknown method, bad fpr, or a threshold that is not a finite number.
        """
        method = method or self.spec.default_method
        if threshold is not None and not math.isfinite(threshold):
            raise ValueError(f"threshold must be a finite number, got {threshold!r}")
        scores = self.raw_scores(x, method)
        cal = self.manifest.calibration[method]
        thr = self.threshold(method, fpr) if threshold is None else float(threshold)
        return ScoreResult(
            method=method,
            scores=scores,
            p_values=cal.p_values(scores),
            is_outlier=scores > thr,
            threshold=thr,
        )

    # --------------------------------------------------------------- tiles
    @property
    def tiling(self) -> Tiling:
        """The bundle's tiling section.

        Raises:
            ValueError: the bundle is not tiled (it scores images resized to its input; train with ``--tile``).
        """
        if self.manifest.tiling is None:
            raise ValueError("this bundle is not tiled: it scores every image resized to its input "
                             f"({self.spec.contract.height}x{self.spec.contract.width}); train with --tile to score "
                             "large images by tiles")
        return self.manifest.tiling

    def read_tiled(self, path: Any, notes: list[str] | None = None) -> NDArray[np.uint8]:
        """An image file as a tiled bundle scores it: uint8 (C, H, W) at its own size shrunk by
        ``tiling.downscale``, converted to the bundle's channels.

        Raises:
            ValueError: the bundle is not tiled.
            ImageReadError: the file cannot be read as an image.
        """
        return self.spec.contract.read_native(path, self.tiling.downscale, notes)

    def score_tiled(self, image: NDArray[Any], method: str | None = None, *, fpr: float | None = None,
                    threshold: float | None = None) -> TiledScore:
        """Score one image of any size at least one tile large by tiles (``edgevae.runtime.tiles``): the
        largest tile score, with its p-value and flag against the image-level calibration.

        Args:
            image: (H, W), (C, H, W) or (H, W, C), uint8 or floats in [0, 1], at the size to score (already
                shrunk by ``tiling.downscale`` when the bundle has one: :meth:`read_tiled` does it for files).
            method: a calibrated method; default: the manifest's default.
            fpr: target false-positive rate for the flag (default: the calibrated one), for images of this size
                (the threshold and p-value are adjusted for the image's number of tiles: ``edgevae.runtime.tiles``).
            threshold: explicit image-level threshold; overrides ``fpr``.

        Raises:
            ValueError: the bundle is not tiled, or the method is not calibrated for whole images.
            ArrayInputError: the image has another channel count or is smaller than a tile.
        """
        tiling = self.tiling
        method = method or self.spec.default_method
        img = tile_view(image, self.spec.contract.channels)
        tiling.check_frame(img.shape[1], img.shape[2])
        grid = tiling.grid(img.shape[1], img.shape[2])
        scores = image_tile_scores(self, img, grid, (method,), positional=self.positional)
        return self._tiled_result(method, scores[method], fpr, threshold)

    def score_tiled_many(self, images: Sequence[NDArray[Any]], method: str | None = None, *,
                         fpr: float | None = None, threshold: float | None = None,
                         progress: Callable[[int], None] | None = None) -> list[TiledScore]:
        """:meth:`score_tiled` for several images, their tiles packed into shared batches of ``TILE_BATCH`` (small
        images then fill a batch together, as a plain batch of tiles would); one result per image, in order.
        ``progress`` is called with the number of tiles each batch scored (a large image is many batches).

        Raises: as :meth:`score_tiled`, for the first image that fails.
        """
        tiling = self.tiling
        method = method or self.spec.default_method
        views = [tile_view(im, self.spec.contract.channels) for im in images]
        for v in views:
            tiling.check_frame(v.shape[1], v.shape[2])
        grids = [tiling.grid(v.shape[1], v.shape[2]) for v in views]
        scores = packed_tile_scores(self, views, grids, method, progress=progress, positional=self.positional)
        return [self._tiled_result(method, s, fpr, threshold) for s in scores]

    def _tiled_result(self, method: str, tile_scores: NDArray[Any], fpr: float | None,
                      threshold: float | None) -> TiledScore:
        """The image's aggregate of its tile scores, with its p-value and flag (adjusted for its number of tiles)."""
        cal = self.tiling.calibration
        if cal is None or method not in cal.methods:
            raise ValueError(f"method {method!r} has no image-level calibration in this bundle; calibrated: "
                             f"{', '.join(cal.methods) if cal is not None else 'none'}")
        value = aggregate(tile_scores, self.tiling.aggregate)
        entry, n = cal.methods[method], len(tile_scores)
        n0 = calibrated_tiles(cal) or n
        if threshold is not None:
            thr = float(threshold)
        elif n == n0 and (fpr is None or fpr == cal.fpr):
            thr = entry.threshold
        else:
            thr = threshold_at_fpr(entry.sorted_scores, size_adjusted_fpr(fpr or cal.fpr, n, n0), entry.tail)
        p = size_adjusted_p(float(entry.p_values(np.array([value]))[0]), n, n0)
        return TiledScore(value, p, value > thr, thr, n)

    def tiled_maps(self, image: NDArray[Any]) -> dict[str, F32]:
        """Full-resolution maps (H, W) of one image by tiles, averaged where tiles overlap: ``anomaly`` (the VAE's
        standardised residual) and, with a defect head, ``defect`` (probabilities).

        Raises: as :meth:`score_tiled`.
        """
        tiling = self.tiling
        img = tile_view(image, self.spec.contract.channels)
        tiling.check_frame(img.shape[1], img.shape[2])
        grid = tiling.grid(img.shape[1], img.shape[2])
        if self.positional is not None:  # a fixed camera: the stitched residual, standardised per position
            maps = {"anomaly": positional_tile_scores(self, img, grid, (), self.positional)[1]}
        else:
            maps = {"anomaly": stitch(img, grid, self.anomaly_map)}
        if self.has_defect_head:
            maps["defect"] = stitch(img, grid, self.defect_map)
        return maps

    def threshold(self, method: str | None = None, fpr: float | None = None) -> float:
        """Threshold of a method at a false-positive rate (default: the calibrated rate).

        Warns (``CalibrationWarning``) when ``fpr`` is below 1 / (n + 1) for the n calibration scores.
        """
        method = method or self.spec.default_method
        if method not in self.manifest.calibration:
            raise ValueError(f"method {method!r} is not calibrated in this bundle; calibrated: {', '.join(self.methods)}")
        cal = self.manifest.calibration[method]
        if fpr is None or fpr == self.manifest.calibration_fpr:
            return cal.threshold
        warn_if_unpromisable(fpr, self.manifest.calibration_n or len(cal.scores), tail=cal.tail is not None)
        return threshold_at_fpr(cal.sorted_scores, fpr, cal.tail)


__all__: Sequence[str] = ("Model", "Posterior", "Scorer")
