"""The streaming pre-training data: sources, labels, random crops, bad data, resumable positions, and the
PaSST/DeiT initializations."""

import json
import logging

import numpy as np
import pytest
import torch

from conftest import synthetic_music, write_audio
from maest import MAESTConfig, MAESTFeatureExtractor, MAESTForAudioClassification
from maest.training.data import (
    decode_audio,
    DataQualityError,
    TrainingDataError,
    TaggedAudioStream,
    TagVocabulary,
    load_streaming_dataset,
    prepare_columns,
    resolve_data_format,
)

MAX_LENGTH = 66  # 0.84 s crops keep these tests fast


def write_folder(directory, rows, seconds=1.5):
    """An audiofolder: rows of (file name, tags or None, kind) with kind 'ok', 'corrupt' or 'short'."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "metadata.jsonl", "w") as handle:
        for index, (name, tags, kind) in enumerate(rows):
            if kind == "corrupt":
                (directory / name).write_bytes(b"not audio at all" * 64)
            else:
                write_audio(directory / name, synthetic_music(seconds if kind == "ok" else 0.3, seed=index))
            handle.write(json.dumps({"file_name": name, "tags": tags}) + "\n")
    return directory


def stream(directory, vocabulary, shuffle=False, **kwargs):
    dataset = prepare_columns(load_streaming_dataset(str(directory)), "audio", "tags")
    if shuffle:
        dataset = dataset.shuffle(seed=0, buffer_size=16)
    kwargs.setdefault("batch_size", 2)
    return TaggedAudioStream(dataset, vocabulary, MAESTFeatureExtractor(max_length=MAX_LENGTH), **kwargs)


def test_vocabulary_encodes_names_strings_and_multi_hot():
    vocabulary = TagVocabulary(["rock", "jazz", "pop"], unknown_tags="skip")
    assert vocabulary.encode(["jazz", "pop"])[0].tolist() == [0, 1, 1]
    assert vocabulary.encode("rock, pop")[0].tolist() == [1, 0, 1]
    assert vocabulary.encode([0, 1, 0])[0].tolist() == [0, 1, 0]
    assert vocabulary.encode(None)[1] == "missing_labels"
    assert vocabulary.encode([])[1] == "missing_labels"
    assert vocabulary.encode(["rock", "polka"])[1:] == ("unknown_tags", ["polka"])
    assert vocabulary.encode([0, 1])[1] == "bad_labels"
    dropping = TagVocabulary(["rock", "jazz", "pop"], unknown_tags="drop")
    target, problem, unknown = dropping.encode(["rock", "polka"])
    assert target.tolist() == [1, 0, 0] and problem is None and unknown == ["polka"]


def test_vocabulary_from_data_and_files(tmp_path):
    folder = write_folder(tmp_path / "data", [("a.wav", ["rock", "jazz"], "ok"), ("b.wav", ["rock"], "ok")])
    dataset = prepare_columns(load_streaming_dataset(str(folder)), "audio", "tags")
    vocabulary = TagVocabulary.from_dataset(dataset, "tags")
    assert vocabulary.names == ["jazz", "rock"] and vocabulary.counts.tolist() == [1, 2]
    vocabulary.save(tmp_path)
    loaded = TagVocabulary.load(tmp_path / "labels.txt")
    assert loaded.names == ["jazz", "rock"] and loaded.counts.tolist() == [1, 2]
    # Class weights: count ** -power.
    np.testing.assert_allclose(loaded.class_weights(1.0), [1.0, 0.5])
    with pytest.raises(FileNotFoundError):
        TagVocabulary.load(tmp_path / "missing.txt")


def test_bad_examples_are_skipped_and_counted(tmp_path, caplog):
    rows = [
        ("good0.wav", ["rock"], "ok"),
        ("broken.flac", ["rock"], "corrupt"),
        ("unlabeled.wav", None, "ok"),
        ("empty_tags.wav", [], "ok"),
        ("strange.wav", ["rock", "polka"], "ok"),
        ("good1.wav", ["jazz"], "ok"),
        ("good2.wav", ["jazz", "rock"], "ok"),
        ("short.wav", ["jazz"], "short"),
    ]
    folder = write_folder(tmp_path / "data", rows)
    vocabulary = TagVocabulary(["rock", "jazz"])
    with caplog.at_level(logging.WARNING, logger="maest.training.data"):
        batches = list(stream(folder, vocabulary, repeat=False, batch_size=3))
    ids = [i.rsplit("/", 1)[-1] for b in batches for i in b["ids"]]
    assert all(i.startswith("0:") for b in batches for i in b["ids"])  # all from the first pass
    assert sorted(ids) == ["good0.wav", "good1.wav", "good2.wav", "short.wav"]
    counts = batches[-1]["counts"]
    assert counts["seen"] == 8 and counts["used"] == 4
    assert counts["undecodable_audio"] == 1 and counts["missing_labels"] == 2 and counts["unknown_tags"] == 1
    assert "broken.flac" in caplog.text and "polka" in caplog.text
    # Every example is a full-length crop; the short one is padded in the log-mel domain.
    inputs = torch.cat([b["input_values"] for b in batches])
    assert inputs.shape == (4, MAX_LENGTH, 96)
    short = inputs[ids.index("short.wav")]
    padding = MAESTFeatureExtractor().padding_value
    assert torch.allclose(short[-20:], torch.full_like(short[-20:], padding))
    assert not torch.allclose(short[:5], torch.full_like(short[:5], padding))
    labels = torch.cat([b["labels"] for b in batches])
    assert labels[ids.index("good2.wav")].tolist() == [1.0, 1.0]


def test_mostly_garbage_data_is_refused(tmp_path):
    rows = [(f"bad{i}.flac", ["rock"], "corrupt") for i in range(60)] + [("good.wav", ["rock"], "ok")]
    folder = write_folder(tmp_path / "data", rows)
    with pytest.raises(DataQualityError, match="unusable"):
        list(stream(folder, TagVocabulary(["rock"]), repeat=False))


def test_random_crops_and_resumable_positions(tmp_path):
    rows = [(f"t{i}.wav", ["rock"] if i % 2 else ["jazz"], "ok") for i in range(6)]
    folder = write_folder(tmp_path / "data", rows, seconds=3.0)
    vocabulary = TagVocabulary(["rock", "jazz"])
    iterator = iter(stream(folder, vocabulary, shuffle=True, seed=3))
    batches = [next(iterator) for _ in range(7)]  # 14 examples: more than two passes over 6 tracks
    # Ids are "<pass>:<file>": the first six examples are pass 0, the next six pass 1, each track once per pass.
    first_pass = {i.split(":", 1)[1]: x for b in batches[:3] for i, x in zip(b["ids"], b["input_values"])}
    second_pass = {i.split(":", 1)[1]: x for b in batches[3:6] for i, x in zip(b["ids"], b["input_values"])}
    assert {i.split(":", 1)[0] for b in batches[:3] for i in b["ids"]} == {"0"}
    assert {i.split(":", 1)[0] for b in batches[3:6] for i in b["ids"]} == {"1"}
    assert set(first_pass) == set(second_pass) and len(first_pass) == 6
    # Each pass draws new random crops of the same tracks (and reshuffles them).
    assert all(not torch.equal(first_pass[i], second_pass[i]) for i in first_pass)
    assert [b["ids"] for b in batches[:3]] != [b["ids"] for b in batches[3:6]]
    # A stream started from a recorded position continues exactly.
    position = batches[3]["position"]
    resumed = iter(stream(folder, vocabulary, shuffle=True, seed=3, start_positions={0: position}))
    for expected in batches[4:7]:
        got = next(resumed)
        assert got["ids"] == expected["ids"]
        assert torch.equal(got["input_values"], expected["input_values"])


def test_class_balanced_sampling_favours_rare_tags(tmp_path):
    rows = [(f"c{i}.wav", ["common"], "ok") for i in range(9)] + [("rare.wav", ["rare"], "ok")]
    folder = write_folder(tmp_path / "data", rows, seconds=1.0)
    dataset = prepare_columns(load_streaming_dataset(str(folder)), "audio", "tags")
    vocabulary = TagVocabulary.from_dataset(dataset, "tags")
    iterator = iter(stream(folder, vocabulary, class_balance_power=1.0, batch_size=10))
    batch = next(iterator)
    rare = sum("rare.wav" in i for i in batch["ids"])
    # Fully balanced (power 1): each common track is kept with probability 1/9, the rare one always.
    assert 3 <= rare <= 8
    assert batch["counts"]["balance_rejected"] > 0


def test_parquet_and_webdataset_sources(tmp_path):
    import io
    import tarfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    audio = [(tmp_path / f"x{i}.flac") for i in range(3)]
    for i, path in enumerate(audio):
        write_audio(path, synthetic_music(1.0, seed=i))
    table = pa.table({
        "audio": [{"bytes": p.read_bytes(), "path": p.name} for p in audio],
        "genre": [["rock"], ["jazz"], ["rock", "jazz"]],
    })
    (tmp_path / "pq").mkdir()
    pq.write_table(table, tmp_path / "pq" / "part-0.parquet")
    assert resolve_data_format(str(tmp_path / "pq"))[0] == "parquet"
    (tmp_path / "wds").mkdir()
    with tarfile.open(tmp_path / "wds" / "shard-000.tar", "w") as tar:
        for i, path in enumerate(audio):
            for suffix, payload in ((".flac", path.read_bytes()), (".json", json.dumps({"genre": ["rock"]}).encode())):
                info = tarfile.TarInfo(f"sample{i:03d}{suffix}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    assert resolve_data_format(str(tmp_path / "wds" / "*.tar"))[0] == "webdataset"
    vocabulary = TagVocabulary(["rock", "jazz"])
    fe = MAESTFeatureExtractor(max_length=MAX_LENGTH)
    parquet = prepare_columns(load_streaming_dataset(str(tmp_path / "pq")), "audio", "genre")
    batches = list(TaggedAudioStream(parquet, vocabulary, fe, batch_size=2, label_column="genre", repeat=False))
    assert sum(len(b["labels"]) for b in batches) == 3
    assert batches[0]["labels"].tolist() == [[1, 0], [0, 1]]
    tars = load_streaming_dataset(str(tmp_path / "wds" / "*.tar"))
    tars = tars.map(lambda example: {"genre": example["json"]["genre"]})
    tars = prepare_columns(tars, "flac", "genre")
    batches = list(TaggedAudioStream(tars, vocabulary, fe, batch_size=3, audio_column="flac", label_column="genre", repeat=False))
    assert batches[0]["input_values"].shape == (3, MAX_LENGTH, 96)


def test_missing_source_and_columns_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        resolve_data_format(str(tmp_path / "nowhere" / "*.tar"))
    folder = write_folder(tmp_path / "data", [("a.wav", ["rock"], "ok")])
    with pytest.raises(TrainingDataError, match="no label column .genre."):
        prepare_columns(load_streaming_dataset(str(folder)), "audio", "genre")


# ----------------------------------------------------------------------------------------------- initialization
def tiny_original_state_dict(frequency_rows, time_columns, hidden=32, depth=2, classes=527, rgb=False):
    """Random weights with the original PaSST/DeiT key names."""
    generator = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=generator)

    state = {
        "patch_embed.proj.weight": rand(hidden, 3 if rgb else 1, 16, 16),
        "patch_embed.proj.bias": rand(hidden),
        "cls_token": rand(1, 1, hidden),
        "dist_token": rand(1, 1, hidden),
        "norm.weight": rand(hidden),
        "norm.bias": rand(hidden),
    }
    if rgb:
        state["pos_embed"] = rand(1, 2 + frequency_rows * time_columns, hidden)
        state["head.weight"], state["head.bias"] = rand(classes, hidden), rand(classes)
    else:
        state["new_pos_embed"] = rand(1, 2, hidden)
        state["freq_new_pos_embed"] = rand(1, hidden, frequency_rows, 1)
        state["time_new_pos_embed"] = rand(1, hidden, 1, time_columns)
        state["head.0.weight"], state["head.0.bias"] = rand(hidden), rand(hidden)
        state["head.1.weight"], state["head.1.bias"] = rand(classes, hidden), rand(classes)
    state["head_dist.weight"], state["head_dist.bias"] = rand(classes, hidden), rand(classes)
    for block in range(depth):
        prefix = f"blocks.{block}."
        for name, shape in {
            "norm1.weight": (hidden,), "norm1.bias": (hidden,), "attn.qkv.weight": (3 * hidden, hidden),
            "attn.qkv.bias": (3 * hidden,), "attn.proj.weight": (hidden, hidden), "attn.proj.bias": (hidden,),
            "norm2.weight": (hidden,), "norm2.bias": (hidden,), "mlp.fc1.weight": (4 * hidden, hidden),
            "mlp.fc1.bias": (4 * hidden,), "mlp.fc2.weight": (hidden, 4 * hidden), "mlp.fc2.bias": (hidden,),
        }.items():
            state[prefix + name] = rand(*shape)
    return state


def init_target():
    config = MAESTConfig.from_preset(
        "maest-10s", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, num_labels=4
    )
    return MAESTForAudioClassification(config)


def bicubic(grid, size):
    return torch.nn.functional.interpolate(grid, size=size, mode="bicubic", align_corners=False)


def test_passt_initialization_resamples_positions(tmp_path):
    from maest.training.initialization import load_initial_weights

    passt = tiny_original_state_dict(frequency_rows=12, time_columns=99)  # AudioSet PaSST: 128 mels, 10 s
    torch.save({"model": passt}, tmp_path / "passt.pt")
    model = init_target()  # 9 frequency rows, 62 time positions
    report = load_initial_weights(model, str(tmp_path / "passt.pt"))
    assert report["format"] == "passt"
    embeddings = model.maest.embeddings
    torch.testing.assert_close(embeddings.frequency_position_embeddings.data, bicubic(passt["freq_new_pos_embed"], (9, 1)))
    torch.testing.assert_close(embeddings.time_position_embeddings.data, bicubic(passt["time_new_pos_embed"], (1, 62)))
    torch.testing.assert_close(embeddings.cls_token.data, passt["cls_token"])
    query, key, value = passt["blocks.1.attn.qkv.weight"].chunk(3)
    torch.testing.assert_close(model.maest.layers[1].attention.k_proj.weight.data, key)
    # The 527-class AudioSet heads do not fit 4 labels: re-initialized, but the head's layer norm is kept.
    assert any(k.startswith("classifier.dense") for k in report["missing"])
    torch.testing.assert_close(model.classifier.layernorm.weight.data, passt["head.0.weight"])


def test_deit_initialization_splits_the_grid(tmp_path):
    from safetensors.torch import save_file

    from maest.training.initialization import load_initial_weights

    deit = tiny_original_state_dict(frequency_rows=4, time_columns=4, rgb=True, classes=1000)
    save_file(deit, tmp_path / "deit.safetensors")
    model = init_target()
    assert load_initial_weights(model, str(tmp_path / "deit.safetensors"))["format"] == "deit"
    grid = deit["pos_embed"][:, 2:].transpose(1, 2).reshape(1, 32, 4, 4)
    resampled = bicubic(grid, (9, 62))
    embeddings = model.maest.embeddings
    torch.testing.assert_close(embeddings.frequency_position_embeddings.data, resampled.mean(dim=3, keepdim=True))
    torch.testing.assert_close(embeddings.time_position_embeddings.data, resampled.mean(dim=2, keepdim=True))
    torch.testing.assert_close(embeddings.special_token_position_embeddings.data, deit["pos_embed"][:, :2])
    torch.testing.assert_close(
        embeddings.patch_embeddings.projection.weight.data, deit["patch_embed.proj.weight"].sum(1, keepdim=True)
    )
    # The model runs on its 10 s input after the conversion.
    assert model.eval()(torch.randn(1, 626, 96)).logits.shape == (1, 4)


def test_initialization_rejects_unknown_layouts(tmp_path):
    from maest.modeling.conversion import CheckpointError
    from maest.training.initialization import load_initial_weights

    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="cannot tell"):
        load_initial_weights(init_target(), str(tmp_path / "other.pt"))


def _decode(value, rate=16000):
    return decode_audio(value, rate, None, "center", np.random.default_rng(0))


def test_training_arrays_go_through_the_inference_adapter():
    # An array in a dataset becomes the same 16 kHz mono samples as the same array given to `maest tag`/`embed`
    # (`audio_to_mono`): int16 PCM as its float reading (not +-32768), (channels, samples) as the channels' mean.
    from maest.feature_extraction import audio_to_mono

    clip = synthetic_music(1.0, sampling_rate=22050, seed=3)
    pcm = np.round(clip * 32767).astype(np.int16)
    as_float = pcm.astype(np.float32) / 32768
    expected = audio_to_mono(as_float, 22050, 16000)
    decoded = _decode({"array": pcm, "sampling_rate": 22050})
    assert decoded.abs().max() <= 1
    np.testing.assert_allclose(decoded, expected, atol=1e-6)
    extractor = MAESTFeatureExtractor(max_length=MAX_LENGTH)
    np.testing.assert_allclose(
        extractor(decoded, sampling_rate=16000)["input_values"], extractor(as_float, sampling_rate=22050)["input_values"], atol=1e-5
    )
    other = synthetic_music(1.0, sampling_rate=22050, seed=4)
    stereo = _decode({"array": np.stack([clip, other]), "sampling_rate": 22050})  # a short clip: 2 x 22050
    np.testing.assert_allclose(stereo, audio_to_mono((clip + other) / 2, 22050, 16000), atol=1e-6)
    with pytest.raises(Exception, match=r"track\.wav has dtype int64"):
        _decode({"array": pcm.astype(np.int64), "sampling_rate": 22050, "path": "track.wav"})
    with pytest.raises(Exception, match="needs its 'sampling_rate'"):
        _decode({"array": clip, "sampling_rate": None})


def test_embedded_bytes_are_decoded_from_memory(tmp_path, monkeypatch):
    import tempfile

    path = write_audio(tmp_path / "clip.flac", synthetic_music(1.0, seed=5))
    data = path.read_bytes()
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", None)  # no temporary file on the way
    from_bytes = _decode({"path": "shard-0/clip.flac", "bytes": data})
    np.testing.assert_array_equal(from_bytes, _decode(str(path)))
    with pytest.raises(Exception, match="shard-0/bad.flac: not a decodable audio file"):
        _decode({"path": "shard-0/bad.flac", "bytes": b"not audio" * 100})
    with pytest.raises(Exception, match="embedded audio: empty file"):
        _decode({"path": None, "bytes": b""})
