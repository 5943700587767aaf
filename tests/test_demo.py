"""`maest demo --quick`: the whole chain (corpus, streaming pre-training, probes, heatmap, card, tagging) runs and
reports. The full demo's verdict is checked by running `make demo`."""

import json

import pytest

from maest.cli import main


@pytest.mark.slow
def test_quick_demo_runs_end_to_end(tmp_path, capsys):
    status = main(["demo", "--quick", "--output-dir", str(tmp_path)])
    output = capsys.readouterr().out
    results = json.loads((tmp_path / "results.json").read_text())
    assert status == (0 if results["passed"] else 1)
    assert ("PASS" if results["passed"] else "FAIL") in output
    for name in ("pretrained", "random", "log-mel statistics"):
        assert 0.0 <= results["results"][name]["roc_auc"] <= 1.0
    assert "| MAEST pre-trained" in output and "| log-mel mean+std per band" in output
    assert (tmp_path / "probe_sweep" / "heatmap.png").stat().st_size > 1000
    sweep = json.loads((tmp_path / "probe_sweep" / "results.json").read_text())
    assert len(sweep["results"]) == 2 * 7  # 2 blocks x the poster's 7 token sets
    assert (tmp_path / "model" / "README.md").is_file() and (tmp_path / "model" / "model.safetensors").is_file()
    assert "tempo class + mode" in (tmp_path / "model" / "README.md").read_text()
    assert results["predicted_tags"] and all(0 <= tag["score"] <= 1 for tag in results["predicted_tags"])


def test_synthetic_corpus_is_deterministic_and_tagged(tmp_path):
    from maest.synthetic import STYLES, synthesize_track, tempo_class
    import numpy as np

    first, facts = synthesize_track("house", 2.0, np.random.default_rng(5))
    second, _ = synthesize_track("house", 2.0, np.random.default_rng(5))
    assert np.array_equal(first, second) and first.dtype == np.float32 and np.abs(first).max() <= 0.9 + 1e-6
    low, high = STYLES["house"]["tempo"]
    assert low <= facts["bpm"] <= high and facts["tempo"] == [tempo_class(facts["bpm"])]
    assert facts["styles"] == ["house"] and facts["mode"][0] in ("major", "minor") and facts["instruments"]
