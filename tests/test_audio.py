"""Audio file decoding (PyAV) and streaming segment features for long tracks."""

import os

import numpy as np
import pytest
import torch
import torchaudio

from conftest import SAMPLING_RATE, synthetic_music, write_audio
from maest import MAESTFeatureExtractor
from maest.feature_extraction import audio as audio_module
from maest.feature_extraction.audio import (
    AudioDecodingError,
    audio_info,
    find_audio_files,
    load_audio,
    stream_audio,
    stream_segment_features,
    track_segment_features,
)


SEGMENT_FRAMES = 316  # 5 s segments, as the small test model


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def feature_extractor():
    return MAESTFeatureExtractor(max_length=SEGMENT_FRAMES)


def test_load_audio_downmixes_by_averaging_and_keeps_16k_samples(tmp_path):
    left, right = synthetic_music(2.0, seed=1), synthetic_music(2.0, seed=2)
    path = write_audio(tmp_path / "stereo.wav", np.stack([left, right]))
    decoded = load_audio(path)
    # Mean of the channels (as Essentia's MonoLoader and the feature extractor), not FFmpeg's own downmix.
    np.testing.assert_allclose(decoded.numpy(), (left + right) / 2, atol=1e-4)  # 16-bit PCM steps are 3e-5


@pytest.mark.parametrize("extension", ["flac", "mp3", "ogg"])
def test_load_audio_decodes_and_resamples_common_formats(tmp_path, extension):
    audio_44k = synthetic_music(3.0, sampling_rate=44100, seed=3)
    path = write_audio(tmp_path / f"clip.{extension}", audio_44k, 44100)
    decoded = load_audio(path)
    info = audio_info(path)
    assert info.sample_rate == (48000 if extension == "ogg" else 44100)  # Ogg holds Opus (8-48 kHz)
    assert abs(info.duration_seconds - 3.0) < 0.1
    assert decoded.dtype == torch.float32 and decoded.ndim == 1
    assert abs(decoded.shape[0] - 3 * SAMPLING_RATE) <= 0.02 * SAMPLING_RATE
    # Same signal as resampling the original with torchaudio: correlation near 1 (lossy codecs, encoder delay).
    reference = torchaudio.functional.resample(torch.from_numpy(audio_44k), 44100, SAMPLING_RATE).numpy()
    best = max(
        np.corrcoef(decoded.numpy()[max(0, lag) : 40000 + max(0, lag)], reference[max(0, -lag) : 40000 + max(0, -lag)])[0, 1]
        for lag in range(-1200, 1201, 1)
        if lag % 8 == 0 or abs(lag) < 16
    )
    assert best > 0.95


@pytest.mark.parametrize(
    "content, reason",
    [(b"", "empty file"), (b"this is not audio" * 10, "not a decodable audio file"), (b"RIFF\x00\x00", "not a decodable")],
)
def test_bad_files_raise_a_clear_error(tmp_path, content, reason):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(AudioDecodingError, match=reason) as error:
        load_audio(path)
    assert str(path) in str(error.value)


def test_missing_file_and_directory_raise(tmp_path):
    with pytest.raises(AudioDecodingError, match="no such file"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(AudioDecodingError, match="directory"):
        load_audio(tmp_path)


def test_find_audio_files_walks_directories_recursively(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ["a/one.wav", "a/b/two.FLAC", "a/b/three.mp3", "a/notes.txt", "a/.hidden.wav", "top.ogg"]:
        (tmp_path / name).write_bytes(b"x")
    found = find_audio_files([tmp_path / "a", tmp_path / "top.ogg", tmp_path / "a" / "one.wav"])
    assert [path.replace(str(tmp_path) + "/", "") for path in found] == ["a/b/three.mp3", "a/b/two.FLAC", "a/one.wav", "top.ogg"]
    # A file named explicitly is taken whatever its extension.
    assert find_audio_files(tmp_path / "a" / "notes.txt") == [str(tmp_path / "a" / "notes.txt")]
    with pytest.raises(FileNotFoundError, match="missing"):
        find_audio_files([tmp_path / "missing"])


def test_stream_audio_chunks_concatenate_to_the_whole_track(tmp_path):
    audio = synthetic_music(7.3, seed=4)
    path = write_audio(tmp_path / "clip.flac", np.stack([audio, 0.5 * audio]))
    chunks = list(stream_audio(path, chunk_samples=16000))
    assert [len(chunk) for chunk in chunks] == [16000] * 7 + [4800]
    torch.testing.assert_close(torch.cat(chunks), load_audio(path), rtol=0, atol=0)


@pytest.mark.parametrize("seconds", [0.5, 3.0, 10.0, 12.4, 17.0])
def test_streamed_segments_equal_whole_track_features(tmp_path, feature_extractor, seconds):
    # 5.056 s segments: shorter than one, an exact multiple (10 s: 626 frames = 316 + 310), partial ends below and
    # above half a segment.
    path = write_audio(tmp_path / "clip.wav", synthetic_music(seconds, seed=5))
    decoded = load_audio(path)
    for last_segment in ("auto", "pad", "drop"):
        expected = feature_extractor(decoded, sampling_rate=SAMPLING_RATE, return_segments=True, last_segment=last_segment)
        streamed = list(stream_segment_features(path, feature_extractor, last_segment=last_segment))
        assert all(segment.shape == (1, SEGMENT_FRAMES, 96) for segment in streamed)
        torch.testing.assert_close(torch.cat(streamed), expected["input_values"], rtol=0, atol=1e-5)


def test_track_segment_features_paths_agree_and_report_duration(tmp_path, feature_extractor):
    audio = synthetic_music(12.0, sampling_rate=22050, seed=6)
    path = write_audio(tmp_path / "clip.flac", audio, 22050)
    whole = list(track_segment_features(path, feature_extractor, stream_threshold_seconds=1e9, segments_per_chunk=2))
    streamed = list(track_segment_features(path, feature_extractor, stream_threshold_seconds=0, segments_per_chunk=2))
    assert [chunk.shape[0] for chunk, _ in whole] == [2]
    assert whole[-1][1] == pytest.approx(12.0, abs=1e-3) and streamed[-1][1] == pytest.approx(12.0, abs=1e-3)
    torch.testing.assert_close(torch.cat([c for c, _ in streamed]), torch.cat([c for c, _ in whole]), rtol=0, atol=1e-5)
    # Both equal the feature extractor on the decoded track.
    expected = feature_extractor(load_audio(path), sampling_rate=SAMPLING_RATE, return_segments=True)["input_values"]
    torch.testing.assert_close(torch.cat([c for c, _ in whole]), expected)


def test_too_short_tracks_are_refused(tmp_path, feature_extractor):
    path = write_audio(tmp_path / "blip.wav", synthetic_music(0.3, seed=7))
    with pytest.raises(AudioDecodingError, match=r"too short \(0.30 s"):
        list(track_segment_features(path, feature_extractor, min_duration_seconds=1.0))


def test_long_track_is_streamed_with_bounded_memory(tmp_path, feature_extractor, monkeypatch):
    # 20 minutes of cheap audio: a 10 s clip repeated, with a different gain per repeat.
    clip = synthetic_music(10.0, seed=8)
    audio = np.concatenate([clip * (0.3 + 0.5 * (k % 3) / 2) for k in range(120)]).astype(np.float32)
    path = write_audio(tmp_path / "long.wav", audio)
    del audio

    def whole_decode_forbidden(*args, **kwargs):
        raise AssertionError("a 20-minute track must not be decoded whole")

    chunk_lengths = []
    original_stream_audio = audio_module.stream_audio

    def recording_stream_audio(*args, **kwargs):
        for chunk in original_stream_audio(*args, **kwargs):
            chunk_lengths.append(chunk.shape[0])
            yield chunk

    monkeypatch.setattr(audio_module, "load_audio", whole_decode_forbidden)
    monkeypatch.setattr(audio_module, "stream_audio", recording_stream_audio)
    num_segments, largest_chunk, duration = 0, 0, None
    for chunk, chunk_duration in track_segment_features(path, feature_extractor, segments_per_chunk=4):
        num_segments += chunk.shape[0]
        largest_chunk = max(largest_chunk, chunk.shape[0])
        duration = chunk_duration if chunk_duration is not None else duration
    assert duration == pytest.approx(1200.0, abs=1e-3)
    # 1200 s = 240 segments of 5.056 s (237.34...): 237 whole segments, the partial one is dropped by "auto".
    assert num_segments == 1200 * SAMPLING_RATE // (SEGMENT_FRAMES * 256)
    assert largest_chunk <= 4
    # Decoded one segment of audio at a time, never the whole track.
    assert max(chunk_lengths) == SEGMENT_FRAMES * 256 and sum(chunk_lengths) == 1200 * SAMPLING_RATE


def test_find_audio_files_survives_symlink_loops(tmp_path):
    (tmp_path / "music" / "album").mkdir(parents=True)
    (tmp_path / "music" / "album" / "song.mp3").write_bytes(b"x")
    os.symlink(tmp_path / "music", tmp_path / "music" / "album" / "back-to-top")
    assert [os.path.basename(path) for path in find_audio_files(tmp_path / "music")] == ["song.mp3"]


def test_a_wav_cut_off_mid_frame_decodes_up_to_the_cut(tmp_path):
    """FFmpeg decodes a WAV whose last frame is incomplete up to that frame; so does `load_audio`."""
    left, right = synthetic_music(3.0, seed=1), synthetic_music(3.0, seed=2)
    whole = write_audio(tmp_path / "whole.wav", np.stack([left, right]))
    data = whole.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) // 2 + 1])  # half the file and one byte: off a 4-byte stereo frame boundary
    complete_frames = (len(data) // 2 + 1 - 44) // 4
    decoded = load_audio(cut)
    assert complete_frames - 160 <= decoded.shape[0] <= complete_frames  # within 10 ms of every complete frame
    np.testing.assert_allclose(decoded.numpy(), load_audio(whole).numpy()[: decoded.shape[0]], atol=1e-6)


def test_files_with_non_utf8_names_decode(tmp_path):
    audio = synthetic_music(2.0, seed=4)
    source = write_audio(tmp_path / "plain.wav", audio)
    name = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"latin1_\xe9.wav"))
    os.rename(source, name)
    assert find_audio_files([tmp_path]) == [name]
    np.testing.assert_allclose(load_audio(name).numpy(), audio, atol=1e-4)
    assert audio_info(name).duration_seconds == pytest.approx(2.0, abs=1e-3)


def test_unreadable_folders_are_reported_not_skipped_silently(tmp_path, monkeypatch):
    (tmp_path / "open").mkdir()
    write_audio(tmp_path / "open" / "a.wav", synthetic_music(1.0))
    (tmp_path / "locked").mkdir()
    locked = str(tmp_path / "locked")
    scandir = os.scandir

    def guarded_scandir(path="."):
        if isinstance(path, str) and path == locked:  # root reads anything: simulate `chmod 000`
            raise PermissionError(13, "Permission denied", locked)
        return scandir(path)

    monkeypatch.setattr(os, "scandir", guarded_scandir)
    unreadable = []
    assert find_audio_files([tmp_path], unreadable=unreadable) == [str(tmp_path / "open" / "a.wav")]
    assert unreadable == [(locked, "folder not read (Permission denied)")]
    with pytest.raises(PermissionError):
        find_audio_files([tmp_path])
