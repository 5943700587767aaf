"""Pre-training checkpoints: `output_dir/checkpoints/step-<8 digits>/`.

A checkpoint holds Accelerate's state (model, optimizer, scheduler, RNG states), the SWA average (`swa.safetensors`)
and each process's trainer state (`trainer_state_<rank>.json`: step, data positions, counts). It is written to a
temporary folder and renamed, so a killed run leaves either a complete checkpoint or none.
"""

import json
import os
import pickle
import shutil
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from maest.utils.errors import MAESTError


CHECKPOINT_PREFIX = "step-"
TRAINER_STATE = "trainer_state_{rank}.json"
SWA_WEIGHTS = "swa.safetensors"
# What an earlier run leaves in its output directory (a fresh run must not mix with it).
RUN_FILES = ("checkpoints", "final", "labels.txt", "label_counts.json", "data_report.json", "pretrain_config.yaml")


class PretrainCheckpointError(MAESTError, ValueError):
    """A pre-training checkpoint that is incomplete, damaged, or from other launch settings."""


def list_checkpoints(output_dir) -> list[Path]:
    """The complete checkpoints of a run, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def find_resume_checkpoint(resume: str | None, output_dir) -> Path | None:
    """The checkpoint `resume` names: `"latest"` (the newest in `output_dir`, `None` when there is none) or a path."""
    if not resume:
        return None
    if resume in ("latest", "auto", "true", "True"):
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume)
    if not path.exists():
        raise PretrainCheckpointError(f"resume checkpoint {path} does not exist")
    if not (path / TRAINER_STATE.format(rank=0)).is_file():
        raise PretrainCheckpointError(
            f"{path} is not a complete pre-training checkpoint (no {TRAINER_STATE.format(rank=0)})"
        )
    return path


def check_output_dir(output_dir, resume: str | None, overwrite: bool) -> list[Path]:
    """The earlier run's files in `output_dir` that a fresh run would mix with. Refuses to start over them unless
    the run resumes (they are its own) or `overwrite` is set (the caller deletes them)."""
    output_dir = Path(output_dir)
    found = [output_dir / name for name in RUN_FILES if (output_dir / name).exists()]
    if found and not resume and not overwrite:
        names = ", ".join(path.name for path in found)
        raise MAESTError(
            f"{output_dir} already holds a pre-training run ({names}): pass --resume to continue it, --overwrite to "
            f"delete it and start afresh, or choose another output_dir"
        )
    return found if overwrite and not resume else []


def remove_run_files(paths: list[Path]) -> None:
    for path in paths:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def save_checkpoint(accelerator, output_dir, step: int, state: dict, swa, keep: int) -> Path:
    """Writes `checkpoints/step-<step>` atomically (every process takes part) and keeps the newest `keep`."""
    root = Path(output_dir) / "checkpoints"
    final = root / f"{CHECKPOINT_PREFIX}{step:08d}"
    temporary = root / f".incomplete-{CHECKPOINT_PREFIX}{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary), safe_serialization=True)
    if accelerator.is_main_process and swa is not None:
        weights = {k: v.detach().cpu().contiguous() for k, v in swa.state_dict().items()}
        save_file(weights, str(temporary / SWA_WEIGHTS))
    with open(temporary / TRAINER_STATE.format(rank=accelerator.process_index), "w") as handle:
        json.dump(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():  # re-saving a step after a resume: replace it
            shutil.rmtree(final)
        os.replace(temporary, final)
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def read_trainer_state(path: Path, rank: int, num_processes: int, num_workers: int) -> dict:
    """This process's trainer state in checkpoint `path`, checked against the launch settings."""
    state_file = path / TRAINER_STATE.format(rank=rank)
    if not (path / TRAINER_STATE.format(rank=0)).is_file():
        raise PretrainCheckpointError(
            f"{path} is not a complete pre-training checkpoint (no {TRAINER_STATE.format(rank=0)})"
        )
    if not state_file.is_file():
        raise PretrainCheckpointError(
            f"{path} has no data position for process {rank}: it was written by a run with fewer processes; resume "
            f"with the same launch settings"
        )
    try:
        state = json.loads(state_file.read_text())
        written = (state["num_processes"], state["num_workers"])
    except (ValueError, KeyError, TypeError) as error:
        raise PretrainCheckpointError(f"{state_file} is damaged ({type(error).__name__}: {error})") from None
    if written != (num_processes, num_workers):
        raise PretrainCheckpointError(
            f"{path} was written with {written[0]} process(es) x {written[1]} data worker(s); this run has "
            f"{num_processes} x {num_workers}. Resume with the same settings so that every process continues from "
            f"its own data position"
        )
    return state


def load_checkpoint(accelerator, path: Path, swa, num_workers: int) -> dict:
    """Restores Accelerate's state and the SWA average from `path`; returns this process's trainer state."""
    state = read_trainer_state(path, accelerator.process_index, accelerator.num_processes, num_workers)
    try:
        accelerator.load_state(str(path))
        if swa is not None and (path / SWA_WEIGHTS).is_file():
            swa.load_state_dict(load_file(str(path / SWA_WEIGHTS), device=str(accelerator.device)))
    except (SafetensorError, pickle.UnpicklingError, OSError, RuntimeError, ValueError, KeyError, EOFError) as error:
        # safetensors, torch.load (weights only: a pickle of other objects is refused) and accelerate raise these
        # for truncated or foreign files.
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        raise PretrainCheckpointError(
            f"checkpoint {path} cannot be loaded ({type(error).__name__}: {reason}); resume from an earlier one "
            f"with --resume PATH"
        ) from None
    return state


__all__ = [
    "CHECKPOINT_PREFIX",
    "PretrainCheckpointError",
    "SWA_WEIGHTS",
    "TRAINER_STATE",
    "check_output_dir",
    "find_resume_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "read_trainer_state",
    "remove_run_files",
    "save_checkpoint",
]
