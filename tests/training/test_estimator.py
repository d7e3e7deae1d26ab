"""edgevae.OutlierVAE: scikit-learn's outlier-detector conventions over a real trained and exported bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgevae.runtime import options

pytestmark = [pytest.mark.training, pytest.mark.export, pytest.mark.slow]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory, test_digits):  # type: ignore[no-untyped-def]
    from edgevae import OutlierVAE
    from edgevae.training.data import embedded_split

    images, labels = embedded_split("train")
    return OutlierVAE(epochs=3, latent_dim=4, work_dir=tmp_path_factory.mktemp("fit")).fit(images[labels == 0])


def test_conventions_match_scikit_learn(fitted, test_digits) -> None:  # type: ignore[no-untyped-def]
    x, y = test_digits
    s, d, p = fitted.score_samples(x), fitted.decision_function(x), fitted.predict(x)
    np.testing.assert_allclose(s, -fitted.model_.raw_scores(x, fitted.method))  # higher = more normal
    np.testing.assert_allclose(d, s - fitted.offset_)
    assert set(np.unique(p)) <= {-1, 1} and ((d < 0) == (p == -1)).all()
    np.testing.assert_array_equal(p == -1, fitted.model_.score(x, fitted.method).is_outlier)  # the bundle's flags
    assert (p[y != 0] == -1).mean() > (p[y == 0] == -1).mean()  # other digits are flagged more often than zeros


def test_params_clone_and_unfitted(fitted) -> None:  # type: ignore[no-untyped-def]
    from sklearn.base import clone

    from edgevae import OutlierVAE
    from edgevae.estimator import NotFittedError

    params = fitted.get_params()
    assert params["epochs"] == 3 and params["method"] == options.DEFAULT_METHOD
    copy = clone(fitted)
    assert copy.get_params() == params and not hasattr(copy, "model_")
    with pytest.raises(NotFittedError, match="not fitted"):
        copy.predict(np.zeros((1, 28, 28), np.uint8))
    assert copy.set_params(fpr=0.05).fpr == 0.05
    with pytest.raises(ValueError, match="Invalid parameter|unknown parameter"):
        OutlierVAE().set_params(colour="red")
    with pytest.raises(ValueError, match="method must be one of"):
        OutlierVAE(method="nope").fit(np.zeros((20, 28, 28), np.uint8))


def test_contamination_sets_the_training_quantile_and_export_ships_the_bundle(fitted, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from edgevae import OutlierVAE
    from edgevae.runtime import load
    from edgevae.training.data import embedded_split

    images, labels = embedded_split("train")
    zeros = images[labels == 0]
    # smooth_recon: continuous scores (combined's are -ln of step-wise p-values, whose ties keep a quantile from
    # splitting the training images at exactly 10 %)
    detector = OutlierVAE(epochs=2, latent_dim=4, contamination=0.1, method="smooth_recon").fit(zeros)
    assert (detector.predict(zeros) == -1).mean() == pytest.approx(0.1, abs=0.01)
    out = fitted.export(tmp_path / "bundle")
    with load(out, ["CPUExecutionProvider"]) as model:
        np.testing.assert_array_equal(model.raw_scores(zeros[:20]), fitted.model_.raw_scores(zeros[:20]))
