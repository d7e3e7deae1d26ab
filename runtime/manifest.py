"""The bundle manifest (``edgevae.json``): versioned JSON describing graphs, input contract and calibration."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from edgevae.options import (
    COMBINED_ELBO_SAMPLES,
    COMBINED_PARTS,
    DEFAULT_METHOD,
    ELBO_SAMPLES,
    ELBO_SAMPLES_MAX,
    IWAE_SAMPLES,
    IWAE_SAMPLES_MAX,
    LIKELIHOODS,
    MONTE_CARLO_METHODS,
    SCORE_METHODS,
    SCORE_SEED,
    SMOOTH_SIGMA,
    SMOOTH_SIGMA_MAX,
    samples_for,
)

from .contract import InputContract
from .errors import BundleError
from .maps import STATISTIC, check_parts
from .scores import MethodCalibration

FORMAT_NAME = "edgevae-bundle"
SCHEMA_VERSION = 1
MANIFEST_FILE = "edgevae.json"
METADATA_KEY = "edgevae.manifest"
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
ENCODER_INPUT = "x"
ENCODER_OUTPUTS = ("mu", "logvar", "kl")
DECODER_INPUT = "t"


def noise_file(method: str) -> str:
    """Name of the file holding a Monte-Carlo method's shared prior noise in a bundle."""
    return f"noise.{method}.f32"


def decoder_outputs(likelihood: str) -> tuple[str, str]:
    """Output names of the decoder graph for a likelihood: the mean and the likelihood's parameter."""
    return ("x_mean", "x_logits") if likelihood == "bernoulli" else ("x_mean", "x_logvar")


def check_score_settings(default_method: str, elbo_samples: int, iwae_samples: int, smooth_sigma: float) -> None:
    """Validate the score settings a bundle stores.

    Raises:
        ValueError: a setting outside what ``edgevae.options`` allows, with the allowed range.
    """
    if default_method not in SCORE_METHODS:
        raise ValueError(f"default method must be one of {', '.join(SCORE_METHODS)}; got {default_method!r}")
    if not 1 <= elbo_samples <= ELBO_SAMPLES_MAX:
        raise ValueError(f"elbo_samples must be in 1..{ELBO_SAMPLES_MAX}, got {elbo_samples}")
    if not 1 <= iwae_samples <= IWAE_SAMPLES_MAX:
        raise ValueError(f"iwae_samples must be in 1..{IWAE_SAMPLES_MAX}, got {iwae_samples}")
    if not 0.0 < smooth_sigma <= SMOOTH_SIGMA_MAX:
        raise ValueError(f"smooth_sigma must be in (0, {SMOOTH_SIGMA_MAX:g}] pixels, got {smooth_sigma}")


@dataclass(frozen=True)
class ScoringSpec:
    """What computing a score needs, calibration aside: the input contract, the latent size, the likelihood and
    the score settings. The manifest carries one; export builds one before anything is calibrated.

    Args:
        contract: the images the encoder takes.
        latent_dim: size D of the latent code.
        likelihood: one of ``LIKELIHOODS``; names the decoder's second output.
        default_method: the method used when none is named.
        elbo_samples, iwae_samples: Monte-Carlo samples K of the ``elbo`` and ``iwae`` scores.
        seed: seed of the noise shared by every image in the Monte-Carlo scores.
        smooth_sigma: Gaussian width (pixels) of ``smooth_recon`` and of the anomaly maps.
        combined_parts: the methods ``combined`` joins through their p-values.
        combined_elbo_samples: K of an ``elbo`` part inside ``combined`` (at most ``elbo_samples``: the first rows
            of the elbo noise).
    """

    contract: InputContract
    latent_dim: int
    likelihood: str
    default_method: str = DEFAULT_METHOD
    elbo_samples: int = ELBO_SAMPLES
    iwae_samples: int = IWAE_SAMPLES
    seed: int = SCORE_SEED
    smooth_sigma: float = SMOOTH_SIGMA
    combined_parts: tuple[str, ...] = COMBINED_PARTS
    combined_elbo_samples: int = COMBINED_ELBO_SAMPLES

    def __post_init__(self) -> None:
        if not 1 <= self.combined_elbo_samples <= ELBO_SAMPLES_MAX:
            raise ValueError(f"combined_elbo_samples must be in 1..{ELBO_SAMPLES_MAX}, got {self.combined_elbo_samples}")
        object.__setattr__(self, "combined_parts", tuple(self.combined_parts))
        check_parts(self.combined_parts)
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {', '.join(LIKELIHOODS)}; got {self.likelihood!r}")
        check_score_settings(self.default_method, self.elbo_samples, self.iwae_samples, self.smooth_sigma)

    @property
    def decoder_outputs(self) -> tuple[str, str]:
        return decoder_outputs(self.likelihood)

    @property
    def part_elbo_samples(self) -> int:
        """K of the elbo part inside ``combined``."""
        return min(self.combined_elbo_samples, self.elbo_samples)

    def samples(self, method: str) -> int:
        """Monte-Carlo samples K that ``method`` draws (0 for the methods that draw none)."""
        return samples_for(method, self.elbo_samples, self.iwae_samples)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``scoring`` section."""
        return {
            "default_method": self.default_method,
            "methods": list(SCORE_METHODS),
            "elbo_samples": self.elbo_samples,
            "iwae_samples": self.iwae_samples,
            "smooth_sigma": self.smooth_sigma,
            "seed": self.seed,
            "noise": "numpy.random.default_rng(seed).standard_normal((K, latent_dim), float32) with K = elbo_samples "
                     "or iwae_samples, shared by every image",
            "noise_files": {m: {"file": noise_file(m), "shape": [self.samples(m), self.latent_dim], "dtype": "float32",
                                "byte_order": "little", "layout": "row-major (K, latent_dim)"}
                            for m in MONTE_CARLO_METHODS},
            "combined": {"parts": list(self.combined_parts), "elbo_samples": self.part_elbo_samples,
                         "statistic": STATISTIC},
        }

    @classmethod
    def from_manifest(cls, data: Mapping[str, Any]) -> "ScoringSpec":
        """Read from a manifest dictionary (``input``, ``latent_dim``, ``likelihood`` and ``scoring``)."""
        scoring = data["scoring"]
        return cls(
            contract=InputContract.from_dict(data["input"]),
            latent_dim=int(data["latent_dim"]),
            likelihood=str(data["likelihood"]),
            default_method=str(scoring["default_method"]),
            elbo_samples=int(scoring["elbo_samples"]),
            iwae_samples=int(scoring.get("iwae_samples", IWAE_SAMPLES)),
            seed=int(scoring["seed"]),
            smooth_sigma=float(scoring.get("smooth_sigma", SMOOTH_SIGMA)),
            combined_parts=tuple(str(p) for p in (scoring.get("combined") or {}).get("parts", COMBINED_PARTS)),
            combined_elbo_samples=int((scoring.get("combined") or {}).get("elbo_samples", COMBINED_ELBO_SAMPLES)),
        )


@dataclass(frozen=True)
class Manifest:
    """Parsed and validated ``edgevae.json``. ``raw`` keeps every field, including informational ones."""

    scoring: ScoringSpec
    calibration_fpr: float
    calibration: Mapping[str, MethodCalibration]
    files: Mapping[str, Mapping[str, Any]]
    raw: Mapping[str, Any] = field(repr=False)
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, repr=False)
    # calibration images, and the smallest false-positive rate they can promise (None in bundles that predate it)
    calibration_n: int | None = None
    min_fpr: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.calibration_fpr < 1.0:
            raise ValueError(f"calibration fpr must be in (0, 1), got {self.calibration_fpr}")

    @property
    def contract(self) -> InputContract:
        return self.scoring.contract

    @property
    def default_method(self) -> str:
        return self.scoring.default_method

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, require_files: bool = True) -> "Manifest":
        """Validate a manifest dictionary.

        Raises:
            BundleError: unknown format or schema version, or missing / malformed fields.
        """
        if not isinstance(data, Mapping):
            raise BundleError(f"manifest must be a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT_NAME:
            raise BundleError(f"not an edgevae manifest: 'format' is {data.get('format')!r}, expected {FORMAT_NAME!r}")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(
                f"manifest schema_version {version!r} is not supported by this edgevae (reads version "
                f"{SCHEMA_VERSION}); re-export the bundle with this edgevae or upgrade edgevae"
            )
        try:
            cal = data["calibration"]
            files = data["files"] if require_files else data.get("files", {})
            manifest = cls(
                scoring=ScoringSpec.from_manifest(data),
                calibration_fpr=float(cal["fpr"]),
                calibration={m: MethodCalibration.from_dict(c) for m, c in cal["methods"].items()},
                files=dict(files),
                raw=dict(data),
                variants=dict(data.get("variants") or {}),
                calibration_n=int(cal["n"]) if cal.get("n") is not None else None,
                min_fpr=float(cal["min_fpr"]) if cal.get("min_fpr") is not None else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise BundleError(f"manifest is malformed: {type(exc).__name__}: {exc}") from exc
        unknown = set(manifest.calibration) - set(SCORE_METHODS)
        if unknown:
            raise BundleError(f"manifest calibrates unknown score methods {sorted(unknown)}; known: {SCORE_METHODS}")
        if require_files:
            for name in (ENCODER_FILE, DECODER_FILE):
                entry = manifest.files.get(name)
                if not isinstance(entry, Mapping) or not isinstance(entry.get("sha256"), str):
                    raise BundleError(f"manifest has no sha256 for {name} under 'files'")
        return manifest

    @classmethod
    def from_json(cls, text: str | bytes, *, require_files: bool = True) -> "Manifest":
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"manifest is not valid JSON: {exc}") from exc
        return cls.from_dict(data, require_files=require_files)


def embedded_manifest(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """What a graph's ``metadata_props`` carry: the manifest without ``files`` (a graph cannot hold its own
    checksum) and ``variants`` (which describes other files)."""
    return {k: v for k, v in manifest.items() if k not in ("files", "variants")}


def dumps(data: Mapping[str, Any]) -> str:
    """Serialise a manifest dictionary as stable, human-readable JSON (NaN/Inf are refused)."""
    _check_finite(data, "manifest")
    return json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n"


def _check_finite(value: Any, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} holds a non-finite number {value!r}")
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_finite(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite(v, f"{where}[{i}]")
