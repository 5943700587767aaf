"""The tables of a `maest bench` results dict: one set of rows, rendered as aligned text or as Markdown."""


def _format(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def variant_rows(results: dict) -> list[list[str]]:
    """One row per timed variant: name, s/batch, min audio/s, GFLOP/s, embedding cosine (min), top-5 agreement."""
    inference = results.get("inference") or {}
    rows = []
    for name, entry in inference.get("model_only", {}).items():
        accuracy = inference.get("accuracy", {}).get(name, {})
        rows.append(
            [
                name,
                f"{entry['seconds_per_batch_median']:.3f}",
                f"{entry['minutes_audio_per_second']:.3f}",
                f"{entry['achieved_gflops_per_second']:.1f}",
                _format(accuracy.get("embedding_cosine_min"), ".5f"),
                _format(accuracy.get("top5_agreement"), ".2f"),
                _format(inference.get("ratios", {}).get(f"{name}_over_float32"), ".2f") if name != "float32" else "1.00",
            ]
        )
    return rows


def ratio_rows(results: dict) -> list[list[str]]:
    """One row per target: name, value, target, met."""
    rows = []
    for name, entry in results.get("targets", {}).items():
        met = {True: "yes", False: "NO", None: "n/a"}[entry["met"]]
        rows.append([name, f"{entry['value']:.3f}", f"{entry['target']:.3f}", met + (f" ({entry['note']})" if "note" in entry else "")])
    return rows


def summary_lines(results: dict) -> list[str]:
    """The machine, the settings, the GEMM peak, skipped variants, training and end-to-end in sentences."""
    machine, settings = results["machine"], results["settings"]
    lines = [
        f"maest bench on {machine['device']} ({machine['cpu']}, {machine['threads']} threads), torch {machine['torch']}; "
        f"model {results['model']}, batch {settings['batch_size']} x {settings['num_frames']} frames, medians of "
        f"{settings['rounds']} interleaved rounds"
    ]
    inference = results.get("inference") or {}
    if "flop_bound" in inference:
        by_runtime = ", ".join(f"{n} {v:.0f}" for n, v in inference.get("matmul_peak_gflops_by_runtime", {}).items())
        bound = inference["flop_bound"]
        lines.append(
            f"GEMM peak {inference['matmul_peak_gflops']:.1f} GFLOP/s (best of {by_runtime}); MAEST "
            f"{bound['float32_gflops_per_input']:.1f} GFLOP per input -> FLOP bound {bound['minutes_audio_per_second']:.3f} min audio/s"
        )
    if "bf16_matmul_peak_gflops" in inference:
        fractions = ", ".join(
            f"{name} {inference['ratios'][key]:.0%}"
            for name in ("bfloat16", "bfloat16-compiled")
            if (key := f"{name}_fraction_of_bf16_peak") in inference.get("ratios", {})
        )
        lines.append(f"bf16 matmul rate {inference['bf16_matmul_peak_gflops'] / 1000:.0f} TFLOP/s; MAEST reaches {fractions} of it")
    for name, reason in inference.get("skipped_variants", {}).items():
        lines.append(f"{name}: skipped ({reason})")
    training = results.get("training") or {}
    if training and "skipped" not in training:
        lines.append(
            f"training (batch {training['batch_size']}, {training['crop_frames']} frames): "
            f"{training['steps_per_second_no_patchout']:.3f} steps/s without patchout, "
            f"{training['steps_per_second_patchout']:.3f} with {training['train_patchout_time']} of "
            f"{training['time_columns']} columns dropped"
        )
        if "default_over_float32" in training:
            lines.append(
                f"training on the CUDA default (bf16 autocast, patchout): {training['steps_per_second_patchout_bf16_autocast']:.3f} "
                f"steps/s, {training['default_over_float32']:.2f}x the float32 step; peak memory {training['peak_memory_gb']:.1f} GB"
            )
    end_to_end = results.get("end_to_end") or {}
    if end_to_end and "skipped" not in end_to_end:
        lines.append(
            f"end-to-end ({end_to_end.get('backend', 'torch')} {end_to_end['dtype']}, {end_to_end['num_files']} files, "
            f"{end_to_end['audio_minutes']:.1f} min of audio, {end_to_end['segments']} segments, batch "
            f"{end_to_end['batch_size']}): {end_to_end['end_to_end_minutes_audio_per_second']:.3f} min audio/s vs "
            f"model-only embed {end_to_end['model_only_minutes_audio_per_second']:.3f}"
        )
        if "seconds_per_batch" in end_to_end:
            stages = end_to_end["seconds_per_batch"]
            lines.append(
                f"end-to-end on the GPU: {end_to_end['end_to_end_segments_per_second']:.0f} segments/s vs model-only "
                f"{end_to_end['model_only_segments_per_second']:.0f} ({end_to_end['end_to_end_over_model_only']:.2f}); per batch "
                f"of {end_to_end['batch_size']}: decode+resample {stages['decode_one_core'] * 1000:.0f} ms on one core "
                f"({stages['decode_all_workers'] * 1000:.1f} ms over {end_to_end['num_workers']} workers), copy to GPU "
                f"{stages['transfer'] * 1000:.1f} ms, front-end {stages['front_end'] * 1000:.1f} ms, model "
                f"{stages['model'] * 1000:.1f} ms"
            )
    for section in ("training", "end_to_end"):
        if (results.get(section) or {}).get("skipped"):
            lines.append(f"{section}: skipped ({results[section]['skipped']})")
    return lines


VARIANT_HEADER = ["variant", "s/batch", "min audio/s", "GFLOP/s", "emb cos (min)", "top-5", "x torch f32"]
RATIO_HEADER = ["ratio", "value", "target", "met"]


def _text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))) for row in [header] + rows]


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def render(results: dict, markdown: bool = False) -> str:
    """The results as text (aligned columns, for the terminal) or Markdown (for benchmarks/results/results.md, the README)."""
    table = _markdown_table if markdown else _text_table
    lines = summary_lines(results) + [""] + table(VARIANT_HEADER, variant_rows(results))
    lines += [""] + table(RATIO_HEADER, ratio_rows(results))
    return "\n".join(lines) + "\n"


__all__ = ["render", "ratio_rows", "summary_lines", "variant_rows"]
