"""A deterministic generator of a small multi-label music corpus for the demo and the tests.

Every track is a short piece in a random key and mode (major/minor) at a tempo drawn from its style: a chord
progression of the mode's triads, played by some of six instruments synthesized with numpy (plucked string by
Karplus-Strong, drawbar organ and a detuned pad by additive synthesis, a bass line, a square-wave lead, and a drum kit
of a pitch-swept sine kick, a noise snare and high-passed noise hats) over the style's 16-step drum pattern.

Tags, as a real collection would have them:
- `styles` (one per track) and `instruments` (those playing): the pre-training tags, like Discogs styles;
- `tempo` (`slow` < 95 BPM <= `medium` < 135 BPM <= `fast`) and `mode` (`major`/`minor`): held-out tags for probing.

The styles share instruments and overlap in tempo, so telling them apart needs rhythm and harmony, not only timbre.
The corpus is written as an `audiofolder` (FLAC files plus `metadata.jsonl`), which `datasets` streams.

`synthetic_music` is the unlabelled kind, of any length and sampling rate, for the tests and the benchmarks.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maest.feature_extraction.audio import encode_audio

SAMPLING_RATE = 16000
INSTRUMENTS = ("plucked", "organ", "pad", "bass", "lead", "drums")
TEMPO_CLASSES = ("slow", "medium", "fast")
MODES = ("major", "minor")

# Per style: tempo range (BPM), P(major), P(instrument), and a 16-step drum pattern (kick, snare, hat steps).
STYLES = {
    "ballad": dict(tempo=(62, 100), major=0.9, instruments=dict(plucked=0.7, organ=0.4, pad=0.6, bass=0.5, lead=0.4, drums=0.5),
                   kick=(0, 8), snare=(4, 12), hats=(0, 2, 4, 6, 8, 10, 12, 14)),
    "doom": dict(tempo=(55, 92), major=0.05, instruments=dict(plucked=0.4, organ=0.7, pad=0.4, bass=0.8, lead=0.2, drums=0.7),
                 kick=(0, 3), snare=(8,), hats=(0, 4, 8, 12)),
    "funk": dict(tempo=(92, 124), major=0.5, instruments=dict(plucked=0.7, organ=0.4, pad=0.2, bass=0.9, lead=0.5, drums=0.9),
                 kick=(0, 3, 10), snare=(4, 12), hats=tuple(range(16))),
    "house": dict(tempo=(116, 134), major=0.15, instruments=dict(plucked=0.3, organ=0.3, pad=0.7, bass=0.8, lead=0.4, drums=1.0),
                  kick=(0, 4, 8, 12), snare=(4, 12), hats=(2, 6, 10, 14)),
    "punk": dict(tempo=(140, 190), major=0.9, instruments=dict(plucked=0.9, organ=0.2, pad=0.1, bass=0.8, lead=0.3, drums=0.9),
                 kick=(0, 8), snare=(4, 12), hats=(0, 2, 4, 6, 8, 10, 12, 14)),
    "dnb": dict(tempo=(160, 180), major=0.1, instruments=dict(plucked=0.2, organ=0.2, pad=0.6, bass=0.9, lead=0.4, drums=1.0),
                kick=(0, 10), snare=(4, 12), hats=tuple(range(0, 16, 2))),
}
MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
MINOR_SCALE = (0, 2, 3, 5, 7, 8, 10)
PROGRESSIONS = {"major": ((0, 4, 5, 3), (0, 3, 4, 0), (0, 5, 3, 4)), "minor": ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 4))}


RING_SECONDS = 4.0  # how long `synthetic_music` lets a note ring: its slowest decay, exp(-2 t), is then below 3.4e-4


def synthetic_music(seconds: float, sampling_rate: int = SAMPLING_RATE, seed: int = 0) -> np.ndarray:
    """Music-like mono audio, float32 in [-1, 1]: chords of harmonic tones with decaying envelopes on a random tempo
    (a new chord every four beats), a kick drum on the beat, hi-hat noise bursts between beats and a little background
    noise. Its log-mels exercise a model as music does (structured, not stationary), unlike white noise; the seed
    also draws the tempo and the timbre. Each note is computed over the `RING_SECONDS` after its onset only, so the
    cost grows with the length, not with its square."""
    rng = np.random.default_rng(seed)
    num_samples = int(round(seconds * sampling_rate))
    audio = np.zeros(num_samples)
    beat = 60.0 / rng.uniform(70, 160)
    brightness = int(rng.uniform(2, 8))  # harmonics per tone
    ring = int(RING_SECONDS * sampling_rate)
    for index, start in enumerate(np.arange(0.0, seconds, beat)):
        first = int(np.ceil(start * sampling_rate))
        window = slice(first, min(num_samples, first + ring))
        since = np.arange(window.start, window.stop) / sampling_rate - start
        if index % 4 == 0:
            root = 110.0 * 2 ** (rng.integers(0, 12) / 12)
            chord = (0, 3, 7) if rng.random() < 0.5 else (0, 4, 7)
        for interval in chord:
            frequency = root * 2 ** (interval / 12)
            for harmonic in range(1, brightness + 1):
                audio[window] += 0.08 / harmonic * np.sin(2 * np.pi * frequency * harmonic * since) * np.exp(-2 * since)
        audio[window] += 0.3 * np.sin(2 * np.pi * 55 * since * np.exp(-8 * since)) * np.exp(-12 * since)
        hat = int(np.ceil((start + beat / 2) * sampling_rate))
        hat_samples = max(0, min(num_samples, hat + int(0.03 * sampling_rate)) - hat)
        audio[hat : hat + hat_samples] += 0.05 * rng.standard_normal(hat_samples)
    audio += 0.005 * rng.standard_normal(num_samples)
    return (0.9 * audio / max(1e-9, np.abs(audio).max(initial=0.0))).astype(np.float32)


def tempo_class(bpm: float) -> str:
    return "slow" if bpm < 95 else "medium" if bpm < 135 else "fast"


def _midi_to_hz(note: float) -> float:
    return 440.0 * 2 ** ((note - 69) / 12)


def _envelope(length: int, attack: float, decay: float) -> np.ndarray:
    t = np.arange(length) / SAMPLING_RATE
    return np.minimum(1.0, t / max(attack, 1e-4)) * np.exp(-t / decay)


def _add(track: np.ndarray, start: int, sound: np.ndarray) -> None:
    end = min(len(track), start + len(sound))
    if end > start:
        track[start:end] += sound[: end - start]


def karplus_strong(frequency: float, length: int, rng: np.random.Generator, damping: float = 0.996) -> np.ndarray:
    """A plucked string: a noise burst in a delay line of one period, averaged (low-passed) every round trip.
    Computed one period at a time (vectorized within the period)."""
    period = max(2, int(round(SAMPLING_RATE / frequency)))
    out = np.empty(length + period + 1)
    out[: period + 1] = rng.uniform(-1, 1, period + 1)
    position = period + 1
    while position < len(out):
        end = min(len(out), position + period)
        previous = out[position - period - 1 : end - period]
        out[position:end] = damping * 0.5 * (previous[1:] + previous[:-1])[: end - position] if len(previous) > 1 else 0
        position = end
    return out[:length]


def _additive(frequency: float, length: int, harmonics, detune: float = 0.0) -> np.ndarray:
    t = np.arange(length) / SAMPLING_RATE
    sound = np.zeros(length)
    for multiple, amplitude in harmonics:
        if frequency * multiple < SAMPLING_RATE / 2 - 500:
            sound += amplitude * np.sin(2 * np.pi * frequency * multiple * (1 + detune) * t)
    return sound


def _noise_hit(length: int, rng: np.random.Generator, high_pass: int) -> np.ndarray:
    noise = rng.standard_normal(length + high_pass)
    return np.diff(noise, n=high_pass)[:length] / (2.0**high_pass) ** 0.5


@dataclass(frozen=True)
class Arrangement:
    """The musical plan of one track: style, tempo grid, key, scale and chord progression."""

    style: str
    seconds: float
    bpm: float
    key: int
    scale: tuple
    progression: tuple

    @property
    def spec(self) -> dict:
        return STYLES[self.style]

    @property
    def length(self) -> int:
        return int(self.seconds * SAMPLING_RATE)

    @property
    def step(self) -> float:
        return 60.0 / self.bpm / 4  # a 16th note

    @property
    def num_steps(self) -> int:
        return int(np.ceil(self.seconds / self.step))

    @property
    def chord_seconds(self) -> float:
        bar = 16 * self.step
        return bar if self.bpm < 120 else 2 * bar

    def chord_at(self, time: float) -> list[int]:
        """MIDI notes of the triad sounding at `time` (seconds)."""
        degree = self.progression[int(time / self.chord_seconds) % len(self.progression)]
        return [48 + self.key + self.scale[(degree + i) % 7] + 12 * ((degree + i) // 7) for i in (0, 2, 4)]


def _render_drums(plan: Arrangement, rng: np.random.Generator) -> np.ndarray:
    drums = np.zeros(plan.length)
    kick_length, snare_length, hat_length = int(0.25 * SAMPLING_RATE), int(0.18 * SAMPLING_RATE), int(0.05 * SAMPLING_RATE)
    t = np.arange(kick_length) / SAMPLING_RATE
    # A sine gliding from 120 Hz down to 50 Hz: phase of f(t) = 50 + 70 exp(-t / 0.03).
    kick = np.sin(2 * np.pi * (50 * t + 70 * 0.03 * (1 - np.exp(-t / 0.03)))) * np.exp(-t / 0.09)
    for i in range(plan.num_steps):
        start = int(i * plan.step * SAMPLING_RATE)
        if i % 16 in plan.spec["kick"]:
            _add(drums, start, 0.9 * kick)
        if i % 16 in plan.spec["snare"]:
            snare = 0.5 * _noise_hit(snare_length, rng, 1) * _envelope(snare_length, 0.001, 0.05)
            snare += 0.3 * _additive(185.0, snare_length, [(1, 1.0)]) * _envelope(snare_length, 0.001, 0.04)
            _add(drums, start, snare)
        if i % 16 in plan.spec["hats"]:
            _add(drums, start, 0.25 * _noise_hit(hat_length, rng, 3) * _envelope(hat_length, 0.0005, 0.012))
    return drums


def _render_bass(plan: Arrangement, rng: np.random.Generator) -> np.ndarray:
    bass = np.zeros(plan.length)
    note_steps = 2 if plan.style in ("funk", "house") else 4
    for i in range(0, plan.num_steps, note_steps):
        if plan.style == "house" and i % 4 == 0:
            continue  # off-beat bass
        time = i * plan.step
        root = plan.chord_at(time)[0] - 12 + (12 if rng.random() < 0.15 else 0)
        note_length = int(note_steps * plan.step * SAMPLING_RATE)
        sound = _additive(_midi_to_hz(root), note_length, [(1, 1.0), (2, 0.5), (3, 0.25), (4, 0.12)])
        _add(bass, int(time * SAMPLING_RATE), 0.5 * sound * _envelope(note_length, 0.005, 0.25))
    return bass


def _render_plucked(plan: Arrangement, rng: np.random.Generator) -> np.ndarray:
    plucked = np.zeros(plan.length)
    for i in range(0, plan.num_steps, 2):
        time = i * plan.step
        note = plan.chord_at(time)[(i // 2) % 3] + 12
        note_length = int(min(0.6, 4 * plan.step) * SAMPLING_RATE)
        _add(plucked, int(time * SAMPLING_RATE), 0.45 * karplus_strong(_midi_to_hz(note), note_length, rng))
    return plucked


def _render_chords(plan: Arrangement, voice_name: str) -> np.ndarray:
    """Held chords: an organ (bright harmonics, slow decay) or a pad (two detuned voices, slow attack)."""
    voice = np.zeros(plan.length)
    chord_length = int(plan.chord_seconds * SAMPLING_RATE)
    time = 0.0
    while time < plan.seconds:
        for note in plan.chord_at(time):
            frequency = _midi_to_hz(note + 12)
            if voice_name == "organ":
                harmonics = [(1, 1.0), (2, 0.6), (3, 0.4), (4, 0.3), (6, 0.2), (8, 0.15)]
                sound = _additive(frequency, chord_length, harmonics) * _envelope(chord_length, 0.01, 10.0)
            else:
                harmonics = [(h, 1.0 / h) for h in range(1, 6)]
                sound = sum(_additive(frequency, chord_length, harmonics, detune=d) for d in (-0.004, 0.004))
                sound *= np.minimum(1.0, np.arange(chord_length) / (0.3 * SAMPLING_RATE))
            _add(voice, int(time * SAMPLING_RATE), 0.12 * sound)
        time += plan.chord_seconds
    return voice


def _render_lead(plan: Arrangement, rng: np.random.Generator) -> np.ndarray:
    lead = np.zeros(plan.length)
    for i in range(0, plan.num_steps, 4):
        time = i * plan.step
        if rng.random() < 0.3:
            continue
        note = 72 + plan.key + plan.scale[int(rng.integers(0, 7))]
        note_length = int(4 * plan.step * SAMPLING_RATE)
        sound = _additive(_midi_to_hz(note), note_length, [(h, 1.0 / h) for h in (1, 3, 5, 7, 9)])
        _add(lead, int(time * SAMPLING_RATE), 0.15 * sound * _envelope(note_length, 0.01, 0.4))
    return lead


def _mix(parts: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Each part peak-normalized at a random level, a little noise, the whole at 0.9 of full scale."""
    mix = np.zeros_like(parts[0])
    for part in parts:
        peak = np.abs(part).max()
        if peak > 0:
            mix += part / peak * rng.uniform(0.5, 1.0)
    mix += 0.003 * rng.standard_normal(len(mix))
    return 0.9 * mix / np.abs(mix).max()


def synthesize_track(style: str, seconds: float, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """One track of `style`; returns (float32 audio in [-1, 1], its tags and facts).

    The random draws happen in a fixed order (plan, then each instrument in the order below, then the mix), so a
    seed gives the same corpus on every machine."""
    spec = STYLES[style]
    bpm = float(rng.uniform(*spec["tempo"]))
    mode = "major" if rng.random() < spec["major"] else "minor"
    instruments = [name for name in INSTRUMENTS if rng.random() < spec["instruments"][name]] or ["plucked"]
    key = int(rng.integers(0, 12))
    progression = PROGRESSIONS[mode][int(rng.integers(len(PROGRESSIONS[mode])))]
    plan = Arrangement(style, seconds, bpm, key, MAJOR_SCALE if mode == "major" else MINOR_SCALE, progression)
    renderers = {
        "drums": lambda: _render_drums(plan, rng),
        "bass": lambda: _render_bass(plan, rng),
        "plucked": lambda: _render_plucked(plan, rng),
        "organ": lambda: _render_chords(plan, "organ"),
        "pad": lambda: _render_chords(plan, "pad"),
        "lead": lambda: _render_lead(plan, rng),
    }
    parts = [render() for name, render in renderers.items() if name in instruments]
    facts = {"styles": [style], "instruments": instruments, "tempo": [tempo_class(bpm)], "mode": [mode],
             "bpm": round(bpm, 1), "key": key}
    return _mix(parts, rng).astype(np.float32), facts


def write_corpus(output_dir, num_tracks: int = 240, seconds: float = 8.0, seed: int = 0, audio_format: str = "flac",
                 splits=(("train", 0.7), ("validation", 0.15), ("test", 0.15))) -> dict:
    """Writes `num_tracks` tracks as an `audiofolder`: `<split>/<name>.flac` and `<split>/metadata.jsonl` with the
    tag columns `tags` (styles + instruments: the pre-training tags), `styles`, `instruments`, `tempo`, `mode`,
    `held_out` (tempo + mode) and the numbers `bpm` and `key`. Styles are balanced and spread over the splits.
    Deterministic for a seed. Returns `{split: number of tracks}`."""
    output_dir = Path(output_dir)
    rng = np.random.default_rng(seed)
    styles = [list(STYLES)[i % len(STYLES)] for i in range(num_tracks)]
    order = rng.permutation(num_tracks)
    boundaries = np.cumsum([int(round(fraction * num_tracks)) for _, fraction in splits])
    counts = {}
    for split_index, (split, _) in enumerate(splits):
        start = 0 if split_index == 0 else boundaries[split_index - 1]
        end = num_tracks if split_index == len(splits) - 1 else boundaries[split_index]
        directory = output_dir / split
        directory.mkdir(parents=True, exist_ok=True)
        rows = []
        for track in order[start:end]:
            track_rng = np.random.default_rng([seed, int(track)])
            audio, facts = synthesize_track(styles[track], seconds, track_rng)
            name = f"track_{track:04d}.{audio_format}"
            encode_audio(directory / name, audio, SAMPLING_RATE)
            rows.append({"file_name": name, "tags": facts["styles"] + facts["instruments"],
                         "held_out": facts["tempo"] + facts["mode"], **facts})
        with open(directory / "metadata.jsonl", "w") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
        counts[split] = len(rows)
    return counts


__all__ = ["INSTRUMENTS", "MODES", "STYLES", "TEMPO_CLASSES", "synthesize_track", "tempo_class", "write_corpus"]
