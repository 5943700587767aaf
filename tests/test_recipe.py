"""The pieces of the pre-training recipe against their definitions (docs/design.md, section 'Training recipe')."""

import math

import numpy as np
import pytest
import torch

from maest import MAESTConfig, MAESTForAudioClassification
from maest.training.recipe import PaperSchedule, WeightAveraging, mixup, teacher_labels
from maest.training.validation import macro_roc_auc_and_map


def tiny_model(**kwargs):
    torch.manual_seed(0)
    config = MAESTConfig.from_preset(
        "maest-5s", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=5, **kwargs
    )
    return MAESTForAudioClassification(config)


def test_schedule_matches_the_paper_at_key_epochs():
    # 10 steps per epoch; warm-up 5 epochs, flat until 50, linear decay over 50 epochs to 0.01.
    schedule = PaperSchedule(steps_per_epoch=10, warmup_epochs=5, decay_start_epoch=50, decay_epochs=50, final_factor=0.01)
    assert schedule(0) == pytest.approx(math.exp(-5.0))
    assert schedule(25) == pytest.approx(math.exp(-5.0 * 0.5**2))  # epoch 2.5: phase 0.5
    assert schedule(49) == pytest.approx(math.exp(-5.0 * 0.02**2))
    assert schedule(50) == 1.0 and schedule(300) == 1.0 and schedule(500) == 1.0
    assert schedule(750) == pytest.approx(0.01 + 0.99 * 0.5)  # halfway down
    assert schedule(990) == pytest.approx(0.01 + 0.99 * 0.02)
    assert schedule(1000) == pytest.approx(0.01) and schedule(1300) == pytest.approx(0.01)
    # Monotone up during warm-up, down during decay.
    values = [schedule(s) for s in range(0, 1300)]
    assert all(a <= b for a, b in zip(values[:50], values[1:51]))
    assert all(a >= b for a, b in zip(values[500:1000], values[501:1001]))


def test_schedule_drives_the_learning_rate():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=2e-5)
    schedule = PaperSchedule(steps_per_epoch=2, warmup_epochs=1, decay_start_epoch=2, decay_epochs=2, final_factor=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [2e-5 * schedule.factor_at_epoch(step / 2) for step in range(10)]
    np.testing.assert_allclose(rates, expected, rtol=1e-12)
    assert rates[-1] == pytest.approx(2e-7)


def test_mixup_weights_and_targets():
    torch.manual_seed(0)
    inputs = torch.randn(64, 20, 96)
    targets = (torch.rand(64, 7) > 0.5).float()
    teacher = (torch.rand(64, 7) > 0.5).float()
    mixed, (mixed_targets, mixed_teacher), lam, partner = mixup(inputs, [targets, teacher], alpha=0.3)
    assert lam.shape == (64,) and (lam >= 0.5).all() and (lam <= 1.0).all()
    assert sorted(partner.tolist()) == list(range(64))
    weight = lam[:, None]
    torch.testing.assert_close(mixed, inputs * weight[:, :, None] + inputs[partner] * (1 - weight[:, :, None]))
    torch.testing.assert_close(mixed_targets, targets * weight + targets[partner] * (1 - weight))
    torch.testing.assert_close(mixed_teacher, teacher * weight + teacher[partner] * (1 - weight))
    # Beta(0.3, 0.3) folded to [0.5, 1]: most of the mass is near 1 (mean of max(l, 1-l) is about 0.83).
    many = mixup(torch.zeros(4000, 1), torch.zeros(4000, 1), alpha=0.3)[2]
    assert 0.78 < many.mean().item() < 0.88


def test_structured_patchout_shapes_in_train_mode():
    model = tiny_model(train_patchout_time=10, train_patchout_freq=2)
    inputs = torch.randn(2, 316, 96)  # (316 - 16) // 10 + 1 = 31 time columns x 9 frequency rows
    model.train()
    hidden = model.maest(inputs, output_hidden_states=True).hidden_states[0]
    assert hidden.shape == (2, 2 + (9 - 2) * (31 - 10), 32)
    model.eval()
    hidden = model.maest(inputs, output_hidden_states=True).hidden_states[0]
    assert hidden.shape == (2, 2 + 9 * 31, 32)


def test_weight_averaging_is_the_mean_of_snapshots():
    model = tiny_model()
    average = WeightAveraging(model)
    snapshots = []
    for round_ in range(3):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter))
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        average.update(model)
    assert average.num_averaged == 3
    averaged = average.module.state_dict()
    for key in snapshots[0]:
        expected = torch.stack([s[key].float() for s in snapshots]).mean(0)
        torch.testing.assert_close(averaged[key].float(), expected, rtol=1e-5, atol=1e-6)


def test_teacher_student_loss_is_the_mean_of_both_bces():
    model = tiny_model(use_distillation_head=True).eval()
    inputs = torch.randn(3, 316, 96)
    labels = (torch.rand(3, 5) > 0.5).float()
    teacher_logits = torch.tensor([[0.0, -0.2, -0.21, 3.0, -3.0]] * 3)
    distillation = teacher_labels(teacher_logits, 0.45)
    # sigmoid(-0.2) = 0.4502 > 0.45; sigmoid(-0.21) = 0.4477 is not.
    assert distillation[0].tolist() == [1.0, 1.0, 0.0, 1.0, 0.0]
    out = model(inputs, labels=labels, distillation_labels=distillation)

    def bce(logits, targets):
        p = torch.sigmoid(logits.double())
        return -(targets * torch.log(p) + (1 - targets) * torch.log(1 - p)).mean()

    expected = (bce(out.logits, labels) + bce(out.distillation_logits, distillation)) / 2
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_validation_metrics_match_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    targets = (rng.random((200, 6)) > 0.7).astype(np.float32)
    scores = np.round(0.4 * targets + rng.random((200, 6)), 1)  # rounding makes ties
    targets[:, 5] = 0  # a class without positives is left out of the macro average
    result = macro_roc_auc_and_map(scores, targets)
    assert result["num_classes"] == 5
    assert result["roc_auc"] == pytest.approx(metrics.roc_auc_score(targets[:, :5], scores[:, :5], average="macro"))
    assert result["average_precision"] == pytest.approx(
        metrics.average_precision_score(targets[:, :5], scores[:, :5], average="macro")
    )
