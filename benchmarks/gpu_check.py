"""The GPU check: the CUDA tests and `maest bench --device cuda` on short inputs, on one GPU, in a few minutes, with
the results in one JSON file.

    python -m maest.benchmarks.gpu_check --output gpu-check.json [--tests DIR]

It needs only the installed package and its dependencies (no repository virtual environment); the tests run where
the repository's `tests/` folder is found (`--tests`, or `./tests`) and pytest is installed, and are reported as
not run otherwise. `make gpu-check` runs it from the repository.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


# The tests that need a GPU are named `test_cuda_*`; test_gpu_path also runs the same path on the CPU.
CUDA_TEST_FILES = ("tests/test_gpu_path.py", "tests/test_precision.py")

# Short inputs: the 30 s model with random weights at batch 64, 3 rounds; 160 MP3 files of 3 minutes (960 segments)
# end to end; training steps at batch 64; the compiled bfloat16 model beside the eager one.
BENCH_ARGUMENTS = [
    "bench", "--device", "cuda", "--batch-size", "64", "--rounds", "3", "--training-rounds", "2",
    "--training-batch-size", "64", "--e2e-files", "160", "--e2e-rounds", "2", "--backends",
    "--extra-variants", "bfloat16-compiled",
]  # fmt: skip


def run_tests(tests_root: Path, timeout: float) -> dict:
    files = [str(tests_root.parent / name) for name in CUDA_TEST_FILES if (tests_root.parent / name).exists()]
    if not files:
        return {"run": False, "reason": f"no tests under {tests_root}"}
    try:
        import pytest  # noqa: F401
    except ImportError:
        return {"run": False, "reason": "pytest is not installed"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda", "-rs", *files]
    start = time.perf_counter()
    try:
        completed = subprocess.run(
            command, cwd=tests_root.parent, capture_output=True, text=True, timeout=timeout,
            env=dict(os.environ, HF_HUB_OFFLINE="1"),
        )  # fmt: skip
    except subprocess.TimeoutExpired as error:
        return {"run": True, "passed": False, "reason": f"timed out after {timeout:.0f} s", "output_tail": str(error.stdout)[-4000:]}
    output = completed.stdout + completed.stderr
    summary = next((line for line in reversed(output.splitlines()) if " in " in line and ("passed" in line or "failed" in line)), "")
    return {
        "run": True,
        "command": " ".join(command),
        "passed": completed.returncode == 0,
        "summary": summary.strip("= "),
        "seconds": time.perf_counter() - start,
        "output_tail": output[-4000:],
    }


def run_bench(extra: list) -> dict:
    """`maest bench` as a user runs it (its own process, its table on stdout), its results read from its JSON."""
    import tempfile

    arguments = BENCH_ARGUMENTS + extra
    with tempfile.TemporaryDirectory(prefix="maest-gpu-check-") as folder:
        output = Path(folder) / "bench.json"
        start = time.perf_counter()
        finished = subprocess.run([sys.executable, "-m", "maest", *arguments, "--output", str(output)])
        if finished.returncode != 0 or not output.is_file():
            raise RuntimeError(f"`maest {' '.join(arguments)}` exited with status {finished.returncode}")
        results = json.loads(output.read_text())
    results["command"] = "maest " + " ".join(arguments)
    results["seconds"] = time.perf_counter() - start
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", "-o", default="gpu-check.json", help="the JSON file to write (default gpu-check.json)")
    parser.add_argument("--tests", default="tests", help="the repository's tests folder (default ./tests)")
    parser.add_argument("--skip-tests", action="store_true", help="only the benchmark")
    parser.add_argument("--skip-bench", action="store_true", help="only the tests")
    parser.add_argument("--test-timeout", type=float, default=120.0, help="seconds for the CUDA tests (default 120)")
    parser.add_argument("bench_args", nargs="*", help="more `maest bench` options (after --)")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU is available (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    report = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
    }
    start = time.perf_counter()
    if not args.skip_tests:
        print("gpu-check: CUDA tests ...", file=sys.stderr, flush=True)
        report["tests"] = run_tests(Path(args.tests).resolve(), args.test_timeout)
        print(f"gpu-check: tests: {report['tests'].get('summary') or report['tests'].get('reason')}", file=sys.stderr, flush=True)
    if not args.skip_bench:
        print("gpu-check: maest bench --device cuda ...", file=sys.stderr, flush=True)
        try:
            report["bench"] = run_bench(args.bench_args)
        except Exception as error:  # the tests' results are still written
            import traceback

            report["bench"] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-4000:]}
            print(report["bench"]["traceback"], file=sys.stderr)
    report["seconds"] = time.perf_counter() - start
    Path(args.output).write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"gpu-check: wrote {args.output} ({report['seconds']:.0f} s)", file=sys.stderr)
    tests_ok = report.get("tests", {}).get("passed", True) is not False
    return 0 if tests_ok and "error" not in report.get("bench", {}) else 1


if __name__ == "__main__":
    sys.exit(main())
