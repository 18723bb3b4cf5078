"""Accuracy of the in-band DTMF detector against spandsp's dtmf_rx, case by case, on the same audio.

Run:  .venv/bin/python bench/inband_accuracy.py [--quick] [--talk-off-minutes 30]

Every accuracy case (frequency tolerance for all eight tones, duration, interruption,
gap, digit rate, twist, level, noise, G.711) is generated several times with random phases and
run through ours (`spg_media.dtmf.inband.scan`) and spandsp (ctypes, bench/spandsp.py); the table
shows how many trials each got right. Then talk-off: the false digits each detector finds in
minutes of speech (espeak-ng, eight languages, many voices, pitches and speeds, resampled to
8 kHz), music (chords and glides with overtones) and noise.

Levels are dBm0 for both tones together (0 dBm0 sine peak = 32767 × 10^(-3.14/20), spandsp's
reference); twist is row minus column level (+8 dB "normal", -4 dB "reverse"). The signal
builders here are also used by bench/bench_inband.py. Needs espeak-ng and libspandsp2.
"""

from __future__ import annotations

import argparse
import io
import shlex
import subprocess
import sys
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from spandsp import spandsp_scan

from spg_media.dtmf.inband import DBM0_PEAK, KEYS, scan
from spg_media.rtp import g711

RATE = 8000
ROWS = (697.0, 770.0, 852.0, 941.0)
COLS = (1209.0, 1336.0, 1477.0, 1633.0)
Audio = npt.NDArray[np.float64]


# ---- signal builders -----------------------------------------------------------------------------


def dbm0_power(level: float) -> float:
    return float(DBM0_PEAK**2 / 2 * 10 ** (level / 10))


def tone(
    digit: str,
    ms: float,
    rng: np.random.Generator,
    level: float = -10.0,
    twist: float = 0.0,
    offset: tuple[float, float] = (0.0, 0.0),
) -> Audio:
    row, col = divmod(KEYS.index(digit), 4)
    t = np.arange(round(ms * RATE / 1000)) / RATE
    power = 10.0 ** (level / 10.0)
    col_power = power / (1.0 + 10.0 ** (twist / 10.0))
    amp_row, amp_col = DBM0_PEAK * np.sqrt([power - col_power, col_power])
    phase = rng.uniform(0, 2 * np.pi, 2)
    f_row, f_col = ROWS[row] * (1 + offset[0]), COLS[col] * (1 + offset[1])
    return np.asarray(
        amp_row * np.cos(2 * np.pi * f_row * t + phase[0])
        + amp_col * np.cos(2 * np.pi * f_col * t + phase[1])
    )


def silence(ms: float) -> Audio:
    return np.zeros(round(ms * RATE / 1000))


def keyed(
    digits: str, rng: np.random.Generator, on: float = 70, off: float = 70, **kw: Any
) -> Audio:
    parts = [silence(100)]
    for digit in digits:
        parts += [tone(digit, on, rng, **kw), silence(off)]
    parts.append(silence(100))
    return np.concatenate(parts)


def add_noise(audio: Audio, snr_db: float, signal_power: float, rng: np.random.Generator) -> Audio:
    noise = rng.standard_normal(audio.size) * np.sqrt(signal_power / 10 ** (snr_db / 10))
    return np.asarray(audio + noise, dtype=np.float64)


def to_int16(audio: Audio) -> npt.NDArray[np.int16]:
    return np.clip(np.rint(audio), -32768, 32767).astype(np.int16)


TEXTS = {
    "en": "Thank you for calling. Please enter your card number followed by the hash key. The "
    "quick brown fox jumps over the lazy dog while the children sing a happy song in the "
    "garden. Your payment of forty nine euros and ninety cents has been approved. Would you "
    "like to hear that again? Press one to confirm or two to start again.",
    "es": "Gracias por llamar. Por favor, introduzca el número de su tarjeta seguido de la tecla "
    "almohadilla. El pago de cuarenta y nueve euros con noventa ha sido aprobado. Mañana por la "
    "mañana iremos a la playa con los niños y comeremos paella en el puerto.",
    "fr": "Merci de votre appel. Veuillez saisir le numéro de votre carte suivi de la touche "
    "dièse. Le petit chat dort au soleil pendant que les enfants jouent dans le jardin. Votre "
    "paiement a été accepté, merci et à bientôt.",
    "de": "Vielen Dank für Ihren Anruf. Bitte geben Sie Ihre Kartennummer ein und drücken Sie "
    "die Rautetaste. Der schnelle braune Fuchs springt über den faulen Hund. Ihre Zahlung wurde "
    "genehmigt, vielen Dank.",
    "it": "Grazie per aver chiamato. Inserisca il numero della carta seguito dal tasto "
    "cancelletto. Il pagamento di quarantanove euro è stato approvato. Domani andremo al mare "
    "con tutta la famiglia.",
    "pt": "Obrigado pela sua chamada. Por favor, introduza o número do seu cartão seguido da "
    "tecla cardinal. O pagamento foi aprovado. Amanhã vamos à praia com os nossos amigos.",
    "nl": "Bedankt voor uw oproep. Voer uw kaartnummer in, gevolgd door het hekje. Uw betaling "
    "is goedgekeurd. Morgen gaan we met de fiets naar het strand.",
    "pl": "Dziękujemy za telefon. Proszę wprowadzić numer karty i nacisnąć krzyżyk. Płatność "
    "została zaakceptowana. Jutro pojedziemy nad morze.",
}
VARIANTS = ["", "+f1", "+f2", "+f3", "+f4", "+m1", "+m3", "+m7", "+klatt", "+klatt3", "+whisper",
            "+croak", "+Annie", "+Andrea", "+belinda"]  # fmt: skip


def espeak(text: str, voice: str, pitch: int, speed: int) -> Audio:
    from scipy.signal import resample_poly

    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "--stdout"],
        input=text.encode(),
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    return np.asarray(resample_poly(data.astype(np.float64), RATE, rate))


def speech(seconds: float, seed: int) -> Audio:
    """Speech in 8 languages, random voice variant, pitch (20-98) and speed (120-219 wpm),
    each clip at -18 ± 8 dBFS RMS over its voiced part."""
    rng = np.random.default_rng(seed)
    parts: list[Audio] = []
    total = 0
    languages = list(TEXTS)
    while total < seconds * RATE:
        lang = languages[int(rng.integers(len(languages)))]
        voice = lang + VARIANTS[int(rng.integers(len(VARIANTS)))]
        clip = espeak(TEXTS[lang], voice, int(rng.integers(20, 99)), int(rng.integers(120, 220)))
        voiced = clip[np.abs(clip) > 0.01 * np.abs(clip).max()]
        target = 32767 * 10 ** ((-18 + rng.uniform(-8, 8)) / 20)
        parts.append(np.clip(clip * target / np.sqrt(np.mean(voiced**2)), -32768, 32767))
        total += parts[-1].size
    return np.concatenate(parts)[: int(seconds * RATE)]


NEAR_DTMF_NOTES = (698.46, 783.99, 932.33, 1174.66, 1318.51, 1479.98, 1661.22)  # F5 G5 A#5 ...


def music(seconds: float, seed: int) -> Audio:
    """Half-second chords of 2-4 notes with overtones (about 1/h, as real instruments), half of
    them on the notes nearest the DTMF frequencies, some gliding by up to ±4 %."""
    rng = np.random.default_rng(seed)
    out = []
    t = np.arange(4000) / RATE
    for _ in range(int(seconds / 0.5)):
        chord = np.zeros(t.size)
        if rng.random() < 0.5:
            notes = rng.choice(NEAR_DTMF_NOTES, int(rng.integers(2, 4)), replace=False)
        else:
            notes = 220.0 * 2 ** (rng.integers(0, 36, int(rng.integers(2, 5))) / 12)
        for f0 in notes:
            glide = 1 + (rng.uniform(-0.04, 0.04) * t / t[-1] if rng.random() < 0.5 else 0)
            for h in range(1, 9):
                if f0 * h < 3800:
                    amp = rng.uniform(0.6, 1.0) / h
                    chord += amp * np.sin(2 * np.pi * f0 * h * glide * t + rng.uniform(0, 6))
        envelope = np.minimum(1, np.minimum(t, t[-1] - t) / 0.03)
        scale = 32767 * 10 ** (rng.uniform(-20, -3) / 20) / np.abs(chord).max()
        out.append(chord * envelope * scale)
    return np.concatenate(out)


def noise(seconds: float, seed: int) -> Audio:
    """White, brown (low-passed) and impulsive noise, a third each."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE) // 3
    white = rng.standard_normal(n) * 3000
    walk = np.cumsum(rng.standard_normal(n))
    brown = (walk - np.convolve(walk, np.ones(64) / 64, "same")) * 300
    clicks = np.zeros(n)
    clicks[rng.integers(0, n, n // 100)] = rng.uniform(-20000, 20000, n // 100)
    return np.concatenate([white, brown, clicks])


# ---- running both --------------------------------------------------------------------------------


def ours(audio: Audio) -> str:
    return "".join(d for d, _, _ in scan(to_int16(audio)))


def theirs(audio: Audio) -> str:
    return "".join(d for d, _, _ in spandsp_scan(to_int16(audio)))


Case = tuple[str, str, Callable[[np.random.Generator], tuple[Audio, str]]]


def cases() -> list[Case]:
    """(group, label, make(rng) -> (audio, expected digits)); expected "" means reject."""
    out: list[Case] = []

    def add(
        group: str, label: str, make: Callable[[np.random.Generator], tuple[Audio, str]]
    ) -> None:
        out.append((group, label, make))

    for freq_index in range(8):
        is_row = freq_index < 4
        freq = (ROWS + COLS)[freq_index]
        digit = KEYS[4 * freq_index + 1] if is_row else KEYS[4 + freq_index - 4]
        for off in (-0.035, -0.015, 0.015, 0.035):
            expect = digit if abs(off) < 0.02 else ""
            offset = (off, 0.0) if is_row else (0.0, off)

            def make(rng: np.random.Generator, d: str = digit, o: tuple[float, float] = offset,
                     e: str = expect) -> tuple[Audio, str]:  # fmt: skip
                return keyed(d, rng, on=60, offset=o), e

            add("frequency", f"{freq:.0f} Hz {off * 100:+.1f} %", make)

    for ms in (15, 19, 25, 30, 40, 50):

        def make_duration(rng: np.random.Generator, ms: float = ms) -> tuple[Audio, str]:
            d = KEYS[int(rng.integers(16))]
            return keyed(d, rng, on=ms), (d if ms >= 40 else "" if ms < 20 else "?")

        add("duration", f"{ms} ms tone", make_duration)

    for gap in (5, 10, 40):

        def make_gap(rng: np.random.Generator, gap: float = gap) -> tuple[Audio, str]:
            d = KEYS[int(rng.integers(16))]
            audio = np.concatenate(
                [silence(50), tone(d, 60, rng), silence(gap), tone(d, 60, rng), silence(100)]
            )
            return audio, d if gap <= 10 else d + d

        add("interruption", f"60 ms + {gap} ms gap + 60 ms", make_gap)

    def make_rate(rng: np.random.Generator) -> tuple[Audio, str]:
        digits = "".join(rng.choice(list(KEYS), 20))
        return keyed(digits, rng, on=50, off=50), digits

    add("rate", "20 digits at 10/s (50/50 ms)", make_rate)

    for twist in (8.0, 4.0, -4.0, 10.0, -6.0):

        def make_twist(rng: np.random.Generator, twist: float = twist) -> tuple[Audio, str]:
            digits = "".join(rng.choice(list(KEYS), 4))
            expect = digits if -4 <= twist <= 8 else "?"
            return keyed(digits, rng, on=50, level=-10, twist=twist), expect

        add("twist", f"twist {twist:+.0f} dB", make_twist)

    for level in (0.0, -20.0, -30.0, -36.0, -40.0, -45.0, -50.0, -55.0):

        def make_level(rng: np.random.Generator, level: float = level) -> tuple[Audio, str]:
            digits = "".join(rng.choice(list(KEYS), 4))
            expect = digits if level >= -36 else "" if level <= -50 else "?"
            return keyed(digits, rng, on=50, level=level), expect

        add("level", f"{level:.0f} dBm0", make_level)

    def make_corner(rng: np.random.Generator) -> tuple[Audio, str]:
        digits = "".join(rng.choice(list(KEYS), 4))
        return keyed(digits, rng, on=50, level=-36, twist=8), digits

    add("level", "-36 dBm0, twist +8 dB", make_corner)

    for snr in (20.0, 15.0, 12.0):

        def make_noise(rng: np.random.Generator, snr: float = snr) -> tuple[Audio, str]:
            digits = "".join(rng.choice(list(KEYS), 8))
            audio = keyed(digits, rng, on=50, off=60, level=-15)
            expect = digits if snr >= 15 else "?"
            return add_noise(audio, snr, dbm0_power(-15), rng), expect

        add("noise", f"white noise, {snr:.0f} dB SNR", make_noise)

    for codec in ("PCMU", "PCMA"):
        for level in (0.0, -36.0):

            def make_g711(rng: np.random.Generator, codec: str = codec,
                          level: float = level) -> tuple[Audio, str]:  # fmt: skip
                digits = "".join(rng.choice(list(KEYS), 4))
                audio = keyed(digits, rng, on=50, level=level)
                decoded = g711.decode(g711.encode(audio, codec), codec)
                return decoded.astype(np.float64), digits

            add("G.711", f"{codec} {level:.0f} dBm0", make_g711)
    return out


def run_cases(trials: int) -> list[tuple[str, str, int, int, int]]:
    """(group, label, trials, ours right, spandsp right); "?" cases count nothing (shown as
    the share detected)."""
    rows = []
    for group, label, make in cases():
        right_ours = right_theirs = 0
        informative = False
        for trial in range(trials):
            rng = np.random.default_rng(1000 * trial + 17)
            audio, expect = make(rng)
            got_ours, got_theirs = ours(audio), theirs(audio)
            if expect == "?":
                informative = True
                right_ours += got_ours != ""
                right_theirs += got_theirs != ""
            else:
                right_ours += got_ours == expect
                right_theirs += got_theirs == expect
        rows.append((group, label + (" (detected)" if informative else ""), trials,
                     right_ours, right_theirs))  # fmt: skip
    return rows


def talk_off(minutes: float) -> list[tuple[str, float, int, int]]:
    """(material, minutes, false digits ours, false digits spandsp)."""
    out = []
    for name, audio in (
        ("speech (espeak-ng, 8 languages)", speech(minutes * 60, seed=2026)),
        ("music (chords, glides)", music(max(2.0, minutes / 3) * 60, seed=7)),
        ("noise (white, brown, clicks)", noise(max(2.0, minutes / 3) * 60, seed=8)),
    ):
        out.append((name, audio.size / RATE / 60, len(ours(audio)), len(theirs(audio))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer trials, 2 minutes of talk-off")
    parser.add_argument("--trials", type=int, default=0, help="trials per case (default 10)")
    parser.add_argument("--talk-off-minutes", type=float, default=30.0)
    args = parser.parse_args()
    trials = args.trials or (3 if args.quick else 10)
    minutes = 2.0 if args.quick else args.talk_off_minutes
    print("$ " + shlex.join([Path(sys.executable).name, *sys.argv]))
    started = time.perf_counter()
    print(f"accuracy, {trials} trials per case (random phases; '?' rows: share detected)\n")
    print("| case | | ours | spandsp |")
    print("|---|---|---|---|")
    for group, label, n, right_ours, right_theirs in run_cases(trials):
        print(f"| {group} | {label} | {right_ours}/{n} | {right_theirs}/{n} |")
    print("\ntalk-off: false digits (the same audio through both)\n")
    print("| material | minutes | ours | spandsp |")
    print("|---|---|---|---|")
    for name, mins, false_ours, false_theirs in talk_off(minutes):
        print(f"| {name} | {mins:.1f} | {false_ours} | {false_theirs} |")
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
