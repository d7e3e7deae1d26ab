"""Load a bundle and run it: encode, decode, reconstruct, generate, score."""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from .contract import InputContract
from .errors import ArrayInputError, BundleError
from .manifest import (
    DECODER_FILE,
    DECODER_INPUT,
    ENCODER_FILE,
    ENCODER_INPUT,
    ENCODER_OUTPUTS,
    MANIFEST_FILE,
    Manifest,
)
from .scores import (
    SCORE_METHODS,
    MethodCalibration,
    ScoreResult,
    log_likelihood,
    log_prior_over_posterior,
    logmeanexp,
    p_values,
    prior_noise,
    reconstruction_error,
    relative_reconstruction_error,
    smoothed_relative_reconstruction_error,
    threshold_at_fpr,
)
from .sessions import Providers, create_session, resolve_providers

F32 = NDArray[np.float32]
# Largest number of latent codes sent to the decoder in one call by the Monte-Carlo scores.
DECODE_CHUNK = 4096
# Smallest slice of a batch a worker gets: batches under twice this run in one call.
MIN_SLICE = 32


@dataclass(frozen=True)
class GraphInfo:
    """Names, shapes and types of a session's inputs and outputs, for ``edgevae info``."""

    inputs: list[tuple[str, list[Any], str]]
    outputs: list[tuple[str, list[Any], str]]

    @classmethod
    def of(cls, session: ort.InferenceSession) -> "GraphInfo":
        return cls(
            inputs=[(a.name, list(a.shape), a.type) for a in session.get_inputs()],
            outputs=[(a.name, list(a.shape), a.type) for a in session.get_outputs()],
        )


class Model:
    """A loaded bundle: two onnxruntime sessions plus the manifest that describes them.

    Create with :func:`load`. Methods accept arrays in any layout the input contract accepts
    (uint8 or float in [0, 1]); they are validated before they reach onnxruntime. A model is safe to use
    from several threads at once.
    """

    def __init__(self, manifest: Manifest, encoder: ort.InferenceSession, decoder: ort.InferenceSession,
                 path: Path | None = None, *, sliced_encoder: ort.InferenceSession | None = None,
                 sliced_decoder: ort.InferenceSession | None = None) -> None:
        self.manifest = manifest
        self.contract: InputContract = manifest.contract
        self.latent_dim = manifest.latent_dim
        self.likelihood = manifest.likelihood
        self.path = path
        self.variant = "fp32"
        self._encoder = encoder
        self._decoder = decoder
        # Sessions that run the slices of large batches: one-thread twins if given, else the sessions themselves.
        self._encoder_for_slices = sliced_encoder or encoder
        self._decoder_for_slices = sliced_decoder or decoder
        self._decoder_outputs = list(manifest.decoder_outputs)
        self._encoder_outputs = list(ENCODER_OUTPUTS)
        self._slice_workers = 1
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        for session in {encoder, self._encoder_for_slices}:
            _check_graph(session, "encoder", [ENCODER_INPUT], list(ENCODER_OUTPUTS),
                         {ENCODER_INPUT: list(self.contract.shape)}, self.latent_dim)
        for session in {decoder, self._decoder_for_slices}:
            _check_graph(session, "decoder", [DECODER_INPUT], self._decoder_outputs,
                         {DECODER_INPUT: [self.latent_dim]}, self.latent_dim)

    @property
    def slice_workers(self) -> int:
        """Concurrent graph calls a large batch (>= 64 images or codes) is split into (see :func:`load`)."""
        return self._slice_workers

    @slice_workers.setter
    def slice_workers(self, workers: int) -> None:
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"slice_workers must be a positive integer, got {workers!r}")
        self._slice_workers = workers

    def _run_decoder(self, names: list[str], t: F32) -> list[F32]:
        return self._run(self._decoder, self._decoder_for_slices, names, DECODER_INPUT, t)

    def _run(self, whole: ort.InferenceSession, sliced: ort.InferenceSession, names: list[str], feed: str,
             x: F32) -> list[F32]:
        """Run a graph; a large batch runs as ``slice_workers`` concurrent slices on ``sliced``."""
        return self._map_slices(lambda part, in_slice: (sliced if in_slice else whole).run(names, {feed: part}), x)

    def _map_slices(self, work: Callable[[F32, bool], list[F32]], x: F32) -> list[F32]:
        """``work(x, False)``, or for a large batch ``work(slice, True)`` on concurrent slices, concatenated.

        On the CPU provider, one-thread sessions running slices of a batch side by side use the cores better
        than one call with several intra-op threads: onnxruntime's ConvTranspose kernel uses a single
        thread, and a session's spinning thread pool would compete with the other graph's calls. ``work``
        computes every row as it would in a single call, so results do not depend on the slicing.
        """
        n = x.shape[0]
        parts = min(self._slice_workers, n // MIN_SLICE)
        if parts <= 1:
            return work(x, False)
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self._slice_workers - 1, thread_name_prefix="edgevae-run")
        bounds = [n * i // parts for i in range(parts + 1)]
        futures = [self._pool.submit(work, x[a:b], True) for a, b in zip(bounds[1:-1], bounds[2:])]
        first = work(x[:bounds[1]], True)
        rest = [f.result() for f in futures]
        return [np.concatenate([first[i]] + [r[i] for r in rest]) for i in range(len(first))]

    def _encoder_decoder(self, in_slice: bool) -> tuple[ort.InferenceSession, ort.InferenceSession]:
        if in_slice:
            return self._encoder_for_slices, self._decoder_for_slices
        return self._encoder, self._decoder

    # --------------------------------------------------------------- introspection
    @property
    def providers(self) -> dict[str, list[str]]:
        """Providers each session actually runs on."""
        return {"encoder": self._encoder.get_providers(), "decoder": self._decoder.get_providers()}

    def graph_info(self) -> dict[str, GraphInfo]:
        return {"encoder": GraphInfo.of(self._encoder), "decoder": GraphInfo.of(self._decoder)}

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(m for m in SCORE_METHODS if m in self.manifest.calibration)

    # --------------------------------------------------------------- graphs
    def prepare(self, x: NDArray[Any]) -> F32:
        """Apply the input contract: validate and convert to float32 (N, C, H, W)."""
        return self.contract.prepare(x)

    def encode_full(self, x: NDArray[Any]) -> tuple[F32, F32, F32]:
        """Run the encoder: (mu (N, D), logvar (N, D), kl (N,))."""
        return self._encode(self.prepare(x))

    def _encode(self, xb: F32) -> tuple[F32, F32, F32]:
        mu, logvar, kl = self._run(self._encoder, self._encoder_for_slices, self._encoder_outputs, ENCODER_INPUT, xb)
        return mu, logvar, kl

    def encode(self, x: NDArray[Any]) -> tuple[F32, F32]:
        """Posterior mean and log-variance of q(t|x), each (N, D)."""
        mu, logvar, _ = self.encode_full(x)
        return mu, logvar

    def kl(self, x: NDArray[Any]) -> F32:
        """KL(q(t|x) || N(0, I)) per image, in nats, computed inside the encoder graph."""
        return self.encode_full(x)[2]

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
        tb = self._check_latents(t)
        mean, param = self._run_decoder(self._decoder_outputs, tb)
        return mean, param

    def decode(self, t: NDArray[Any]) -> F32:
        """Decoded mean images (N, C, H, W) in [0, 1]."""
        mean: F32 = self._run_decoder(self._decoder_outputs[:1], self._check_latents(t))[0]
        return mean

    def reconstruct(self, x: NDArray[Any]) -> F32:
        """Decode the posterior mean of each image: (N, C, H, W)."""
        mu, _ = self.encode(x)
        return self.decode(mu)

    def generate(self, n: int, seed: int = 0) -> F32:
        """Sample t ~ N(0, I) with ``numpy.random.default_rng(seed)`` and decode: (n, C, H, W)."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        t = np.random.default_rng(seed).standard_normal((n, self.latent_dim), dtype=np.float32)
        return self.decode(t)

    # --------------------------------------------------------------- scores
    def raw_scores(self, x: NDArray[Any], method: str | None = None, *, samples: int | None = None) -> F32:
        """Outlier scores (N,) without calibration; higher means more anomalous.

        Methods: ``kl`` (KL of q(t|x) from the prior), ``elbo`` (negative ELBO, Monte-Carlo), ``recon``
        (squared error of the decoded posterior mean), ``rel_recon`` (that error divided by the energy of
        the image and of its reconstruction), ``smooth_recon`` (``rel_recon`` of the residual after a
        Gaussian blur of ``manifest.smooth_sigma`` pixels), ``iwae`` (importance-weighted estimate of -log p(x), nats).
        The Monte-Carlo methods use the manifest's K and seed unless ``samples`` overrides K; the noise is
        shared by all images, so scores are deterministic and independent of batching.
        """
        method = method or self.manifest.default_method
        if method not in SCORE_METHODS:
            raise ValueError(f"unknown score method {method!r}; choose one of {', '.join(SCORE_METHODS)}")
        if samples is not None and (not isinstance(samples, int) or samples < 1):
            raise ValueError(f"samples must be a positive integer, got {samples!r}")
        xb = self.prepare(x)
        eps = None
        if method in ("elbo", "iwae"):
            default_k = self.manifest.elbo_samples if method == "elbo" else self.manifest.iwae_samples
            eps = prior_noise(samples or default_k, self.latent_dim, self.manifest.score_seed)
        if method in ("recon", "rel_recon", "smooth_recon") or (method == "elbo" and eps is not None
                                                                  and eps.shape[0] == 1):
            # Per image one encoder and one decoder pass: each slice of a large batch runs both graphs and
            # the score math in one worker, so no stage waits for the slowest slice of the one before and
            # the numpy part runs on every core as well.
            return self._map_slices(lambda part, in_slice: [self._one_pass_score(part, method, eps, in_slice)],
                                    xb)[0]
        mu, logvar, kl = self._encode(xb)
        if eps is None:  # kl, which the encoder graph computes
            return kl
        if method == "elbo":
            ll, _ = self._monte_carlo(xb, mu, logvar, eps, importance=False)
            # the mean over the K samples, as add.reduce + divide (what ndarray.mean does, without its overhead)
            mean_ll = np.add.reduce(ll, axis=0, dtype=np.float32) / np.float32(ll.shape[0])
            out: F32 = np.subtract(kl, mean_ll, dtype=np.float32)
            return out
        ll, log_w_prior = self._monte_carlo(xb, mu, logvar, eps, importance=True)  # (K, N) each
        return (-logmeanexp(ll + log_w_prior, axis=0)).astype(np.float32)

    def _one_pass_score(self, xb: F32, method: str, eps: F32 | None, in_slice: bool) -> F32:
        """Scores that decode one code per image: the reconstruction errors and the one-sample ELBO."""
        encoder, decoder = self._encoder_decoder(in_slice)
        if method == "elbo" and eps is not None:  # no sample axis: the cheapest Monte-Carlo score on a device
            mu, logvar, kl = encoder.run(self._encoder_outputs, {ENCODER_INPUT: xb})
            t = mu + np.exp(np.float32(0.5) * logvar) * eps[0]
            mean, param = decoder.run(self._decoder_outputs, {DECODER_INPUT: t})
            elbo: F32 = np.subtract(kl, log_likelihood(xb, self.likelihood, mean, param), dtype=np.float32)
            return elbo
        mu = encoder.run(self._encoder_outputs[:1], {ENCODER_INPUT: xb})[0]
        mean = decoder.run(self._decoder_outputs[:1], {DECODER_INPUT: mu})[0]
        if method == "recon":
            return reconstruction_error(xb, mean)
        if method == "rel_recon":
            return relative_reconstruction_error(xb, mean)
        return smoothed_relative_reconstruction_error(xb, mean, self.manifest.smooth_sigma)

    def _monte_carlo(self, xb: F32, mu: F32, logvar: F32, eps: F32, importance: bool = True) -> tuple[F32, F32]:
        """For t_k = mu + std * eps_k: log p(x|t_k) and (if ``importance``) log p(t_k) - log q(t_k|x), (K, N) each.

        Without ``importance`` the second array is empty.
        """
        n, k = xb.shape[0], eps.shape[0]
        std = np.exp(np.float32(0.5) * logvar)
        ll = np.empty((k, n), dtype=np.float32)
        log_w_prior = np.empty((k if importance else 0, n), dtype=np.float32)
        per_chunk = max(1, DECODE_CHUNK // max(n, 1))
        for start in range(0, k, per_chunk):
            e = eps[start:start + per_chunk]  # (k', D)
            reps = e.shape[0]
            t = mu[None] + std[None] * e[:, None, :]  # (k', N, D)
            mean, param = self._run_decoder(self._decoder_outputs, t.reshape(-1, self.latent_dim))
            x_rep = xb if reps == 1 else np.broadcast_to(xb[None], (reps,) + xb.shape).reshape((-1,) + xb.shape[1:])
            ll[start:start + reps] = log_likelihood(x_rep, self.likelihood, mean, param).reshape(reps, n)
            if importance:
                log_w_prior[start:start + reps] = log_prior_over_posterior(
                    np.broadcast_to(e[:, None, :], t.shape), t, np.broadcast_to(logvar[None], t.shape))
        return ll, log_w_prior

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
            ValueError: unknown method or bad fpr.
        """
        method = method or self.manifest.default_method
        scores = self.raw_scores(x, method)
        cal = self.manifest.calibration[method]
        thr = self.threshold(method, fpr) if threshold is None else float(threshold)
        return ScoreResult(
            method=method,
            scores=scores,
            p_values=p_values(scores, cal.sorted_scores, cal.tail),
            is_outlier=scores > thr,
            threshold=thr,
        )

    def threshold(self, method: str | None = None, fpr: float | None = None) -> float:
        """Threshold of a method at a false-positive rate (default: the calibrated rate)."""
        method = method or self.manifest.default_method
        if method not in self.manifest.calibration:
            raise ValueError(f"method {method!r} is not calibrated in this bundle; calibrated: {', '.join(self.methods)}")
        cal = self.manifest.calibration[method]
        if fpr is None or fpr == self.manifest.calibration_fpr:
            return cal.threshold
        return threshold_at_fpr(cal.sorted_scores, fpr, cal.tail)


def _check_graph(session: ort.InferenceSession, name: str, inputs: list[str], outputs: list[str],
                 shapes: dict[str, list[int]], latent_dim: int) -> None:
    got_in = [a.name for a in session.get_inputs()]
    got_out = [a.name for a in session.get_outputs()]
    if got_in != inputs:
        raise BundleError(f"{name} graph takes inputs {got_in}, the manifest says {inputs}")
    if sorted(got_out) != sorted(outputs):
        raise BundleError(f"{name} graph gives outputs {got_out}, the manifest says {outputs}")
    for arg in session.get_inputs():
        if arg.type != "tensor(float)":
            raise BundleError(f"{name} input {arg.name!r} is {arg.type}, expected tensor(float)")
        fixed = [d for d in arg.shape[1:]]
        if fixed != shapes[arg.name]:
            raise BundleError(
                f"{name} input {arg.name!r} has shape {arg.shape}, the manifest says [N, "
                f"{', '.join(map(str, shapes[arg.name]))}]"
            )
    for arg in session.get_outputs():
        if arg.name in ("mu", "logvar") and arg.shape[-1] != latent_dim:
            raise BundleError(f"{name} output {arg.name!r} has shape {arg.shape}, latent size is {latent_dim}")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(bundle: str | os.PathLike[str]) -> Manifest:
    """Read and validate a bundle's manifest without creating sessions."""
    path = Path(bundle)
    if not path.is_dir():
        raise BundleError(f"{path}: not a bundle directory (expected a folder with {MANIFEST_FILE}, "
                          f"{ENCODER_FILE}, {DECODER_FILE}); create one with 'edgevae export'")
    manifest_path = path / MANIFEST_FILE
    try:
        text = manifest_path.read_bytes()
    except FileNotFoundError as exc:
        raise BundleError(f"{path}: {MANIFEST_FILE} is missing; this folder is not a complete bundle") from exc
    except OSError as exc:
        raise BundleError(f"{manifest_path}: cannot read ({exc})") from exc
    return Manifest.from_json(text)


def load(bundle: str | os.PathLike[str], providers: Providers = "auto", *, threads: int | None = None,
         strict: bool = False, variant: str | None = None, slice_workers: int | None = None) -> Model:
    """Load a bundle directory, verifying it before any graph runs.

    Checks the manifest's format and schema version, the sha256 of each graph, and that the graphs'
    inputs and outputs match the manifest.

    Args:
        bundle: the bundle directory written by ``edgevae export``.
        providers: ``"auto"`` (best available), a list of provider names, or a comma-separated string.
        threads: intra-op threads of the encoder session (None: onnxruntime's default, one per core).
        slice_workers: concurrent calls a large batch (>= 64) is split into, each on a one-thread session.
            None: on the CPU provider ``threads`` (or one per core); elsewhere 1. With more than one, each
            graph is loaded twice: with ``threads`` intra-op threads for small batches (lowest latency)
            and with one for the slices (onnxruntime's ConvTranspose kernel uses one thread anyway, and a
            spinning pool of one graph would compete with the other's slices).
        strict: fail when a requested provider is not active in the sessions.
        variant: an edge variant listed in the manifest (``int8``, ``fp16``, ``ort``, ``int8-ort``, ...);
            None or ``fp32`` loads the fp32 ONNX graphs. A variant brings its own calibration.

    Raises:
        BundleError: missing files, checksum mismatch, unsupported schema, graphs that disagree.
        ProviderError: unavailable provider, or (strict) a provider fell back.
    """
    path = Path(bundle)
    manifest = read_manifest(path)
    names = [ENCODER_FILE, DECODER_FILE]
    if variant not in (None, "fp32"):
        if variant not in manifest.variants:
            available = ", ".join(["fp32", *manifest.variants])
            raise BundleError(f"{path}: no variant {variant!r} in this bundle; available: {available}. "
                              "Add variants at export (--quantize int8, --precision fp16, --ort-format)")
        spec = manifest.variants[variant]
        try:
            names = [str(spec["encoder"]), str(spec["decoder"])]
            manifest = replace(manifest, calibration={m: MethodCalibration.from_dict(c)
                                                      for m, c in spec["calibration"]["methods"].items()})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(f"{path}: variant {variant!r} is malformed in the manifest: {exc!r}") from exc
    graphs: dict[str, bytes] = {}
    for fname in names:
        if fname not in manifest.files or not isinstance(manifest.files[fname], dict):
            raise BundleError(f"{path}: the manifest has no checksum for {fname}; refusing to load it")
        try:
            data = (path / fname).read_bytes()
        except FileNotFoundError as exc:
            raise BundleError(f"{path}: {fname} is missing; re-export the bundle") from exc
        digest = sha256_hex(data)
        expected = manifest.files[fname]["sha256"]
        if digest != expected:
            raise BundleError(
                f"{path / fname}: sha256 {digest[:16]}... does not match the manifest's {str(expected)[:16]}...; "
                "the graph was modified or corrupted. Refusing to load it; re-export or re-copy the bundle"
            )
        graphs[fname] = data
    if slice_workers is not None and (not isinstance(slice_workers, int) or slice_workers < 1):
        raise ValueError(f"slice_workers must be a positive integer, got {slice_workers!r}")
    cpu_only = resolve_providers(providers) == ["CPUExecutionProvider"]
    workers = slice_workers or ((threads or os.cpu_count() or 1) if cpu_only else 1)
    try:
        encoder = create_session(graphs[names[0]], providers, threads=threads, strict=strict, name="encoder")
        decoder = create_session(graphs[names[1]], providers, threads=threads, strict=strict, name="decoder")
        sliced: list[ort.InferenceSession | None] = [None, None]
        if cpu_only and workers > 1 and threads != 1:  # with threads=1 the sessions are one-thread already
            sliced = [create_session(graphs[n], providers, threads=1, strict=strict, name=role)
                      for n, role in zip(names, ("encoder", "decoder"))]
    except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidGraph,
            ort.capi.onnxruntime_pybind11_state.InvalidProtobuf) as exc:
        raise BundleError(f"{path}: onnxruntime cannot load the graphs: {exc}") from exc
    model = Model(manifest, encoder, decoder, path=path, sliced_encoder=sliced[0], sliced_decoder=sliced[1])
    model.variant = variant or "fp32"
    model.slice_workers = workers
    return model


__all__: Sequence[str] = ("Model", "load", "read_manifest", "GraphInfo")
