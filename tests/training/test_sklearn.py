"""OutlierVAE in scikit-learn's own machinery: its estimator checks, Pipeline, clone, pickle, grid searches."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

pytestmark = [pytest.mark.training, pytest.mark.export, pytest.mark.slow]

sklearn = pytest.importorskip("sklearn")

# The checks OutlierVAE does not pass with contamination=None, each with its reason (docs/python-api.md repeats
# them); with a contamination, as scikit-learn's checks use detectors, it passes all of them.
EXPECTED_FAILED_WITHOUT_CONTAMINATION: dict[str, str] = {
    "check_outliers_train": "the threshold is calibrated at fpr (1 %) on held-out inputs, so a fit may flag none of "
                            "its own training inputs, which this check requires",
    "check_outliers_fit_predict": "the same: fit_predict on the training inputs may give no -1",
}


def _detector(**params):  # type: ignore[no-untyped-def]
    from edgevae import OutlierVAE

    return OutlierVAE(epochs=2, latent_dim=2, **params)


def test_scikit_learn_estimator_checks() -> None:
    from sklearn.utils.estimator_checks import check_estimator

    results = check_estimator(_detector(contamination=0.1), on_fail=None)
    failed = [(r["check_name"], str(r["exception"])[:200]) for r in results if r["status"] == "failed"]
    assert not failed, failed
    assert sum(r["status"] == "passed" for r in results) >= 40


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    from edgevae.training.data import embedded_split

    images, labels = embedded_split("train")
    test, test_labels = embedded_split("test")
    return images[labels == 1][:200], test, test_labels


@pytest.fixture(scope="module")
def fitted(digits):  # type: ignore[no-untyped-def]
    return _detector().fit(digits[0])


def test_tags_fitted_checks_and_unfitted_errors(fitted, digits) -> None:  # type: ignore[no-untyped-def]
    from sklearn.base import is_outlier_detector
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    fresh = _detector()
    assert is_outlier_detector(fresh)
    with pytest.raises(NotFittedError):
        check_is_fitted(fresh)
    with pytest.raises(NotFittedError, match="not fitted"):
        fresh.predict(digits[1][:2])
    check_is_fitted(fitted)
    assert fitted.n_features_in_ == 28 * 28


def test_pickle_round_trip_scores_the_same(fitted, digits) -> None:  # type: ignore[no-untyped-def]
    x = digits[1][:50]
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(again.score_samples(x), fitted.score_samples(x))
    np.testing.assert_array_equal(again.predict(x), fitted.predict(x))
    assert again.bundle_dir_ != fitted.bundle_dir_  # a bundle of its own: the two live independently


def test_pipeline_clone_and_grid_search(digits) -> None:  # type: ignore[no-untyped-def]
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    normal, test, labels = digits
    # the machinery is what this checks: no defect head (the pickle test's fitted detector carries one)
    pipe = make_pipeline(FunctionTransformer(lambda x: x[:, 2:26, 2:26]), _detector(defect_head=False))
    pipe.fit(normal)
    assert set(np.unique(pipe.predict(test[:30]))) <= {-1, 1}
    assert clone(pipe).get_params()["outliervae__latent_dim"] == 2

    def separation(estimator, X, y=None) -> float:  # type: ignore[no-untyped-def]
        """AUROC of other digits against ones in the test split, by score_samples (higher = more normal)."""
        from sklearn.metrics import roc_auc_score

        return float(roc_auc_score(labels[:300] == 1, estimator.score_samples(test[:300])))

    search = GridSearchCV(_detector(defect_head=False), {"latent_dim": [2, 4]}, scoring=separation, cv=2)
    search.fit(normal[:120])
    assert search.best_params_["latent_dim"] in (2, 4) and 0.5 < search.best_score_ <= 1.0


def test_contamination_is_the_training_percentile_and_tables_work(digits, capsys) -> None:  # type: ignore[no-untyped-def]
    from edgevae import OutlierVAE

    rng = np.random.default_rng(0)
    table = rng.normal(size=(300, 5))
    detector = OutlierVAE(epochs=2, latent_dim=2, contamination=0.05, verbose=1).fit(table)
    assert (detector.predict(table) == -1).mean() == pytest.approx(0.05, abs=0.004)
    assert "epoch 1" in capsys.readouterr().err  # verbose progress
    far = table[:20] + 6.0  # six standard deviations out on every column
    assert (detector.score_samples(far) < detector.score_samples(table[:20])).mean() >= 0.9
    with pytest.raises(ValueError, match="features"):
        detector.predict(table[:, :4])
