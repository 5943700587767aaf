"""Embedding extraction for probing (per-track means of every block's pooled tokens), its on-disk cache, and the
`maest probe` command end to end on a tiny generated audiofolder dataset."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import synthetic_music, write_audio
from maest import MAESTFeatureExtractor, MAESTForAudioClassification
from maest.feature_extraction.audio import AudioDecodingError
from maest.modeling import pool_embedding_tokens
from maest.training.evaluation.embeddings import (
    extract_embeddings,
    extract_track_embeddings,
    parse_blocks,
    token_set_name,
)


@pytest.fixture(scope="module")
def small_model(small_model_dir):
    return MAESTForAudioClassification.from_pretrained(small_model_dir).eval()


@pytest.fixture(scope="module")
def source_tracks(tmp_path_factory):
    """Three files of 3 s (one padded segment of 5 s), 7 s (one segment; the 2 s rest is under half a segment and
    dropped) and 13 s (two segments and a padded third of 3 s)."""
    folder = tmp_path_factory.mktemp("tracks")
    return [write_audio(folder / f"track{i}.wav", synthetic_music(seconds, seed=i)) for i, seconds in enumerate((3, 7, 13))]


@pytest.fixture()
def tracks(source_tracks, tmp_path):
    """This test's own copies of the tracks (some tests change files)."""
    return [Path(shutil.copy2(path, tmp_path / path.name)) for path in source_tracks]


def embeddings_by_hand(model, path):
    """Every block's cls/dist/mean vectors averaged over the file's segments, with `embed` (which runs only the blocks
    it needs: a different code path from the one-pass extraction)."""
    from torchcodec.decoders import AudioDecoder

    decoded = AudioDecoder(str(path)).get_all_samples()
    extractor = MAESTFeatureExtractor(max_length=model.config.max_length)
    segments = extractor(decoded.data, sampling_rate=decoded.sample_rate, return_segments=True)["input_values"]
    result = {}
    width = model.config.hidden_size
    with torch.no_grad():
        for block in range(1, model.config.num_hidden_layers + 1):
            cls, dist, mean = (
                model.maest.embed(segments, block=block - 1, tokens="cda").mean(0).numpy().reshape(3, width)
            )
            vectors = {"c": cls, "d": dist, "a": mean}
            for tokens in ("c", "d", "a", "cd", "ca", "da", "cda"):
                result[(block, tokens)] = np.concatenate([vectors[letter] for letter in tokens])
    return result, len(segments)


def test_extraction_equals_running_the_model_on_the_segments(small_model, tracks, tmp_path):
    embeddings = extract_track_embeddings(small_model, tracks, batch_size=2, cache_dir=tmp_path, progress=False)
    assert embeddings.num_segments.tolist() == [1, 1, 3] and embeddings.indices == [0, 1, 2]
    assert embeddings.blocks == [1, 2, 3]
    as_dict = extract_embeddings(small_model, tracks, cache_dir=tmp_path, progress=False)  # read back from the cache
    assert extract_embeddings(
        small_model, tracks, blocks="2-3", tokens="cda", cache_dir=tmp_path, progress=False
    ).keys() == {(2, "cda"), (3, "cda")}
    assert len(as_dict) == 3 * 7 and as_dict[(3, "cda")].shape == (3, 3 * 64) and as_dict[(1, "c")].shape == (3, 64)
    for row, path in enumerate(tracks):
        expected, num_segments = embeddings_by_hand(small_model, path)
        assert num_segments == embeddings.num_segments[row]
        for key, vector in expected.items():
            np.testing.assert_allclose(as_dict[key][row], vector, rtol=0, atol=2e-5, err_msg=str(key))
    # Token order follows the request, as pool_embedding_tokens does.
    hidden = torch.randn(1, 5, 4)
    assert token_set_name("cls,mean") == "ca" and token_set_name(("mean", "cls")) == "ac"
    np.testing.assert_array_equal(
        embeddings.features(2, "ac"),
        np.concatenate([embeddings.features(2, "a"), embeddings.features(2, "c")], axis=1),
    )
    assert pool_embedding_tokens(hidden, "ac").shape == (1, 8)


def test_dataset_input_equals_file_list_and_keeps_columns(small_model, source_tracks):
    tracks = source_tracks
    import datasets

    dataset = datasets.Dataset.from_dict({"audio": [str(p) for p in tracks], "tags": [["a"], ["b"], ["a", "b"]]})
    dataset = dataset.cast_column("audio", datasets.Audio())
    from_dataset = extract_track_embeddings(small_model, dataset, keep_columns=("tags",), progress=False)
    from_files = extract_track_embeddings(small_model, tracks, progress=False)
    np.testing.assert_allclose(from_dataset.tokens[2], from_files.tokens[2], atol=1e-6)
    assert from_dataset.columns["tags"] == [["a"], ["b"], ["a", "b"]]
    assert from_dataset.keys == from_files.keys  # the same files, so the same cache keys


def test_cache_is_reused_and_a_changed_file_invalidates_its_entry(small_model, tracks, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = extract_track_embeddings(small_model, tracks, cache_dir=cache, cache_name="train", progress=False)
    assert (first.num_computed, first.num_cached) == (3, 0)
    files = list(cache.rglob("*.safetensors"))
    assert [f.name for f in files] == ["train.safetensors"]

    # A second call reads everything from the cache: the model must not run.
    def no_forward(*args, **kwargs):
        raise AssertionError("the model ran although every track is cached")

    with monkeypatch.context() as patch:
        patch.setattr(type(small_model.maest), "forward", no_forward)
        second = extract_track_embeddings(small_model, tracks, cache_dir=cache, cache_name="train", progress=False)
    assert (second.num_computed, second.num_cached) == (0, 3)
    for block in first.blocks:
        np.testing.assert_array_equal(second.tokens[block], first.tokens[block])

    # Rewriting one file (new content, size and modification time) recomputes only that track.
    write_audio(tracks[1], synthetic_music(9, seed=42))
    os.utime(tracks[1], ns=(os.stat(tracks[1]).st_atime_ns, os.stat(tracks[1]).st_mtime_ns + 10**9))
    third = extract_track_embeddings(small_model, tracks, cache_dir=cache, cache_name="train", progress=False)
    assert (third.num_computed, third.num_cached) == (1, 2)
    fresh = extract_track_embeddings(small_model, tracks, progress=False)
    np.testing.assert_allclose(third.tokens[3], fresh.tokens[3], atol=1e-6)
    assert not np.allclose(third.tokens[3][1], first.tokens[3][1])
    np.testing.assert_array_equal(third.tokens[3][[0, 2]], first.tokens[3][[0, 2]])
    # The outdated entry was replaced, not kept beside the new one.
    from safetensors import safe_open

    with safe_open(str(files[0]), framework="np") as handle:
        assert len(json.loads(handle.metadata()["keys"])) == 3

    # Other weights are another model: another cache folder, nothing reused.
    other = MAESTForAudioClassification(small_model.config).eval()
    fourth = extract_track_embeddings(other, tracks, cache_dir=cache, cache_name="train", progress=False)
    assert fourth.num_cached == 0 and len(list(cache.iterdir())) == 2


def test_unreadable_audio_is_named_or_skipped(small_model, source_tracks, tmp_path):
    tracks = source_tracks
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF....WAVEfmt this is not audio")
    with pytest.raises(AudioDecodingError, match="corrupt.wav"):
        extract_track_embeddings(small_model, [tracks[0], corrupt], progress=False)
    embeddings = extract_track_embeddings(
        small_model, [tracks[0], corrupt, tracks[2]], skip_bad_audio=True, progress=False
    )
    assert embeddings.indices == [0, 2] and len(embeddings.problems) == 1
    assert embeddings.problems[0]["index"] == 1 and embeddings.problems[0]["source"].endswith("corrupt.wav")
    with pytest.raises(AudioDecodingError, match="not found"):
        extract_track_embeddings(small_model, [tmp_path / "missing.wav"], progress=False)


def test_parse_blocks():
    assert parse_blocks("1-12", 12) == list(range(1, 13))
    assert parse_blocks("1,4,7-9", 12) == [1, 4, 7, 8, 9]
    assert parse_blocks(6, 12) == [6] and parse_blocks(None, 3) == [1, 2, 3] and parse_blocks("all", 2) == [1, 2]
    for bad in ("0", "13", "3-1", "x"):
        with pytest.raises(ValueError):
            parse_blocks(bad, 12)


def make_audiofolder(root, splits=("train", "test"), sizes=None, corrupt_in=None):
    """Tracks tagged by what they contain: a bass tone, a high whistle, noise bursts (2 s each, 16 kHz)."""
    sizes = sizes or {"train": 24, "validation": 6, "test": 8}
    names = ("bass", "whistle", "noise")
    for split_index, split in enumerate(splits):
        folder = root / split
        folder.mkdir(parents=True)
        rows = []
        for i in range(sizes[split]):
            rng = np.random.default_rng(100 * split_index + i)
            tags = [name for name in names if rng.random() < 0.5] or ["bass"]
            t = np.arange(32000) / 16000
            audio = 0.01 * rng.standard_normal(len(t))
            if "bass" in tags:
                audio += 0.5 * np.sin(2 * np.pi * rng.uniform(50, 90) * t)
            if "whistle" in tags:
                audio += 0.3 * np.sin(2 * np.pi * rng.uniform(2500, 4000) * t)
            if "noise" in tags:
                audio += 0.3 * rng.standard_normal(len(t)) * (np.sin(2 * np.pi * 2 * t) > 0)
            write_audio(folder / f"{i}.wav", (0.9 * audio / np.abs(audio).max()).astype(np.float32))
            rows.append({"file_name": f"{i}.wav", "tags": tags})
        if split == corrupt_in:
            (folder / "broken.wav").write_bytes(b"not audio at all")
            rows.append({"file_name": "broken.wav", "tags": ["bass"]})
        (folder / "metadata.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return root


def test_maest_probe_command_end_to_end(small_model_dir, tmp_path, capsys):
    from maest.cli import main

    data = make_audiofolder(tmp_path / "data", corrupt_in="test")
    output, cache = tmp_path / "out", tmp_path / "cache"
    arguments = [
        "probe",
        "--model",
        str(small_model_dir),
        "--data",
        str(data),
        "--output-dir",
        str(output),
        "--cache-dir",
        str(cache),
        "--epochs",
        "5",
        "--quiet",
    ]
    assert main(arguments + ["--sweep"]) == 0
    printed = capsys.readouterr().out
    assert "no validation split" in printed and "skipped 1 unreadable" in printed

    document = json.loads((output / "results.json").read_text())
    assert [(row["block"], row["tokens"]) for row in document["results"]] == [
        (block, tokens) for block in (1, 2, 3) for tokens in ("c", "d", "a", "cd", "ca", "da", "cda")
    ]
    settings = document["settings"]
    assert settings["labels"] == ["bass", "noise", "whistle"] and settings["task"] == "multilabel"
    # 24 training tracks: 4 (15 %) carved as the validation split; the broken test file skipped and counted.
    assert settings["num_tracks"] == {"train": 20, "validation": 4, "test": 8}
    assert "validation" in settings["carved_splits"]
    assert [
        problem["source"].endswith("broken.wav") for problem in settings["skipped_tracks"]["test"]["unreadable_audio"]
    ] == [True]
    assert all(row["roc_auc"] is None or 0 <= row["roc_auc"] <= 1 for row in document["results"])
    assert (output / "results.md").is_file() and (output / "heatmap.png").stat().st_size > 1000

    # One configuration, linear probe: every embedding comes from the cache written by the sweep.
    single = tmp_path / "single"
    assert (
        main(
            arguments[:5]
            + [
                "--output-dir",
                str(single),
                "--cache-dir",
                str(cache),
                "--epochs",
                "5",
                "--quiet",
                "--blocks",
                "2",
                "--tokens",
                "cda",
                "--probe",
                "linear",
            ]
        )
        == 0
    )
    document = json.loads((single / "results.json").read_text())
    assert [(row["block"], row["tokens"]) for row in document["results"]] == [(2, "cda")]
    assert document["settings"]["probe"] == "linear"
    assert all(counts["computed"] == 0 for counts in document["settings"]["cache"].values())

    # Bad input: a clear error and a non-zero status.
    assert main(arguments[:5] + ["--label-column", "mood", "--no-cache", "--quiet"]) == 2
    assert "mood" in capsys.readouterr().err


def test_bytes_and_arrays_go_through_the_shared_decoder_and_adapter(small_model, source_tracks, tmp_path):
    # Embedded bytes decode (from memory) to what the file gives; arrays go through `audio_to_mono` as in training
    # and inference: int16 PCM gives its float reading's embedding, (channels, samples) the channels' mean.
    from maest.feature_extraction.audio import load_audio

    path = source_tracks[0]
    pcm = np.round(load_audio(path).numpy() * 32767).astype(np.int16)
    as_float = pcm.astype(np.float32) / 32768
    inputs = [
        str(path),
        {"path": "embedded/track0.wav", "bytes": path.read_bytes()},
        {"array": pcm, "sampling_rate": 16000},
        {"array": as_float, "sampling_rate": 16000},
        {"array": np.stack([as_float * 0.5, as_float * 1.5]), "sampling_rate": 16000},
    ]
    embeddings = extract_track_embeddings(small_model, inputs, progress=False)
    tokens = embeddings.tokens[2]
    np.testing.assert_allclose(tokens[1], tokens[0], atol=1e-6)
    np.testing.assert_allclose(tokens[2], tokens[3], atol=1e-5)
    np.testing.assert_allclose(tokens[4], tokens[3], atol=1e-5)
    np.testing.assert_allclose(tokens[3], tokens[0], atol=1e-3)  # the 16-bit rounding of the same track
