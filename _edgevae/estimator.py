"""A scikit-learn outlier detector over edgevae: ``fit`` trains and exports, the rest runs the bundle.

    >>> from edgevae import OutlierVAE
    >>> detector = OutlierVAE(epochs=30).fit(normal_images)        # trains (needs the train extra)
    >>> detector.predict(images)                                    # +1 normal, -1 outlier
    >>> detector.export("bundle/")                                  # ship it; devices use edgevae.runtime

Conventions are scikit-learn's outlier detectors' (IsolationForest, OneClassSVM, LocalOutlierFactor):
``score_samples`` is higher for more normal inputs (the negated edgevae score), ``decision_function`` is
negative for outliers (``score_samples - offset_``), and ``predict`` gives +1 for normal and -1 for outliers.
With scikit-learn installed the detector is a real ``BaseEstimator`` / ``OutlierMixin`` (tags, ``clone``,
``Pipeline``, grid searches, ``check_is_fitted``); it pickles (the bundle travels as bytes, sessions are rebuilt).

Inputs: images ((N, H, W), (N, C, H, W) or (N, H, W, C); uint8 or floats in [0, 1]), or a 2-D table (N, F) of
numbers, whose columns are scaled by the training data's range (into [0.25, 0.75], so values beyond the range
stay distinguishable up to half a range out) and laid out, repeated, as an 8x8-or-larger grey image per row.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from edgevae.runtime import options

try:  # scikit-learn is optional: with it, OutlierVAE is one of its estimators
    from sklearn.base import BaseEstimator, OutlierMixin
    from sklearn.exceptions import NotFittedError as _SklearnNotFitted

    _BASES: tuple[type, ...] = (OutlierMixin, BaseEstimator)
except ImportError:  # pragma: no cover - the dev extra installs scikit-learn
    _BASES = ()
    _SklearnNotFitted = None

# Fewest samples a fit accepts: the calibration of a bundle needs at least 10 normal inputs.
MIN_SAMPLES = 10
# Below this many samples the held-out split is too small to calibrate on: the training inputs are used.
MIN_SPLIT_SAMPLES = 60
# Table rows are laid out as square grey images at least this wide (the architecture needs two stride-2 stages).
MIN_TABLE_SIDE = 8

NotFittedError: type[Exception]
if _SklearnNotFitted is not None:
    NotFittedError = _SklearnNotFitted
else:  # pragma: no cover
    class NotFittedError(ValueError, AttributeError):  # type: ignore[no-redef]
        """The detector was used before ``fit`` (the same double base as scikit-learn's)."""


def _is_sparse(X: Any) -> bool:
    """A scipy sparse matrix or array (refused: a VAE scores dense inputs)."""
    try:
        from scipy import sparse
    except ImportError:  # pragma: no cover - no scipy, no sparse inputs
        return False
    return bool(sparse.issparse(X))


class _Params:
    """``get_params`` / ``set_params`` / ``repr`` where scikit-learn is not installed."""

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        import inspect

        return {name: getattr(self, name) for name in inspect.signature(type(self).__init__).parameters if name != "self"}

    def set_params(self, **params: Any) -> Any:
        valid = self.get_params()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"unknown parameter {name!r} for {type(self).__name__}; valid: {', '.join(valid)}")
            setattr(self, name, value)
        return self


class OutlierVAE(*(_BASES or (_Params,))):  # type: ignore[misc]
    """An edgevae VAE as a scikit-learn outlier detector.

    Args:
        method: the score method (``edgevae.runtime.methods.SCORE_METHODS``).
        fpr: the false-positive rate of the threshold, calibrated on the held-out split of the training inputs
            (ignored when ``contamination`` is set).
        contamination: scikit-learn's meaning: the share of the *training* inputs expected to be outliers; the
            offset is then that percentile of the training inputs' ``score_samples``. None: use ``fpr``.
        epochs, batch_size, lr, latent_dim, seed: training settings (None: edgevae's defaults).
        work_dir: where the run and the bundle are kept (None: a temporary folder removed with the detector).
        verbose: 0 silent; 1 a line per training epoch and export step on stderr.
        defect_head: train and ship the defect head (a local defect detector trained on synthetic defects). None
            (the default): on for images, off for tables, whose tiled rows have no spatial structure to learn.

    Attributes (after ``fit``):
        model_: the loaded bundle (an ``edgevae.runtime.Model``).
        threshold_: the edgevae score above which an input is an outlier.
        offset_: ``-threshold_``, so that ``decision_function = score_samples - offset_``.
        n_features_in_: values per input (features of a table, pixels x channels of an image).
    """

    def __init__(self, method: str = options.DEFAULT_METHOD, fpr: float = options.CALIBRATION_FPR,
                 contamination: float | None = None, epochs: int | None = None, batch_size: int | None = None,
                 lr: float | None = None, latent_dim: int | None = None, seed: int = options.SEED,
                 work_dir: str | os.PathLike[str] | None = None, verbose: int = 0,
                 defect_head: bool | None = None) -> None:
        self.method, self.fpr, self.contamination = method, fpr, contamination
        self.epochs, self.batch_size, self.lr, self.latent_dim, self.seed = epochs, batch_size, lr, latent_dim, seed
        self.work_dir = work_dir
        self.verbose = verbose
        self.defect_head = defect_head

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True  # images
        tags.non_deterministic = False
        return tags

    # ------------------------------------------------------------------ fit
    def _check_params(self) -> None:
        if self.method not in options.SCORE_METHODS:
            raise ValueError(f"method must be one of {', '.join(options.SCORE_METHODS)}, got {self.method!r}")
        if self.contamination is not None and not 0.0 < self.contamination <= 0.5:
            raise ValueError(f"contamination must be in (0, 0.5] or None, got {self.contamination!r}")
        if not 0.0 < self.fpr < 0.5:
            raise ValueError(f"fpr must be in (0, 0.5), got {self.fpr!r}")

    def fit(self, X: Any, y: Any = None) -> "OutlierVAE":
        """Train on normal inputs ``X`` (images or a table, see the module docstring), export a calibrated bundle
        and load it. ``y`` is ignored.

        Raises:
            ValueError: bad parameters or inputs (fewer than 10, not finite, of another layout).
            ImportError: the training extra is not installed (the message says what to install).
        """
        self._check_params()
        try:
            from edgevae.training import train  # noqa: F401  (checks the extra before any work)
        except ImportError:
            raise ImportError("OutlierVAE.fit needs the training extra: pip install 'edgevae[train]'") from None
        images = self._fit_layout(X)
        self._close()
        work = Path(self.work_dir) if self.work_dir is not None else Path(tempfile.mkdtemp(prefix="edgevae-fit-"))
        self._owns_work = self.work_dir is None
        self.bundle_dir_ = self._train_and_export(images, work)
        self._load(self.bundle_dir_)
        if self.contamination is None:
            self.threshold_ = self.model_.threshold(self.method)
        else:  # scikit-learn's rule: the contamination percentile of the training inputs' score_samples
            import numpy as np

            self.threshold_ = -float(np.percentile(self.score_samples(X), 100.0 * self.contamination))
        self.offset_ = -self.threshold_
        return self

    def _fit_layout(self, X: Any) -> Any:
        """Validate the training inputs and learn their layout: images as they are, a table's column ranges."""
        import numpy as np

        if _is_sparse(X) or np.asarray(X).ndim == 2:  # a table (sparse ones are refused with scikit-learn's message)
            table = self._validate_table(X, reset=True)
            low, high = table.min(axis=0), table.max(axis=0)
            self.feature_min_ = low
            self.feature_range_ = np.where(high > low, high - low, 1.0)
            self.table_side_ = max(MIN_TABLE_SIDE, math.ceil(math.sqrt(table.shape[1])))
            images = self._table_images(table)
        else:
            self.__dict__.pop("table_side_", None)
            images = np.asarray(X)
            if images.ndim not in (3, 4):
                raise ValueError(f"expected images (N, H, W), (N, C, H, W) or (N, H, W, C), or a table (N, F); got an "
                                 f"array of shape {images.shape}")
            self.n_features_in_ = int(np.prod(images.shape[1:]))
        n = images.shape[0]
        if n < MIN_SAMPLES:
            raise ValueError(f"OutlierVAE needs at least {MIN_SAMPLES} normal samples to calibrate on, got {n} "
                             f"sample{'s' if n != 1 else ''}")
        return images

    def _validate_table(self, X: Any, reset: bool) -> Any:
        """A 2-D table as float64 (finite values; scikit-learn's checks and messages where it is installed)."""
        import numpy as np

        if _BASES:
            from sklearn.utils.validation import validate_data

            table: Any = validate_data(self, X, reset=reset, dtype=np.float64)
            return table
        table = np.asarray(X, dtype=np.float64)  # pragma: no cover
        if not np.isfinite(table).all():  # pragma: no cover
            raise ValueError("Input X contains NaN or infinity")
        if reset:  # pragma: no cover
            self.n_features_in_ = table.shape[1]
        return table

    def _table_images(self, table: Any) -> Any:
        """Table rows as (N, 1, side, side) float32 images: columns scaled by the training range into [0.25, 0.75]
        (clipped to [0, 1]), each row repeated until it fills the image (every pixel carries a feature: constant
        padding would give the anomaly map pixels with no spread to standardise by)."""
        import numpy as np

        scaled = np.clip(0.25 + 0.5 * (table - self.feature_min_) / self.feature_range_, 0.0, 1.0)
        side = self.table_side_
        repeats = -(-side * side // table.shape[1])
        return np.tile(scaled, (1, repeats))[:, :side * side].astype(np.float32).reshape(-1, 1, side, side)

    def _wants_head(self) -> bool:
        """Whether this fit trains the defect head: as asked, else for images but not for tables."""
        return bool(self.defect_head) if self.defect_head is not None else not hasattr(self, "table_side_")

    def _train_and_export(self, images: Any, work: Path) -> Path:
        from edgevae.export import ExportConfig, export_bundle
        from edgevae.training import IN_MEMORY, DataSpec, ModelConfig, TrainConfig, train
        from edgevae.training.data import infer_contract

        spec = DataSpec(source=IN_MEMORY)
        contract = infer_contract(spec, images=images)
        model_cfg = {"latent_dim": self.latent_dim} if self.latent_dim is not None else {}
        given = {k: v for k, v in {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr}.items() if v}
        # trained from the array itself: no copy on disk, and the run keeps its held-out inputs for export
        result = train(spec, work / "run", ModelConfig(channels=contract.channels, height=contract.height,
                                                         width=contract.width, **model_cfg),
                       TrainConfig(seed=self.seed, defect_head=self._wants_head(), **given), images=images,
                       progress=self._training_progress())
        small = images.shape[0] < MIN_SPLIT_SAMPLES  # too few held out to calibrate on: the training inputs
        export_bundle(result.best_checkpoint, work / "bundle", ExportConfig(fpr=self.fpr, default_method=self.method),
                      force=True, progress=self._say if self.verbose else None,
                      calibration_images=images if small else None, reference_images=images if small else None).close()
        return work / "bundle"

    def _say(self, message: str) -> None:
        print(f"[OutlierVAE] {message}", file=sys.stderr, flush=True)

    def _training_progress(self) -> Any:
        if not self.verbose:
            return None

        def progress(event: str, info: Any) -> None:
            if event == "epoch_end":
                self._say(f"epoch {info['epoch']}: train loss {info['train_loss']:.2f}, validation -ELBO "
                          f"{info['val_neg_elbo']:.2f} ({info['seconds']:.1f} s)")
            elif event == "split":
                self._say(f"training on {info['n_train']} inputs, {info['n_val']} held out")
            elif event == "defect_done":
                self._say(f"defect head: {info['steps']} steps in {info['seconds']:.1f} s")
        return progress

    # ------------------------------------------------------------------ scoring
    def _fitted(self) -> Any:
        if not hasattr(self, "model_"):
            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                                 "appropriate arguments before using this estimator.")
        return self.model_

    def _inputs(self, X: Any) -> Any:
        """What the bundle takes: a table laid out as at fit, images as they are."""
        self._fitted()
        if hasattr(self, "table_side_") or _is_sparse(X):
            return self._table_images(self._validate_table(X, reset=False))
        return X

    def score_samples(self, X: Any) -> Any:
        """The negated edgevae score (N,): higher means more normal, as in scikit-learn."""
        return -self._fitted().raw_scores(self._inputs(X), self.method).astype("float64")

    def decision_function(self, X: Any) -> Any:
        """``score_samples(X) - offset_`` (N,): negative for outliers, as in scikit-learn."""
        return self.score_samples(X) - self.offset_

    def predict(self, X: Any) -> Any:
        """+1 for normal inputs, -1 for outliers (scikit-learn's outlier-detector convention)."""
        import numpy as np

        return np.where(self.decision_function(X) < 0, -1, 1)

    def fit_predict(self, X: Any, y: Any = None, **kwargs: Any) -> Any:
        return self.fit(X).predict(X)

    def export(self, path: str | os.PathLike[str]) -> Path:
        """Copy the fitted bundle to ``path`` (written to a temporary folder and renamed into place)."""
        from edgevae.runtime.atomic import atomic_folder

        self._fitted()
        with atomic_folder(path) as tmp:
            for item in Path(self.bundle_dir_).iterdir():
                shutil.copy2(item, tmp / item.name)
        return Path(path)

    # ------------------------------------------------------------------ pickling and cleaning up
    def _load(self, folder: Path) -> None:
        from edgevae.runtime import load

        self.model_ = load(folder, ["CPUExecutionProvider"], trusted_keys=[])

    def __getstate__(self) -> dict[str, Any]:
        """The parameters and fitted attributes; the bundle travels as its files' bytes, not as sessions."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("model_", "_owns_work")}
        if hasattr(self, "model_"):
            folder = Path(self.bundle_dir_)
            state["_bundle_files"] = {item.name: item.read_bytes() for item in sorted(folder.iterdir()) if item.is_file()}
            del state["bundle_dir_"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        files = state.pop("_bundle_files", None)
        self.__dict__.update(state)
        if files is not None:  # a bundle of its own, in a temporary folder removed with the detector
            folder = Path(tempfile.mkdtemp(prefix="edgevae-unpickled-")) / "bundle"
            folder.mkdir()
            for name, data in files.items():
                (folder / name).write_bytes(data)
            self.bundle_dir_ = folder
            self._owns_work = True
            self._load(folder)

    def _close(self) -> None:
        """Release the sessions and remove a temporary work folder."""
        model = self.__dict__.pop("model_", None)
        if model is not None:
            model.close()
        if getattr(self, "_owns_work", False) and hasattr(self, "bundle_dir_"):
            shutil.rmtree(Path(self.bundle_dir_).parent, ignore_errors=True)
            self._owns_work = False

    def __del__(self) -> None:
        self._close()
