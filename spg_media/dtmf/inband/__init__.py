"""In-band DTMF: a sans-IO detector that hears keypad tones in the audio of many channels at once.

This package owns finding DTMF digits in 8 kHz audio: `InbandDetector` is fed (channels ×
samples) blocks and the time, and hands back one "start" and one "end" `DtmfEvent` per key press
and channel (source "inband"); `scan` runs it over one recording for `spg-media dtmf-scan`. It
opens nothing, reads no clock and keeps no per-channel Python objects: every channel is an
element of the state's numpy arrays, and one `process` call serves all the channels of a media
tick. Its modules:

* `detector`: `InbandDetector` (slots, per-channel state, the order of the stages) and `scan`;
* `screen`: stage 1, the cheap look at every channel;
* `analysis`: stage 2, correlations and decision windows where tones may be;
* `decisions`: the per-channel decision machine (a scalar reference and a vectorised twin);
* `checks`: a start's last checks on the audio of its window (timing, spectrum);
* `timing`: sample positions, onsets and durations, and the events that carry them;
* `history`: each channel's own last 25 ms of audio, for channels that become hot;
* `params`: frequencies, geometry, levels and every threshold.

Theory of operation
-------------------
Each channel's stream is cut into 10 ms *frames* (80 samples; what is left of a call waits for
the next one) and 5 ms *sub-blocks* (40 samples). Work is done in two stages, so that its cost
follows what is on the line, not the number of channels.

1. **Screen, every channel, every frame.** A glance at every 4th sample tells silence (below
   -60 dBm0) from sound; silent channels stop there (when most channels had sound in the last
   call, the glance is skipped and the gate is on the energy below). For the others, every
   other sample (4 kHz: the DTMF tones, all under 2 kHz, keep their power and bin) of each frame
   is correlated with the 8 frequencies, a matrix multiply per few thousand channels. A 20 ms
   window (the frame and the one before) is *screened in* when it has -49 dBm0 and its strongest
   row plus strongest column hold 60 % of its energy (an in-spec digit holds over 80 % of a
   window it fills, even 1.5 % off frequency with reverse twist and 15 dB SNR).
   Noise and about 98.5 % of speech stop here; the screen is lenient, as all it decides is where
   to look closely.
2. **Analysis, for channels screened in (or with a digit, candidate or glide in progress).** Each
   sub-block is correlated at full rate with the 8 frequencies (one matrix multiply). The
   correlators are the plain 40-sample ones pulled to zero response (-31 dB) around the other
   group's tones and their own image, so each gives its tone's amplitude and phase undisturbed
   by the other tone. A 20 ms decision window (4 sub-blocks) ends at every sub-block. Its
   strongest row and column (20 ms coherent sums); each tone's frequency offset from the phase
   advance between the window's halves (unwrapped with the 5 ms advance, unambiguous over
   ±100 Hz): this resolves a hertz or two where 102-sample Goertzel bins (spandsp, Asterisk) are
   78 Hz wide, so ±1.5 % is accepted and ±3.5 % rejected for all eight tones. A window is a
   *hit* when both tones are at least -46 dBm0 and together -43 dBm0, the twist is within 9.5 dB
   (row louder, "normal") or 5.5 dB (column louder, "reverse"), both offsets are within 2.5 %,
   and the two tones hold 75 % of the window's energy (speech and music spread theirs over
   harmonics).

Decisions, per sub-block, for the channels analysed where something may happen (a digit going on
steadily, its tones alone and each at its own frequency, only has its end moved along; idle
channels skip them): vectorised over them, or, up to `decisions.ROWS_ONE_BY_ONE` of them (a
node's usual load), one at a time on Python scalars, which is cheaper than ~80 array calls a
sub-block; both make exactly the same decisions (a test holds them to it). A start's last checks
(timing, spectrum) read its window alone, so they are made before the sub-block loop, in one
batch, for each channel's first window that may start a digit (where nearly all digits start);
the loop makes them itself only for the others:

* a digit *starts* when hit windows of one digit (one miss tolerated) have seen its tones for
  19.875 ms, the tones still fill the last sub-block and hold 85 % of the last window's energy,
  and that window's spectrum (a 256-point FFT, made only for windows that may start a digit)
  shows nothing else within 10 dB of the weaker tone, and the two frequencies are not in a
  low-order harmonic ratio (4/3, 3/2, 5/3, 2/1, ...) that no in-spec DTMF pair can show but two
  harmonics of a voice do. The onset is first estimated from how much of each sub-block the
  tones fill (their amplitude against the steady level); once that says 16.75 ms, the tones are
  timed to the sample on the audio of the last 30 ms (`timing.tone_timing`: their amplitudes and
  phases fitted over the last 10 ms, the onset and end where "the tones inside, nothing outside"
  fits best). So a tone of 19 ms or less never qualifies (margin 7 samples: none of thousands of
  trials at 15 dB SNR, all levels and twists), one of 25 ms or more does, the start event is
  dated at the onset, and, fed 20 ms frames, it comes 20 to 40 ms after the onset (median 30).
  Keypad tones start abruptly: when the tones were not below half their level in the two
  sub-blocks before the first hit window, 35 ms are required (by the first estimate).
* speech and music that glide through the accepted band are held off: a steady two-tone pattern
  seen off frequency (or refused by the spectrum check) "taints" that pair for as long as it lasts
  (not while a digit is going on: there, a window across a change of key looks like a glide).
* a started digit lasts while each 5 ms sub-block holds both its tones at half their start
  amplitude or more, with half the sub-block's energy (a phase jump from a lost packet or a
  sample slip does not stop it); it *ends* after 20 ms without them, dated where the tones
  stopped. So breaks of up to 15 ms are bridged and gaps of 20 ms or more split repeated digits.
  Another digit keyed with no gap at all starts as usual and ends the old one where it began
  (the old one may still look present: a 5 ms correlator hears its group's neighbouring tones).
* a channel whose audio stops for more than `GAP_BREAK_S` (as `now` tells) ends its digit where
  the audio stopped and starts afresh: a long outage is never bridged into one press. The media
  engine tells it instead (`gaps_from_time=False`, `flush`), from the RTP timestamps: a burst of
  late packets after a stall is no outage, though `now` would say so.

Levels are in dBm0 with spandsp's reference: a 0 dBm0 sine peaks at 32767 × 10^(-3.14/20) ≈ 22,790
(G.711 μ-law overloads at about +3.17 dBm0). A level given for a digit is the sum of both tones.
"""

from .detector import InbandDetector, scan
from .params import DBM0_PEAK, GAP_BREAK_S, KEYS

__all__ = ["DBM0_PEAK", "GAP_BREAK_S", "KEYS", "InbandDetector", "scan"]
