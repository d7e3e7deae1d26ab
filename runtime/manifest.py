"""The bundle manifest (``edgevae.json``): one typed schema, read and written by the same code.

Every section a program acts on is a typed, self-validating object here: the input contract and score settings
(:class:`ScoringSpec`, with the per-method entries non-Python readers compute from), the anomaly-map file
(:class:`MapEntry`), the Monte-Carlo noise files (:class:`NoiseEntry`), the calibration (:class:`Calibration`,
with the combined score's references), the edge variants (:class:`Variant`) and the files with their checksums.
:meth:`Manifest.to_dict` writes what :meth:`Manifest.from_dict` reads; informational sections (producer,
parity, model, training, history) ride along unchanged in ``raw``. A new graph is one more entry in ``files`` and
``graphs``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Mapping

from .contract import InputContract
from .errors import BundleError
from .maps import STATISTIC, Combination, Reference, check_parts, check_weights
from .methods import GRAPHS, METHODS, MONTE_CARLO_METHODS, SCORE_METHODS, noise_file, samples_for
from .options import (
    COMBINED_ELBO_SAMPLES,
    COMBINED_PARTS,
    LEGACY_COMBINED_PARTS,
    DEFAULT_METHOD,
    DEFECT_WINDOW,
    ELBO_SAMPLES,
    ELBO_SAMPLES_MAX,
    IWAE_SAMPLES,
    IWAE_SAMPLES_MAX,
    LIKELIHOODS,
    SCORE_SEED,
    SMOOTH_SIGMA,
    SMOOTH_SIGMA_MAX,
)
from .scores import MethodCalibration

if TYPE_CHECKING:
    from .tiles import Tiling

FORMAT_NAME = "edgevae-bundle"
SCHEMA_VERSION = 1
MANIFEST_FILE = "edgevae.json"
METADATA_KEY = "edgevae.manifest"
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
ENCODER_INPUT = "x"
ENCODER_OUTPUTS = ("mu", "logvar", "kl")
DECODER_INPUT = "t"
DEFECT_FILE = "defect.onnx"
DEFECT_INPUT = "x"
DEFECT_OUTPUT = "defect_logits"


def decoder_outputs(likelihood: str) -> tuple[str, str]:
    """Output names of the decoder graph for a likelihood: the mean and the likelihood's parameter."""
    return ("x_mean", "x_logits") if likelihood == "bernoulli" else ("x_mean", "x_logvar")


def check_score_settings(default_method: str, elbo_samples: int, iwae_samples: int, smooth_sigma: float) -> None:
    """Validate the score settings a bundle stores.

    Raises:
        ValueError: a setting outside what ``edgevae.runtime.options`` allows, with the allowed range.
    """
    if default_method not in METHODS:
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
        defect_window: side of the square the ``defect`` score averages the defect head's logits over.
        combined_weights: one positive weight per part of ``combined`` (part i gets the share k w_i / sum(w) of
            the false-alarm budget); None: equal shares, as bundles without ``scoring.combined.weights``.
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
    defect_window: int = DEFECT_WINDOW
    combined_weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.defect_window <= 255:
            raise ValueError(f"defect_window must be in 1..255 pixels, got {self.defect_window}")
        if not 1 <= self.combined_elbo_samples <= ELBO_SAMPLES_MAX:
            raise ValueError(f"combined_elbo_samples must be in 1..{ELBO_SAMPLES_MAX}, got {self.combined_elbo_samples}")
        object.__setattr__(self, "combined_parts", tuple(self.combined_parts))
        check_parts(self.combined_parts)
        if self.combined_weights is not None:
            object.__setattr__(self, "combined_weights", check_weights(self.combined_parts, self.combined_weights))
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

    def part_samples(self, part: str) -> int:
        """K of a part inside ``combined``: the elbo part draws ``part_elbo_samples``, others their own K."""
        return self.part_elbo_samples if METHODS[part].samples_setting == "elbo_samples" else self.samples(part)

    def method_entries(self) -> dict[str, dict[str, Any]]:
        """Per method, what a reader in another language needs to compute it (``scoring.method_specs``): its kind,
        the graphs it runs, its samples K and noise file, whether it reads the map file, and its parts."""
        out: dict[str, dict[str, Any]] = {}
        for name, m in METHODS.items():
            entry: dict[str, Any] = {"kind": m.kind, "graphs": list(m.graphs), "samples": self.samples(name),
                                     "noise": noise_file(name) if m.draws_noise else None, "map": m.needs_maps,
                                     "importance": m.importance, "negate": m.negate}
            if m.kind == "defect":
                entry["window"] = self.defect_window
            if m.kind == "combination":
                entry["parts"] = list(self.combined_parts)
                entry["part_samples"] = {p: self.part_samples(p) for p in self.combined_parts}
                entry["map"] = any(METHODS[p].needs_maps for p in self.combined_parts)
                entry["graphs"] = sorted({g for p in self.combined_parts for g in METHODS[p].graphs}, key=GRAPHS.index)
                if "defect" in self.combined_parts:
                    entry["window"] = self.defect_window
                if self.combined_weights is not None:
                    entry["weights"] = list(self.combined_weights)
            out[name] = entry
        return out

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``scoring`` section (without ``map``, which :class:`Manifest` adds)."""
        return {
            "default_method": self.default_method,
            "methods": list(SCORE_METHODS),
            "method_specs": self.method_entries(),
            "elbo_samples": self.elbo_samples,
            "iwae_samples": self.iwae_samples,
            "smooth_sigma": self.smooth_sigma,
            "defect_window": self.defect_window,
            "seed": self.seed,
            "noise": "numpy.random.default_rng(seed).standard_normal((K, latent_dim), float32) with K = elbo_samples "
                     "or iwae_samples, shared by every image",
            "noise_files": {m: {"file": noise_file(m), "shape": [self.samples(m), self.latent_dim], "dtype": "float32",
                                "byte_order": "little", "layout": "row-major (K, latent_dim)"}
                            for m in MONTE_CARLO_METHODS},
            "combined": {"parts": list(self.combined_parts), "elbo_samples": self.part_elbo_samples,
                         "statistic": STATISTIC,
                         **({"weights": list(self.combined_weights)} if self.combined_weights is not None else {})},
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
            combined_parts=tuple(str(p) for p in (scoring.get("combined") or {}).get("parts",
                                                                                     LEGACY_COMBINED_PARTS)),
            combined_elbo_samples=int((scoring.get("combined") or {}).get("elbo_samples", COMBINED_ELBO_SAMPLES)),
            defect_window=int(scoring.get("defect_window", DEFECT_WINDOW)),
            combined_weights=_weights((scoring.get("combined") or {}).get("weights")),
        )


def _weights(raw: Any) -> tuple[float, ...] | None:
    """``scoring.combined.weights`` as numbers (None when absent); ScoringSpec checks them against the parts."""
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in raw):
        raise ValueError(f"scoring.combined.weights must be a list of numbers, one per part; got {raw!r}")
    return tuple(float(w) for w in raw)


@dataclass(frozen=True)
class NoiseEntry:
    """A Monte-Carlo method's shared prior noise file: float32 little-endian, row-major (K, latent_dim)."""

    file: str
    shape: tuple[int, int]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "NoiseEntry":
        return cls(str(data["file"]), (int(data["shape"][0]), int(data["shape"][1])))


@dataclass(frozen=True)
class MapEntry:
    """``scoring.map``: the anomaly-map statistics file, float32 little-endian (2, H, W), and how maps use it."""

    file: str
    shape: tuple[int, int, int]
    sigma: float
    top_k: int
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MapEntry":
        shape = tuple(int(v) for v in data["shape"])
        if len(shape) != 3:
            raise ValueError(f"scoring.map.shape must be [2, H, W], got {list(shape)}")
        return cls(str(data["file"]), (shape[0], shape[1], shape[2]), float(data["sigma"]), int(data["top_k"]),
                   dict(data))

    def to_dict(self) -> dict[str, Any]:
        return {**self.raw, "file": self.file, "shape": list(self.shape), "sigma": self.sigma, "top_k": self.top_k}


@dataclass(frozen=True)
class DefectEntry:
    """``scoring.defect``: the defect head's graph (images (N, C, H, W) in, logits (N, 1, H, W) out) and how it
    was trained (informational, in ``raw``)."""

    file: str = DEFECT_FILE
    input: str = DEFECT_INPUT
    output: str = DEFECT_OUTPUT
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DefectEntry":
        return cls(str(data["file"]), str(data.get("input", DEFECT_INPUT)), str(data.get("output", DEFECT_OUTPUT)),
                   dict(data))

    def to_dict(self) -> dict[str, Any]:
        return {**self.raw, "file": self.file, "input": self.input, "output": self.output}


@dataclass(frozen=True)
class Calibration:
    """A calibration section (``calibration``, or a variant's): per method the threshold, scores and tail; the
    combined score's part references; how many images and the smallest rate they can promise."""

    fpr: float
    methods: Mapping[str, MethodCalibration]
    n: int | None = None
    min_fpr: float | None = None
    # the combined score's parts' reference scores (calibration.methods.combined.references), when calibrated
    references: Mapping[str, Reference] | None = field(default=None, compare=False)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.fpr < 1.0:
            raise ValueError(f"calibration fpr must be in (0, 1), got {self.fpr}")
        unknown = set(self.methods) - set(SCORE_METHODS)
        if unknown:
            raise BundleError(f"manifest calibrates unknown score methods {sorted(unknown)}; known: {SCORE_METHODS}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Calibration":
        methods = data["methods"]
        combined = methods.get("combined") or {}
        refs = combined.get("references")
        return cls(fpr=float(data["fpr"]), methods={m: MethodCalibration.from_dict(c) for m, c in methods.items()},
                   n=int(data["n"]) if data.get("n") is not None else None,
                   min_fpr=float(data["min_fpr"]) if data.get("min_fpr") is not None else None,
                   references={p: Reference.from_dict(r) for p, r in refs.items()} if refs is not None else None,
                   raw=dict(data))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self.raw, "fpr": self.fpr}
        if self.n is not None:
            out["n"], out["min_fpr"] = self.n, self.min_fpr
        methods: dict[str, Any] = {}
        for name in SCORE_METHODS:
            if name in self.methods:
                entry = self.methods[name].to_dict()
                if name == "combined" and self.references is not None:
                    old = (self.raw.get("methods") or {}).get("combined") or {}
                    entry.update({k: v for k, v in old.items() if k not in entry})
                    entry["references"] = {p: r.to_dict() for p, r in self.references.items()}
                methods[name] = entry
        out["methods"] = methods
        return out

    def combination(self, parts: tuple[str, ...], weights: tuple[float, ...] | None = None) -> Combination | None:
        """The combined score's parts, references and weights, or None when ``combined`` is not calibrated."""
        if self.references is None:
            return None
        return Combination(parts, {p: self.references[p] for p in parts}, weights)


@dataclass(frozen=True)
class Variant:
    """An edge variant: its graph files (the defect head's too, when the bundle has one), their format and a
    calibration of their own; in a tiled bundle also its own image-level calibration (``tiling_calibration``, in
    force of ``tiling.calibration`` when the variant is loaded)."""

    name: str
    encoder: str
    decoder: str
    calibration: Calibration
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    defect: str | None = None
    tiling_calibration: Calibration | None = None

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> "Variant":
        defect, tiled = data.get("defect"), data.get("tiling_calibration")
        return cls(name, str(data["encoder"]), str(data["decoder"]), Calibration.from_dict(data["calibration"]),
                   dict(data), str(defect) if defect is not None else None,
                   Calibration.from_dict(tiled) if tiled is not None else None)

    @property
    def graph_files(self) -> list[str]:
        return [self.encoder, self.decoder] + ([self.defect] if self.defect is not None else [])

    def to_dict(self) -> dict[str, Any]:
        out = {**self.raw, "encoder": self.encoder, "decoder": self.decoder, "calibration": self.calibration.to_dict()}
        if self.defect is not None:
            out["defect"] = self.defect
        if self.tiling_calibration is not None:
            out["tiling_calibration"] = self.tiling_calibration.to_dict()
        return out


@dataclass(frozen=True)
class Manifest:
    """Parsed and validated ``edgevae.json``. ``raw`` keeps every field, including informational ones;
    :meth:`to_dict` gives the dictionary to write, the typed sections over ``raw``."""

    scoring: ScoringSpec
    calibration_fpr: float
    calibration: Mapping[str, MethodCalibration]
    files: Mapping[str, Mapping[str, Any]]
    raw: Mapping[str, Any] = field(repr=False)
    variants: Mapping[str, Variant] = field(default_factory=dict, repr=False)
    # calibration images, and the smallest false-positive rate they can promise (None in bundles that predate it)
    calibration_n: int | None = None
    min_fpr: float | None = None
    calibration_section: Calibration | None = field(default=None, repr=False)
    map: MapEntry | None = None
    noise: Mapping[str, NoiseEntry] = field(default_factory=dict, repr=False)
    defect: DefectEntry | None = None
    # how a tiled bundle scores images larger than its input (None: every image is resized to the input)
    tiling: "Tiling | None" = None

    def __post_init__(self) -> None:
        if not 0.0 < self.calibration_fpr < 1.0:
            raise ValueError(f"calibration fpr must be in (0, 1), got {self.calibration_fpr}")
        if self.calibration_section is None:
            object.__setattr__(self, "calibration_section", Calibration(self.calibration_fpr, self.calibration,
                                                                        self.calibration_n, self.min_fpr))

    @property
    def contract(self) -> InputContract:
        return self.scoring.contract

    @property
    def default_method(self) -> str:
        return self.scoring.default_method

    @property
    def combination(self) -> Combination | None:
        """The combined score's parts and references in the calibration in force."""
        section = self.calibration_section
        return (section.combination(self.scoring.combined_parts, self.scoring.combined_weights)
                if section is not None else None)

    def graph_files(self) -> list[str]:
        """The fp32 graphs: encoder, decoder and (when the bundle has one) the defect head."""
        return [ENCODER_FILE, DECODER_FILE] + ([self.defect.file] if self.defect is not None else [])

    def data_files(self) -> list[str]:
        """The files beside the graphs that loading reads (and verifies as it reads them): noise and map
        statistics, a fixed camera's too."""
        t = self.tiling
        frame = [t.map.file] if t is not None and t.map is not None else []
        if t is not None and t.defect_map is not None:
            frame.append(str(t.defect_map["file"]))
        if t is not None and t.alignment is not None:
            frame += [str(t.alignment["file"]), *(str(t.alignment[k]["file"]) for k in ("map", "defect_map")
                                                  if t.alignment.get(k) is not None)]
        return [e.file for e in self.noise.values()] + ([self.map.file] if self.map is not None else []) + frame

    def with_variant(self, name: str) -> "Manifest":
        """The manifest with a variant's calibration in force.

        Raises:
            BundleError: no such variant.
        """
        if name not in self.variants:
            available = ", ".join(["fp32", *self.variants])
            raise BundleError(f"no variant {name!r} in this bundle; available: {available}. "
                              "Add variants at export (--quantize int8, --precision fp16, --ort-format)")
        variant = self.variants[name]
        cal = variant.calibration
        tiling = self.tiling
        if tiling is not None:
            if variant.tiling_calibration is None:
                raise BundleError(f"variant {name!r} of this tiled bundle has no image-level calibration of its own "
                                  "(tiling_calibration); export the run again with it")
            tiling = replace(tiling, calibration=variant.tiling_calibration)
        return replace(self, calibration=cal.methods, calibration_section=cal, tiling=tiling)

    def with_calibration(self, calibration: Calibration, variants: Mapping[str, Calibration],
                         variant_tiling: Mapping[str, Calibration] | None = None) -> "Manifest":
        """The manifest with a new calibration (and new calibrations for its variants, and in a tiled bundle their
        new image-level ones), the old one kept in ``calibration_history``."""
        raw = dict(self.raw)
        previous = {**raw["calibration"], "replaced": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        raw["calibration_history"] = [*raw.get("calibration_history", []), previous]
        new_variants = {n: replace(v, calibration=variants[n],
                                   tiling_calibration=(variant_tiling or {}).get(n, v.tiling_calibration))
                        for n, v in self.variants.items()}
        return replace(self, raw=raw, calibration_fpr=calibration.fpr, calibration=calibration.methods,
                       calibration_n=calibration.n, min_fpr=calibration.min_fpr, calibration_section=calibration,
                       variants=new_variants)

    def to_dict(self) -> dict[str, Any]:
        """The manifest as JSON-ready data: ``raw`` with every typed section written by its own ``to_dict``."""
        out = dict(self.raw)
        scoring = {**(out.get("scoring") or {}), **self.scoring.to_dict()}
        if self.map is not None:
            scoring["map"] = self.map.to_dict()
        if self.defect is not None:
            scoring["defect"] = self.defect.to_dict()
        out.update(input=self.contract.to_dict(), latent_dim=self.scoring.latent_dim,
                   likelihood=self.scoring.likelihood, scoring=scoring, files={k: dict(v) for k, v in self.files.items()})
        section = self.calibration_section
        if section is not None:
            out["calibration"] = section.to_dict()
        if self.variants or "variants" in out:
            out["variants"] = {n: v.to_dict() for n, v in self.variants.items()}
        if self.tiling is not None:
            out["tiling"] = self.tiling.to_dict()
        return out

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
            manifest = cls._parse(data, require_files)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError, IndexError) as exc:
            if isinstance(exc, BundleError):
                raise
            raise BundleError(f"manifest is malformed: {type(exc).__name__}: {exc}") from exc
        if require_files:
            for name in manifest.graph_files():
                entry = manifest.files.get(name)
                if not isinstance(entry, Mapping) or not isinstance(entry.get("sha256"), str):
                    raise BundleError(f"manifest has no sha256 for {name} under 'files'")
        return manifest

    @classmethod
    def _parse(cls, data: Mapping[str, Any], require_files: bool) -> "Manifest":
        cal = Calibration.from_dict(data["calibration"])
        scoring = data["scoring"]
        noise = {m: NoiseEntry.from_dict(e) for m, e in (scoring.get("noise_files") or {}).items()}
        for m in noise:
            if m not in MONTE_CARLO_METHODS:
                raise ValueError(f"scoring.noise_files names {m!r}, which draws no noise")
        map_entry = scoring.get("map")
        defect_entry = scoring.get("defect")
        tiling = data.get("tiling")
        from .tiles import Tiling  # tiles reads this module's Calibration

        return cls(
            scoring=ScoringSpec.from_manifest(data),
            calibration_fpr=cal.fpr,
            calibration=cal.methods,
            files=dict(data["files"] if require_files else data.get("files", {})),
            raw=dict(data),
            variants={n: Variant.from_dict(n, v) for n, v in (data.get("variants") or {}).items()},
            calibration_n=cal.n,
            min_fpr=cal.min_fpr,
            calibration_section=cal,
            map=MapEntry.from_dict(map_entry) if map_entry is not None else None,
            noise=noise,
            defect=DefectEntry.from_dict(defect_entry) if defect_entry is not None else None,
            tiling=Tiling.from_dict(tiling) if tiling is not None else None,
        )

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
