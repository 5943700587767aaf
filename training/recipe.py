"""The pieces of MAEST's training recipe (docs/design.md, section 'Training recipe'), each small enough to test
against its formula.

- `PaperSchedule`: exponential warm-up, plateau, linear decay to a floor (PaSST's `exp_warmup_linear_down`).
- `mixup`: per-example lambda ~ Beta(alpha, alpha), lambda = max(lambda, 1 - lambda), applied to inputs and targets.
- `WeightAveraging`: stochastic weight averaging (an equal-weight running mean of snapshots) on
  `torch.optim.swa_utils.AveragedModel`.
- `teacher_labels`: the teacher-student targets, teacher sigmoid > 0.45.

Structured patchout is the model's own (`MAESTConfig.train_patchout_time` / `train_patchout_freq`, active in
`train()` mode).
"""

import math

import torch
from torch.optim.swa_utils import AveragedModel


class PaperSchedule:
    """Learning-rate factor of MAEST/PaSST as a function of the (fractional) epoch:

    - warm-up: `exp(-5 * (1 - e / warmup_epochs) ** 2)` for `e < warmup_epochs`, then 1;
    - decay: 1 until `decay_start_epoch`, then linear down to `final_factor` over `decay_epochs`, then `final_factor`.

    The factor is the product of both. The paper: warm-up 5, decay from epoch 50 over 50 epochs to 0.01. An epoch is
    `steps_per_epoch` optimizer steps; the schedule is evaluated at every step (`epoch = step / steps_per_epoch`).
    Usable as the `lr_lambda` of `torch.optim.lr_scheduler.LambdaLR`; its state (plain numbers) is checkpointed with
    the scheduler.
    """

    def __init__(self, steps_per_epoch: float, warmup_epochs: float = 5, decay_start_epoch: float = 50,
                 decay_epochs: float = 50, final_factor: float = 0.01):
        if steps_per_epoch <= 0:
            raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
        if warmup_epochs < 0 or decay_epochs < 0 or not 0 <= final_factor <= 1:
            raise ValueError("warmup_epochs and decay_epochs must be >= 0 and final_factor in [0, 1]")
        self.steps_per_epoch = float(steps_per_epoch)
        self.warmup_epochs = float(warmup_epochs)
        self.decay_start_epoch = float(decay_start_epoch)
        self.decay_epochs = float(decay_epochs)
        self.final_factor = float(final_factor)

    def factor_at_epoch(self, epoch: float) -> float:
        warmup = 1.0
        if epoch < self.warmup_epochs:
            phase = 1.0 - epoch / self.warmup_epochs
            warmup = math.exp(-5.0 * phase * phase)
        since_decay = epoch - self.decay_start_epoch
        if since_decay <= 0:
            decay = 1.0
        elif since_decay < self.decay_epochs:
            decay = self.final_factor + (1.0 - self.final_factor) * (self.decay_epochs - since_decay) / self.decay_epochs
        else:
            decay = self.final_factor
        return warmup * decay

    def __call__(self, step: int) -> float:
        return self.factor_at_epoch(step / self.steps_per_epoch)


def mixup(input_values: torch.Tensor, targets, alpha: float = 0.3, generator: torch.Generator | None = None):
    """Mixes each example with a random partner of the batch (PaSST's mixup).

    Args:
        input_values (`torch.Tensor` of shape `(batch, ...)`).
        targets: a tensor `(batch, num_labels)` or a list of such tensors (ground truth, teacher labels), all mixed
            with the same partners and weights.
        alpha (`float`): Beta distribution parameter (0.3 in the paper).

    Returns:
        `(mixed_inputs, mixed_targets, lam, partner)`: `lam` of shape `(batch,)` is the weight of each example's own
        data (>= 0.5) and `partner` the permutation of partners.
    """
    batch_size = input_values.shape[0]
    device = input_values.device
    partner = torch.randperm(batch_size, generator=generator).to(device)
    beta = torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha)))
    if generator is None:
        lam = beta.sample((batch_size,))
    else:  # Beta(a, a) = Ga / (Ga + Gb); torch's samplers take no generator, so draw through a fork of it.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
            lam = beta.sample((batch_size,))
    lam = torch.maximum(lam, 1.0 - lam).to(device)

    def mix(tensor):
        weight = lam.to(tensor.dtype).view(-1, *([1] * (tensor.ndim - 1)))
        return tensor * weight + tensor[partner] * (1.0 - weight)

    mixed_targets = [mix(t) for t in targets] if isinstance(targets, (list, tuple)) else mix(targets)
    return mix(input_values), mixed_targets, lam, partner


def teacher_labels(teacher_logits: torch.Tensor, threshold: float = 0.45) -> torch.Tensor:
    """Hard teacher-student targets for the distillation head: `sigmoid(teacher_logits) > threshold` as floats."""
    return (torch.sigmoid(teacher_logits.float()) > threshold).to(teacher_logits.dtype if teacher_logits.is_floating_point() else torch.float32)


class WeightAveraging(AveragedModel):
    """Stochastic weight averaging: `update()` adds a snapshot of the model's current weights to an equal-weight
    running mean (`AveragedModel`'s default average); the buffers follow the live model. The averaged copy lives on
    the same device as the model; its `module` is a full model to evaluate or `save_pretrained`."""

    def __init__(self, model: torch.nn.Module):
        super().__init__(model, use_buffers=False)

    def update(self, model: torch.nn.Module) -> None:
        self.update_parameters(model)

    @property
    def num_averaged(self) -> int:
        return int(self.n_averaged.item())


__all__ = ["PaperSchedule", "WeightAveraging", "mixup", "teacher_labels"]
