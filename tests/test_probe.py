"""The paper's probes (train_probe), model selection, the sweep's report files, and label handling."""

import json

import numpy as np
import pytest

from maest.training.evaluation.labeled_data import build_label_encoding, carve_split
from maest.training.evaluation.probe import ProbeClassifier, probe_sweep, train_probe


sklearn_metrics = pytest.importorskip("sklearn.metrics")


def separable_task(num_examples, seed, num_features=16, num_labels=3, margin=0.3):
    """Gaussian features; each label is the side of a fixed hyperplane, examples within `margin` of any hyperplane
    left out, so a linear model can rank every label perfectly."""
    rng = np.random.default_rng(seed)
    directions = np.random.default_rng(1234).standard_normal((num_features, num_labels))
    directions /= np.linalg.norm(directions, axis=0)
    features = rng.standard_normal((num_examples * 3, num_features))
    projections = features @ directions
    keep = (np.abs(projections) > margin).all(axis=1)
    features, projections = features[keep][:num_examples], projections[keep][:num_examples]
    return features.astype(np.float32), (projections > 0).astype(np.float32)


@pytest.fixture(scope="module")
def splits():
    return separable_task(1000, 0), separable_task(300, 1), separable_task(300, 2)


@pytest.mark.parametrize("kind, minimum", [("linear", 0.97), ("mlp", 0.97)])
def test_probe_learns_a_linearly_separable_task(splits, kind, minimum):
    (train, validation, test) = splits
    result = train_probe(*train, *validation, *test, kind=kind, return_scores=True)
    assert result["roc_auc"] > minimum
    assert result["average_precision"] > minimum
    assert result["num_labels_skipped"] == 0 and result["task"] == "multilabel" and result["kind"] == kind
    # The reported metrics are those of the returned scores, by scikit-learn.
    assert result["roc_auc"] == pytest.approx(sklearn_metrics.roc_auc_score(test[1], result["test_scores"]), abs=1e-9)
    assert result["average_precision"] == pytest.approx(
        sklearn_metrics.average_precision_score(test[1], result["test_scores"]), abs=1e-9
    )
    assert len(result["history"]) == 60 and 1 <= result["best_epoch"] <= 60


def test_probe_is_at_chance_on_shuffled_labels():
    """With the training and validation labels shuffled there is nothing to learn: the test ROC-AUC is at chance
    (many features, so that a direction the probe drifts into by chance hardly aligns with the true ones)."""
    train, validation, test = (
        separable_task(n, seed, num_features=128, margin=0.05) for n, seed in ((1000, 0), (300, 1), (300, 2))
    )
    rng = np.random.default_rng(5)
    shuffled_train = train[1][rng.permutation(len(train[1]))]
    shuffled_validation = validation[1][rng.permutation(len(validation[1]))]
    results = [
        train_probe(train[0], shuffled_train, validation[0], shuffled_validation, *test, kind=kind, epochs=20)
        for kind in ("linear", "mlp")
    ]
    # 300 test examples x 3 labels: the standard error of the macro ROC-AUC at chance is about 0.02.
    assert all(abs(result["roc_auc"] - 0.5) < 0.08 for result in results), [r["roc_auc"] for r in results]
    learned = train_probe(*train, *validation, *test, kind="mlp", epochs=20)
    assert learned["roc_auc"] > 0.8  # the same data with its labels is learnable


def test_model_selection_keeps_the_best_validation_epoch(splits):
    """A validation split whose labels are the opposite of the training ones: validation ROC-AUC falls as the probe
    learns, so the kept epoch is an early one, and the test metrics are those of the weights after that epoch."""
    (train, validation, test) = splits
    inverted = (validation[0], 1 - validation[1])
    selected = train_probe(*train, *inverted, *test, kind="linear", epochs=12)
    history = [epoch["validation_roc_auc"] for epoch in selected["history"]]
    assert selected["best_epoch"] == 1 + int(np.argmax(history))
    assert selected["validation_roc_auc"] == max(history)
    assert selected["best_epoch"] < 12 and history[-1] < max(history)

    # Training for exactly `best_epoch` epochs (same seed, so the same first epochs) ends with the kept weights.
    stopped = train_probe(*train, *inverted, *test, kind="linear", epochs=selected["best_epoch"])
    assert stopped["history"] == selected["history"][: selected["best_epoch"]]
    assert stopped["roc_auc"] == selected["roc_auc"] and stopped["average_precision"] == selected["average_precision"]
    # A sound validation split keeps a later, better epoch.
    sound = train_probe(*train, *validation, *test, kind="linear", epochs=12)
    assert sound["best_epoch"] > selected["best_epoch"] and sound["roc_auc"] > selected["roc_auc"] + 0.05


def test_probe_is_deterministic_and_standardizes_with_training_statistics(splits):
    (train, validation, test) = splits
    first = train_probe(*train, *validation, *test, kind="mlp", epochs=3, seed=7)
    again = train_probe(*train, *validation, *test, kind="mlp", epochs=3, seed=7)
    assert first["history"] == again["history"] and first["roc_auc"] == again["roc_auc"]
    # An affine change of the features (the same for every split) is undone by standardization.
    scale, shift = np.linspace(0.01, 100, train[0].shape[1]).astype(np.float32), np.float32(50)
    rescaled = train_probe(
        train[0] * scale + shift,
        train[1],
        validation[0] * scale + shift,
        validation[1],
        test[0] * scale + shift,
        test[1],
        kind="mlp",
        epochs=3,
        seed=7,
    )
    assert rescaled["roc_auc"] == pytest.approx(first["roc_auc"], abs=2e-3)


def test_multiclass_probe_uses_cross_entropy_and_one_vs_rest_scores():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((4, 8)) * 3

    def blobs(num_examples, seed):
        classes = np.random.default_rng(seed).integers(0, 4, num_examples)
        return (centers[classes] + np.random.default_rng(seed + 1).standard_normal((num_examples, 8))).astype(
            np.float32
        ), classes

    train, validation, test = blobs(600, 1), blobs(200, 3), blobs(200, 5)
    result = train_probe(*train, *validation, *test, kind="mlp", epochs=30, return_scores=True)
    assert result["task"] == "multiclass" and result["num_labels"] == 4
    np.testing.assert_allclose(result["test_scores"].sum(axis=1), 1.0, atol=1e-6)  # softmax probabilities
    assert result["roc_auc"] == pytest.approx(
        sklearn_metrics.roc_auc_score(test[1], result["test_scores"], multi_class="ovr"), abs=1e-9
    )
    assert result["roc_auc"] > 0.95
    # One-hot labels with task="multiclass" are the same task.
    one_hot = [np.eye(4)[labels] for labels in (train[1], validation[1], test[1])]
    same = train_probe(
        train[0], one_hot[0], validation[0], one_hot[1], test[0], one_hot[2], task="multiclass", epochs=30
    )
    assert same["roc_auc"] == result["roc_auc"]


def test_probe_architectures():
    mlp = ProbeClassifier(20, 5, "mlp")
    layers = list(mlp.layers)
    assert [type(layer).__name__ for layer in layers] == ["Linear", "ReLU", "Dropout", "Linear"]
    assert layers[0].out_features == 512 and layers[2].p == 0.5 and layers[3].out_features == 5
    linear = ProbeClassifier(20, 5, "linear")
    assert sum(p.numel() for p in linear.parameters()) == 20 * 5 + 5


def test_probe_rejects_bad_inputs(splits):
    (train, validation, test) = splits
    with pytest.raises(ValueError, match="features"):
        train_probe(train[0][:, :5], train[1], *validation, *test, epochs=1)
    with pytest.raises(ValueError, match="rows"):
        train_probe(train[0], train[1][:10], *validation, *test, epochs=1)
    with pytest.raises(ValueError, match="multi-hot"):
        train_probe(train[0], train[1] * 2, *validation, *test, epochs=1)
    with pytest.raises(ValueError, match="validation split has no label with both"):
        train_probe(*train, validation[0], np.ones_like(validation[1]), *test, epochs=1)
    with pytest.raises(ValueError, match="kind"):
        train_probe(*train, *validation, *test, kind="svm")
    with pytest.raises(ValueError, match="finite"):
        bad = train[0].copy()
        bad[0, 0] = np.nan
        train_probe(bad, train[1], *validation, *test, epochs=1)


def test_test_labels_never_seen_in_training_are_refused():
    """Old behaviour: NaN cells and exit 0. Now: one line that says what is wrong with the split."""
    from maest.training.evaluation import EvaluationError

    rng = np.random.default_rng(0)
    features = [rng.standard_normal((40, 4)).astype(np.float32) for _ in range(3)]
    train = np.zeros((40, 2), np.float32)
    train[::2, 0] = 1  # only label 0 ever occurs in training
    held_out = np.zeros((40, 2), np.float32)
    held_out[::2, 1] = 1  # the test labels are all label 1
    validation = train.copy()
    with pytest.raises(EvaluationError, match=r"the test split has 1 label\(s\) that never occur in the training split \(label indices 1\)") as caught:
        train_probe(features[0], train, features[1], validation, features[2], held_out, epochs=1)
    assert "\n" not in str(caught.value)
    # Also when other test labels were seen in training (before: a warning, and a chance-level label in the macro
    # averages); the message names the labels when their names are known.
    held_out[1::2, 0] = 1
    with pytest.raises(EvaluationError, match=r"1 label\(s\) that never occur in the training split \(labels 'flute'\)"):
        train_probe(features[0], train, features[1], validation, features[2], held_out, epochs=1,
                    label_names=["piano", "flute"])
    # Multiclass: the test classes are not among the training classes.
    with pytest.raises(EvaluationError, match="never occur in the training split"):
        train_probe(features[0], np.arange(40) % 2, features[1], np.arange(40) % 2, features[2], 2 + np.arange(40) % 2,
                    epochs=1)


@pytest.mark.parametrize(
    "setting, value, message",
    [
        ("learning_rate", float("nan"), "learning_rate must be a finite number greater than 0, got nan"),
        ("learning_rate", -1.0, "learning_rate must be a finite number greater than 0, got -1.0"),
        ("weight_decay", float("inf"), "weight_decay must be a finite number at least 0, got inf"),
        ("epochs", 0, "epochs must be an integer at least 1, got 0"),
        ("batch_size", 2.5, "batch_size must be an integer at least 1, got 2.5"),
        ("dropout", 1.0, "dropout must be a finite number at least 0 and less than 1, got 1.0"),
        ("seed", -1, r"seed must be an integer in \[0, 4294967295\], got -1"),
    ],
)
def test_probe_settings_are_checked(splits, setting, value, message):
    """Before: a NaN learning rate was an exit 70 from AdamW, an infinite weight decay NaN scores."""
    from maest.training.evaluation import EvaluationError

    (train, validation, test) = splits
    with pytest.raises(EvaluationError, match=f"^{message}$"):
        train_probe(*train, *validation, *test, **{setting: value})


def test_sweep_writes_json_markdown_and_heatmap(tmp_path, splits):
    """A blocks x token-sets sweep over `extract_embeddings`-style dicts: one row per configuration, every file."""
    (train, validation, test) = splits
    token_sets = ("c", "d", "a", "cd", "ca", "da", "cda")
    rng = np.random.default_rng(0)

    def features(split_features, block):
        # Block b keeps b informative dimensions of 16, so the blocks really differ.
        noise = rng.standard_normal(split_features.shape).astype(np.float32)
        informative = np.concatenate([split_features[:, : 4 * block], noise[:, 4 * block :]], axis=1)
        vectors = {"c": informative, "d": noise, "a": informative[:, ::-1].copy()}
        return {(block, name): np.concatenate([vectors[t] for t in name], axis=1) for name in token_sets}

    blocks = (1, 2, 3)
    split_features = {
        split: {key: value for block in blocks for key, value in features(data[0], block).items()}
        for split, data in zip(("train", "validation", "test"), (train, validation, test))
    }
    labels = {"train": train[1], "validation": validation[1], "test": test[1]}
    rows = probe_sweep(
        split_features,
        labels,
        kind="linear",
        output_dir=tmp_path,
        epochs=2,
        progress=False,
        settings={"note": "synthetic"},
    )
    assert [(row["block"], row["tokens"]) for row in rows] == [(b, t) for b in blocks for t in token_sets]

    document = json.loads((tmp_path / "results.json").read_text())
    assert len(document["results"]) == 21 and document["settings"]["note"] == "synthetic"
    assert document["settings"]["probe"] == "linear" and document["settings"]["epochs"] == 2
    best = max(rows, key=lambda row: row["roc_auc"])
    assert (document["best"]["block"], document["best"]["tokens"]) == (best["block"], best["tokens"])
    only_noise = next(row for row in rows if row["tokens"] == "d")
    assert best["roc_auc"] > only_noise["roc_auc"]

    markdown = (tmp_path / "results.md").read_text()
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert len(table) == 2 * (1 + 7)  # two tables: header + 7 token sets
    assert table[0] == "| tokens | block 1 | block 2 | block 3 |"
    assert f"**{100 * best['roc_auc']:.1f}**" in markdown
    cell = next(row for row in rows if (row["block"], row["tokens"]) == (2, "ca"))
    assert (
        next(line for line in table if line.startswith("| ca |")).split("|")[3].strip()
        == f"{100 * cell['roc_auc']:.1f}"
    )

    import matplotlib.image

    image = matplotlib.image.imread(tmp_path / "heatmap.png")
    assert (tmp_path / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_sweep_keeps_finished_rows_when_a_configuration_fails(tmp_path, splits):
    (train, validation, test) = splits
    features = {
        split: {(1, "c"): data[0], (2, "c"): data[0][:, :3]}
        for split, data in zip(("train", "validation", "test"), (train, validation, test))
    }
    features["test"][(2, "c")] = test[0][:, :4]  # inconsistent: fails on block 2
    labels = {"train": train[1], "validation": validation[1], "test": test[1]}
    with pytest.raises(ValueError, match="features"):
        probe_sweep(features, labels, kind="linear", output_dir=tmp_path, epochs=1, progress=False)
    document = json.loads((tmp_path / "results.json").read_text())
    assert [(row["block"], row["tokens"]) for row in document["results"]] == [(1, "c")]


def test_label_encodings():
    tags = build_label_encoding({"train": [["rock", "piano"], ["jazz"]], "test": [["piano", "flute"]]})
    assert tags.task == "multilabel" and tags.names == ["flute", "jazz", "piano", "rock"]
    targets, kept = tags.encode([["rock", "piano"], None, []])
    np.testing.assert_array_equal(targets, [[0, 0, 1, 1], [0, 0, 0, 0]])
    assert kept.tolist() == [0, 2]

    comma = build_label_encoding({"train": ["rock, piano", "jazz"]})
    assert comma.names == ["jazz", "piano", "rock"] and comma.encode(["jazz,rock"])[0].tolist() == [[1, 0, 1]]
    classes = build_label_encoding({"train": ["rock", "jazz"], "test": ["folk"]})
    assert classes.task == "multiclass" and classes.encode(["rock", "folk"])[0].tolist() == [2, 0]
    multi_hot = build_label_encoding({"train": [[0, 1, 1], [1, 0, 0]]}, label_names=["a", "b", "c"])
    assert multi_hot.names == ["a", "b", "c"] and multi_hot.encode([[0, 1, 1]])[0].tolist() == [[0, 1, 1]]

    import datasets

    class_label = build_label_encoding({"train": [1, 0]}, feature=datasets.ClassLabel(names=["jazz", "rock"]))
    assert class_label.task == "multiclass" and class_label.names == ["jazz", "rock"]
    tag_ids = build_label_encoding(
        {"train": [[1], [0, 2]]}, feature=datasets.List(datasets.ClassLabel(names=["x", "y", "z"]))
    )
    assert tag_ids.encode([[0, 2]])[0].tolist() == [[1, 0, 1]]

    with pytest.raises(ValueError, match="one class per track"):
        build_label_encoding({"train": [["a", "b"]]}, task="multiclass")
    with pytest.raises(ValueError, match="not among the given label names"):
        build_label_encoding({"train": [["a", "b"]]}, label_names=["a"])


def test_carve_split_is_deterministic_and_disjoint():
    kept, carved = carve_split(100, 0.15, seed=0)
    assert len(carved) == 15 and len(kept) == 85
    assert sorted(np.concatenate([kept, carved]).tolist()) == list(range(100))
    again = carve_split(100, 0.15, seed=0)
    assert np.array_equal(again[1], carved) and not np.array_equal(carve_split(100, 0.15, seed=1)[1], carved)
    with pytest.raises(ValueError):
        carve_split(1, 0.5)
