"""A scikit-learn-style outlier detector over edgevae: ``fit`` trains and exports, the rest runs the bundle.

    >>> from edgevae import OutlierVAE
    >>> detector = OutlierVAE(epochs=30).fit(normal_images)        # trains (needs the train extra)
    >>> detector.predict(images)                                    # +1 normal, -1 outlier
    >>> detector.export("bundle/")                                  # ship it; devices use edgevae.runtime

Conventions are scikit-learn's outlier detectors' (IsolationForest, OneClassSVM, LocalOutlierFactor):
``score_samples`` is higher for more normal images (the negated edgevae score), ``decision_function`` is
negative for outliers (``score_samples - offset_``), and ``predict`` gives +1 for normal and -1 for outliers.
"""

from __future__ import annotations

import inspect
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgevae.runtime import options


class NotFittedError(ValueError, AttributeError):
    """The detector was used before ``fit`` (the same double base as scikit-learn's)."""


class OutlierVAE:
    """An edgevae VAE as a scikit-learn-style outlier detector.

    Args:
        method: the score method (``edgevae.runtime.options.SCORE_METHODS``).
        fpr: the false-positive rate of the threshold, calibrated on the held-out split of the training images
            (ignored when ``contamination`` is set).
        contamination: scikit-learn's meaning: the share of the *training* images expected to be outliers; the
            threshold is then that quantile of the training images' scores. None: use ``fpr``.
        epochs, batch_size, lr, latent_dim, seed: training settings (None: edgevae's defaults).
        work_dir: where the run and the bundle are kept (None: a temporary folder removed with the detector).

    Attributes (after ``fit``):
        model_: the loaded bundle (an ``edgevae.runtime.Model``).
        threshold_: the edgevae score above which an image is an outlier.
        offset_: ``-threshold_``, so that ``decision_function = score_samples - offset_``.
    """

    def __init__(self, method: str = options.DEFAULT_METHOD, fpr: float = options.CALIBRATION_FPR,
                 contamination: float | None = None, epochs: int | None = None, batch_size: int | None = None,
                 lr: float | None = None, latent_dim: int | None = None, seed: int = options.SEED,
                 work_dir: str | os.PathLike[str] | None = None) -> None:
        self.method, self.fpr, self.contamination = method, fpr, contamination
        self.epochs, self.batch_size, self.lr, self.latent_dim, self.seed = epochs, batch_size, lr, latent_dim, seed
        self.work_dir = work_dir

    # ------------------------------------------------------------------ scikit-learn's parameter protocol
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's parameters, as scikit-learn's ``clone`` and grid searches expect."""
        return {name: getattr(self, name) for name in inspect.signature(type(self).__init__).parameters if name != "self"}

    def set_params(self, **params: Any) -> "OutlierVAE":
        valid = self.get_params()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"unknown parameter {name!r} for OutlierVAE; valid: {', '.join(valid)}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        changed = {k: v for k, v in self.get_params().items() if v != inspect.signature(type(self).__init__).parameters[k].default}
        return f"OutlierVAE({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    # ------------------------------------------------------------------ fit
    def _check_params(self) -> None:
        if self.method not in options.SCORE_METHODS:
            raise ValueError(f"method must be one of {', '.join(options.SCORE_METHODS)}, got {self.method!r}")
        if self.contamination is not None and not 0.0 < self.contamination < 0.5:
            raise ValueError(f"contamination must be in (0, 0.5) or None, got {self.contamination!r}")
        if not 0.0 < self.fpr < 0.5:
            raise ValueError(f"fpr must be in (0, 0.5), got {self.fpr!r}")

    def fit(self, X: Any, y: Any = None) -> "OutlierVAE":
        """Train on normal images ``X`` (any layout edgevae accepts: uint8 or [0, 1] floats, (N, H, W), (N, C, H, W)
        or (N, H, W, C)), export a calibrated bundle and load it. ``y`` is ignored.

        Raises:
            ValueError: bad parameters or images.
            ImportError: the training extra is not installed (the message says what to install).
        """
        self._check_params()
        try:
            import numpy as np

            from edgevae.export import ExportConfig, export_bundle
            from edgevae.runtime import load
            from edgevae.training import DataSpec, ModelConfig, TrainConfig, train
        except ImportError:
            raise ImportError("OutlierVAE.fit needs the training extra: pip install 'edgevae[train]'") from None
        work = Path(self.work_dir) if self.work_dir is not None else Path(tempfile.mkdtemp(prefix="edgevae-fit-"))
        self._owns_work = self.work_dir is None
        images = np.asarray(X)
        model_cfg = {"latent_dim": self.latent_dim} if self.latent_dim is not None else {}
        given = {k: v for k, v in {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr}.items() if v}
        from edgevae.training.data import IN_MEMORY, infer_contract

        spec = DataSpec(source=IN_MEMORY)
        contract = infer_contract(spec, images=images)
        # trained from the array itself: no copy on disk, and the run keeps its held-out images for export
        result = train(spec, work / "run", ModelConfig(channels=contract.channels, height=contract.height,
                                                         width=contract.width, **model_cfg),
                       TrainConfig(seed=self.seed, **given), images=images)
        export_bundle(result.best_checkpoint, work / "bundle", ExportConfig(fpr=self.fpr, default_method=self.method),
                      force=True).close()
        self.model_ = load(work / "bundle", ["CPUExecutionProvider"], trusted_keys=[])
        self.bundle_dir_ = work / "bundle"
        if self.contamination is None:
            self.threshold_ = self.model_.threshold(self.method)
        else:
            self.threshold_ = float(np.quantile(self.model_.raw_scores(X, self.method), 1.0 - self.contamination))
        self.offset_ = -self.threshold_
        return self

    # ------------------------------------------------------------------ scoring
    def _fitted(self) -> Any:
        if not hasattr(self, "model_"):
            raise NotFittedError("this OutlierVAE is not fitted yet; call fit(X) with normal images first")
        return self.model_

    def score_samples(self, X: Any) -> Any:
        """The negated edgevae score (N,): higher means more normal, as in scikit-learn."""
        return -self._fitted().raw_scores(X, self.method).astype("float64")

    def decision_function(self, X: Any) -> Any:
        """``score_samples(X) - offset_`` (N,): negative for outliers, as in scikit-learn."""
        return self.score_samples(X) - self.offset_

    def predict(self, X: Any) -> Any:
        """+1 for normal images, -1 for outliers (scikit-learn's outlier-detector convention)."""
        import numpy as np

        return np.where(self.decision_function(X) < 0, -1, 1)

    def fit_predict(self, X: Any, y: Any = None) -> Any:
        return self.fit(X).predict(X)

    def export(self, path: str | os.PathLike[str]) -> Path:
        """Copy the fitted bundle to ``path`` (written to a temporary folder and renamed into place)."""
        from edgevae.runtime.atomic import atomic_folder

        self._fitted()
        with atomic_folder(path) as tmp:
            for item in Path(self.bundle_dir_).iterdir():
                shutil.copy2(item, tmp / item.name)
        return Path(path)

    def __del__(self) -> None:
        if getattr(self, "_owns_work", False) and hasattr(self, "bundle_dir_"):
            model = getattr(self, "model_", None)
            if model is not None:
                model.close()
            shutil.rmtree(Path(self.bundle_dir_).parent, ignore_errors=True)
