"""The score-method registry: the one place that says what each score method is and what computing it takes.

For every method: the graphs it runs, the setting that gives its Monte-Carlo samples K, whether it needs the
anomaly-map statistics, whether it joins other methods' p-values (and the parts it joins by default), how the
runtime computes it (its ``kind``) and the numpy function that turns images and their reconstructions into scores.
The runtime's scoring, calibration, export, parity, the CLI's choices and ``info`` read this table; the manifest
carries its bundle-specific part (``ScoringSpec.to_dict``: graphs, K, noise file, parts per method), so a C or
JavaScript reader takes what a method needs from the bundle instead of re-typing it.

Pure Python: the CLI imports it for its choices without numpy; the numpy functions are named by their module
path and imported on first use (``ScoreMethod.function``).

Adding a method: one entry here, its maths (``scores.py`` or ``maps.py``) with its PyTorch twin in
``edgevae.training.objectives.TWINS``, and its twins in embed/c and embed/web.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

# How the runtime computes a method:
#   encoder        - read off the encoder graph's outputs (one call, no decoder)
#   reconstruction - compares each image with its decoded posterior mean; methods of this kind share one
#                    encoder and decoder pass (``Residuals`` in runtime/model.py gives them what they share)
#   monte_carlo    - averages over K codes drawn with noise shared by every image (a file in the bundle)
#   combination    - joins other methods through their calibrated p-values
#   defect         - reads the defect head's map (a third graph, ``defect.onnx``; no encoder or decoder)
KINDS = ("encoder", "reconstruction", "monte_carlo", "combination", "defect")
# Every graph a bundle may have, in the order they are listed.
GRAPHS = ("encoder", "decoder", "defect")


@dataclass(frozen=True)
class ScoreMethod:
    """One score method (higher is more anomalous).

    Attributes:
        name: what users type (``--method``) and the manifest's key.
        summary: one line for help texts and ``info``.
        kind: one of ``KINDS``.
        graphs: the graphs it runs, in order.
        samples_setting: the ``ScoringSpec`` field that gives its Monte-Carlo samples K (None: draws none).
        needs_maps: needs the anomaly-map statistics a bundle stores (``scoring.map``).
        importance: a Monte-Carlo method that weighs its samples by p(t) / q(t|x) (the importance-weighted bound).
        function: ``module:name`` of the numpy function (``reconstruction``: of a ``Residuals``).
        negate: the score is the negative of what its kind computes (``too_likely``: the ELBO itself, high for
            images more likely than normal ones).
    """

    name: str
    summary: str
    kind: str
    graphs: tuple[str, ...]
    samples_setting: str | None = None
    needs_maps: bool = False
    importance: bool = False
    function: str | None = None
    negate: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if (self.kind == "monte_carlo") != (self.samples_setting is not None):
            raise ValueError(f"{self.name}: a method draws samples exactly when it is of kind monte_carlo")

    @property
    def draws_noise(self) -> bool:
        return self.samples_setting is not None

    @property
    def uses_decoder(self) -> bool:
        return "decoder" in self.graphs

    def resolve(self) -> Callable[..., Any]:
        """The numpy function (imported on first use).

        Raises:
            ValueError: the method is computed without a function of its own (``encoder``, ``combination``).
        """
        if self.function is None:
            raise ValueError(f"{self.name} is computed by the runtime's {self.kind} path, not by a function")
        module, name = self.function.split(":")
        fn: Callable[..., Any] = getattr(importlib.import_module(module), name)
        return fn


_BOTH = ("encoder", "decoder")
_REGISTRY: tuple[ScoreMethod, ...] = (
    ScoreMethod("kl", "KL(q(t|x) || N(0, I)), computed inside the encoder graph", "encoder", ("encoder",)),
    ScoreMethod("elbo", "negative ELBO in nats, a Monte-Carlo estimate with shared noise", "monte_carlo", _BOTH,
                samples_setting="elbo_samples"),
    ScoreMethod("recon", "squared error between the image and its decoded posterior mean", "reconstruction", _BOTH,
                function="edgevae.runtime.scores:residual_recon"),
    ScoreMethod("rel_recon", "that error divided by the energy of the image and its reconstruction", "reconstruction",
                _BOTH, function="edgevae.runtime.scores:residual_rel_recon"),
    ScoreMethod("smooth_recon", "rel_recon of the residual after a Gaussian blur", "reconstruction", _BOTH,
                function="edgevae.runtime.scores:residual_smooth_recon"),
    ScoreMethod("too_likely", "the ELBO in nats (-elbo): high for images more likely than normal ones (blank, flat, "
                "simpler than the training data)", "monte_carlo", _BOTH, samples_setting="elbo_samples", negate=True),
    ScoreMethod("iwae", "importance-weighted estimate of -log p(x) in nats", "monte_carlo", _BOTH,
                samples_setting="iwae_samples", importance=True),
    ScoreMethod("local", "mean of the top of the anomaly map (the residual standardised per pixel)", "reconstruction",
                _BOTH, needs_maps=True, function="edgevae.runtime.maps:residual_local"),
    ScoreMethod("defect", "largest local mean of the defect head's map (logits; needs defect.onnx)", "defect",
                ("defect",), function="edgevae.runtime.maps:defect_score"),
    ScoreMethod("combined", "-ln of the smallest calibrated p-value of its parts", "combination", _BOTH),
)

METHODS: dict[str, ScoreMethod] = {m.name: m for m in _REGISTRY}
SCORE_METHODS: tuple[str, ...] = tuple(METHODS)
MONTE_CARLO_METHODS: tuple[str, ...] = tuple(m.name for m in _REGISTRY if m.draws_noise)
RECONSTRUCTION_METHODS: tuple[str, ...] = tuple(m.name for m in _REGISTRY if m.kind == "reconstruction")
# What ``combined`` may join: every method but the combinations.
PART_METHODS: tuple[str, ...] = tuple(m.name for m in _REGISTRY if m.kind != "combination")


def method(name: str) -> ScoreMethod:
    """The registry entry of a method.

    Raises:
        ValueError: unknown method, with the known ones.
    """
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown score method {name!r}; choose one of {', '.join(SCORE_METHODS)}") from None


def samples_for(name: str, elbo_samples: int, iwae_samples: int) -> int:
    """Monte-Carlo samples K a score method draws: ``elbo_samples`` for elbo, ``iwae_samples`` for iwae, else 0.

    Raises:
        ValueError: unknown method.
    """
    setting = method(name).samples_setting
    return {"elbo_samples": elbo_samples, "iwae_samples": iwae_samples}[setting] if setting else 0


def sign(name: str) -> float:
    """-1.0 for a method that negates what its kind computes, else 1.0."""
    return -1.0 if method(name).negate else 1.0


def noise_file(name: str) -> str:
    """Name of the file holding a Monte-Carlo method's shared prior noise in a bundle."""
    return f"noise.{name}.f32"


__all__ = ("GRAPHS", "KINDS", "METHODS", "MONTE_CARLO_METHODS", "PART_METHODS", "RECONSTRUCTION_METHODS", "SCORE_METHODS",
           "ScoreMethod", "method", "noise_file", "samples_for", "sign")
