"""River's estimator checks (river.checks), one pytest case per check.

For every parameter set of ``OnlineLogisticRegression._unit_test_params()``, the model alone and behind a
``preprocessing.StandardScaler()`` go through every check that ``river.checks.yield_checks`` yields, as
``river.checks.check_estimator`` runs them: on a clone, skipping what the model declares in
``_unit_test_skips()`` (shown as a skipped case with the reason).
"""

from __future__ import annotations

from collections import Counter

import pytest
from river import checks, preprocessing

from stream_logreg import OnlineLogisticRegression

SKIP_REASON = (
    "declared in _unit_test_skips(): learn_many takes one mean-gradient step per batch (the textbook "
    "batch formula), as River's own linear models do, so it cannot match a learn_one loop"
)


def _param_id(params: dict) -> str:
    if not params:
        return "defaults"
    return ",".join(
        f"{k}={type(v).__name__ if hasattr(v, '_get_params') else v}" for k, v in sorted(params.items())
    )


def _cases():
    for params in OnlineLogisticRegression._unit_test_params():
        for wrapper in ("alone", "scaled"):
            model = OnlineLogisticRegression(**params)
            if wrapper == "scaled":
                model = preprocessing.StandardScaler() | model
            seen: Counter = Counter()
            for check in checks.yield_checks(model):
                name = check.__name__
                case_id = f"{_param_id(params)}-{wrapper}-{name}-{seen[name]}"
                seen[name] += 1
                marks = [pytest.mark.skip(reason=SKIP_REASON)] if name in model._unit_test_skips() else []
                yield pytest.param(model, check, id=case_id, marks=marks)


CASES = list(_cases())


def test_every_parameter_set_and_wrapper_is_checked():
    ids = {case.id.split("-")[0] + "-" + case.id.split("-")[1] for case in CASES}
    assert len(ids) == 2 * len(list(OnlineLogisticRegression._unit_test_params()))
    names = {case.id.split("-")[2] for case in CASES}
    # the checks that matter most here are there
    assert {"check_learn_one", "check_pickling", "check_predict_proba_many_matches_predict_proba_one",
            "check_emerging_features", "check_disappearing_features", "check_shuffle_features_no_impact",
            "check_predict_proba_one_binary", "check_clone_is_independent"} <= names


@pytest.mark.parametrize("model, check", CASES)
def test_river_check(model, check):
    check(model.clone())
