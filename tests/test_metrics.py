"""The project's ranking metrics against scikit-learn (the independent truth; a dev-only dependency), and their
`evaluate` modules loading offline."""

import os
import subprocess
import sys

import numpy as np
import pytest

from maest.training.evaluation.metrics import (
    METRIC_NAMES,
    average_precision,
    binary_average_precision,
    binary_roc_auc,
    load_metric,
    metric_path,
    roc_auc,
)


sklearn_metrics = pytest.importorskip("sklearn.metrics")


def random_multilabel(num_examples=200, num_labels=12, seed=0, quantize=None):
    rng = np.random.default_rng(seed)
    references = (rng.random((num_examples, num_labels)) < rng.uniform(0.05, 0.6, num_labels)).astype(np.int64)
    # Scores correlated with the labels, so that the values are away from 0.5 and differ between labels.
    scores = references * rng.uniform(0.0, 1.5, num_labels) + rng.standard_normal((num_examples, num_labels))
    if quantize:
        scores = np.round(scores * quantize) / quantize  # many ties
    return references, scores


def sklearn_per_label(references, scores):
    roc, ap = [], []
    for c in range(references.shape[1]):
        if 0 < references[:, c].sum() < len(references):
            roc.append(sklearn_metrics.roc_auc_score(references[:, c], scores[:, c]))
            ap.append(sklearn_metrics.average_precision_score(references[:, c], scores[:, c]))
        else:
            roc.append(np.nan)
            ap.append(np.nan)
    return np.array(roc), np.array(ap)


@pytest.mark.parametrize("quantize", [None, 2, 1])
@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_match_sklearn_including_ties(seed, quantize):
    references, scores = random_multilabel(seed=seed, quantize=quantize)
    if quantize:
        assert len(np.unique(scores)) < len(scores) // 4  # the tie handling is really exercised
    expected_roc, expected_ap = sklearn_per_label(references, scores)
    assert not np.isnan(expected_roc).any()

    per_label_roc, skipped = roc_auc(references, scores, average=None)
    per_label_ap, _ = average_precision(references, scores, average=None)
    np.testing.assert_allclose(per_label_roc, expected_roc, rtol=0, atol=1e-12)
    np.testing.assert_allclose(per_label_ap, expected_ap, rtol=0, atol=1e-12)
    assert skipped == 0
    assert binary_roc_auc(references[:, 1], scores[:, 1]) == pytest.approx(expected_roc[1], abs=1e-12)
    assert binary_average_precision(references[:, 1], scores[:, 1]) == pytest.approx(expected_ap[1], abs=1e-12)

    macro_roc, _ = roc_auc(references, scores)
    macro_ap, _ = average_precision(references, scores)
    assert macro_roc == pytest.approx(sklearn_metrics.roc_auc_score(references, scores, average="macro"), abs=1e-12)
    assert macro_ap == pytest.approx(
        sklearn_metrics.average_precision_score(references, scores, average="macro"), abs=1e-12
    )


def test_labels_with_one_class_are_skipped_and_counted():
    references, scores = random_multilabel(seed=3)
    references[:, 2] = 0  # no positive
    references[:, 5] = 1  # no negative
    expected_roc, expected_ap = sklearn_per_label(references, scores)

    per_label, skipped = roc_auc(references, scores, average=None)
    assert skipped == 2 and np.isnan(per_label[[2, 5]]).all() and not np.isnan(np.delete(per_label, [2, 5])).any()

    macro_roc, skipped_roc = roc_auc(references, scores)
    macro_ap, skipped_ap = average_precision(references, scores)
    assert skipped_roc == skipped_ap == 2
    assert macro_roc == pytest.approx(np.nanmean(expected_roc), abs=1e-12)
    assert macro_ap == pytest.approx(np.nanmean(expected_ap), abs=1e-12)
    # scikit-learn's own macro average over the kept columns agrees.
    kept = [c for c in range(references.shape[1]) if c not in (2, 5)]
    assert macro_roc == pytest.approx(sklearn_metrics.roc_auc_score(references[:, kept], scores[:, kept]), abs=1e-12)

    value, skipped = roc_auc(np.zeros((4, 2)), np.random.default_rng(0).random((4, 2)))
    assert np.isnan(value) and skipped == 2


def test_multiclass_references_are_one_vs_rest():
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 4, 300)
    scores = rng.standard_normal((300, 4)) + np.eye(4)[classes]
    one_hot = np.eye(4, dtype=np.int64)[classes]
    assert roc_auc(classes, scores)[0] == pytest.approx(sklearn_metrics.roc_auc_score(one_hot, scores), abs=1e-12)
    probabilities = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
    assert roc_auc(classes, probabilities)[0] == pytest.approx(
        sklearn_metrics.roc_auc_score(classes, probabilities, multi_class="ovr", average="macro"), abs=1e-12
    )
    assert average_precision(classes, scores)[0] == pytest.approx(
        sklearn_metrics.average_precision_score(one_hot, scores), abs=1e-12
    )


@pytest.mark.parametrize(
    "references, scores, message",
    [
        (np.zeros((3, 2)), np.zeros((3, 3)), "shape"),
        (np.full((2, 2), 2), np.zeros((2, 2)), "0/1"),
        (np.zeros((2, 2)), np.array([[0.0, np.nan], [0.0, 1.0]]), "NaN"),
        (np.array([0, 5]), np.zeros((2, 3)), "class indices"),
        (np.zeros((0, 2)), np.zeros((0, 2)), "no examples"),
    ],
)
def test_bad_inputs_are_clear_errors(references, scores, message):
    with pytest.raises(ValueError, match=message):
        roc_auc(references, scores)


def test_evaluate_modules_load_offline_and_agree():
    references, scores = random_multilabel(seed=4, quantize=2)
    references[:, 0] = 0
    for name, function, key in [
        ("macro_roc_auc", roc_auc, "roc_auc"),
        ("macro_average_precision", average_precision, "average_precision"),
    ]:
        metric = load_metric(name)
        result = metric.compute(references=references.tolist(), prediction_scores=scores.tolist())
        expected, skipped = function(references, scores)
        assert skipped == 1
        assert result == {key: pytest.approx(expected, abs=1e-12), "num_labels_skipped": 1}
        # Batches added one at a time give the same result.
        for start in range(0, len(scores), 64):
            metric.add_batch(references=references[start : start + 64], prediction_scores=scores[start : start + 64])
        assert metric.compute()[key] == pytest.approx(expected, abs=1e-12)
        per_label = metric.compute(references=references, prediction_scores=scores, average=None)[key]
        assert len(per_label) == references.shape[1] and np.isnan(per_label[0])


def test_evaluate_load_of_the_folder_works_in_a_fresh_offline_process(tmp_path):
    """`evaluate.load(<local path>)` with the Hub unreachable and an empty modules cache."""
    code = (
        "import evaluate, sys\n"
        "for path in sys.argv[1:]:\n"
        "    metric = evaluate.load(path, keep_in_memory=True)\n"
        "    scores = [[.9, .2], [.1, .8], [.7, .1]]\n"
        "    print(metric.compute(references=[[1, 0], [0, 1], [1, 1]], prediction_scores=scores))\n"
    )
    environment = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_EVALUATE_OFFLINE="1")
    environment.update(HF_HOME=str(tmp_path / "hf"), HF_MODULES_CACHE=str(tmp_path / "modules"))
    environment.update(HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")  # any download would fail
    output = subprocess.run(
        [sys.executable, "-c", code, *(str(metric_path(name)) for name in METRIC_NAMES)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert output.returncode == 0, output.stderr
    assert output.stdout.strip().splitlines()[-2:] == [
        "{'roc_auc': 0.75, 'num_labels_skipped': 0}",
        "{'average_precision': 0.9166666666666666, 'num_labels_skipped': 0}",
    ]
