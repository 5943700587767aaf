"""Decoding needs no system FFmpeg: in a process where torchcodec cannot be imported, audio files are encoded and
decoded, and the FFmpeg libraries loaded into the process are PyAV's own (from its wheel), none of the system's."""

import json
import subprocess
import sys


SCRIPT = r"""
import json, sys
sys.modules["torchcodec"] = None  # torchcodec (which needs the system's FFmpeg libraries) cannot be imported
import numpy as np
from maest.feature_extraction.audio import audio_info, encode_audio, load_audio, stream_audio

directory = sys.argv[1]
rate = 44100
t = np.arange(3 * rate) / rate
stereo = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.25 * np.sin(2 * np.pi * 440 * t)]).astype(np.float32)
report = {}
for extension in ("wav", "flac", "mp3", "ogg", "m4a"):
    path = f"{directory}/clip.{extension}"
    encode_audio(path, stereo, rate)
    audio = load_audio(path)
    chunks = list(stream_audio(path, 16000))
    report[extension] = {
        "samples": int(audio.shape[0]),
        "rms": float(np.sqrt(np.mean(audio.numpy()[4000:40000] ** 2))),
        "streamed_equal": bool(np.array_equal(np.concatenate([c.numpy() for c in chunks]), audio.numpy())),
        "rate": audio_info(path).sample_rate,
    }
with open("/proc/self/maps") as maps:
    libraries = sorted({line.split()[-1] for line in maps if "libav" in line or "libswresample" in line})
print(json.dumps({"report": report, "libraries": libraries, "torchcodec": "torchcodec" in sys.modules and sys.modules["torchcodec"] is not None}))
"""


def test_files_decode_with_pyav_own_ffmpeg_only(tmp_path):
    completed = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert not result["torchcodec"]
    # Every FFmpeg library in the process comes from PyAV's wheel (av.libs), none from the system's library folders.
    assert result["libraries"] and all("av.libs" in library for library in result["libraries"]), result["libraries"]
    for extension, entry in result["report"].items():
        # 3 s at 16 kHz (lossy codecs add a few ms of encoder delay), the mean of the channels: rms of 0.375 sin.
        assert abs(entry["samples"] - 48000) <= 1200, (extension, entry)
        assert abs(entry["rms"] - 0.375 / 2**0.5) < 0.02, (extension, entry)
        assert entry["streamed_equal"], extension
    assert result["report"]["ogg"]["rate"] == 48000 and result["report"]["mp3"]["rate"] == 44100
