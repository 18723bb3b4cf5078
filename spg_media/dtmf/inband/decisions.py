"""The per-channel decision machine: when a digit starts and when it ends.

This module owns the decisions, sub-block by sub-block, for the channels where something may
happen (the detector leaves out idle channels and digits going on steadily). Its state per
channel is a `DigitState` (a structure of arrays, one element per channel); what the analysis
found is an `Evidence`. The machine exists twice, with exactly the same decisions (a test holds
them to it):

* `decide_each`, one channel at a time on Python scalars: the reference, to read first, and
  the cheaper one for a few channels (a node's usual load);
* `decide_vectorised`, the same steps on arrays over all the channels: fewer Python steps per
  channel, cheaper beyond `ROWS_ONE_BY_ONE` channels.

`decide` chooses between them. The rules (see also the package docstring):

* a digit *starts* when hit windows of one digit (one miss tolerated) have seen its tones long
  enough (`START_ROUGH_SAMPLES` by the windows' cover, then `START_SAMPLES` when timed to the
  sample; `START_NO_ONSET_SAMPLES` when no abrupt onset was seen), the tones still fill the last
  sub-block and hold `START_FRACTION` of the window, and the window's spectrum is clean
  (`checks`);
* a steady two-tone pattern seen off frequency, or refused by the spectrum check, *taints* that
  pair while it lasts (not while a digit is going on);
* a started digit lasts while each sub-block holds its tones (`analysis.presence`); it *ends*
  after `END_SUBS` sub-blocks without them, dated where the tones stopped; another digit keyed
  with no gap ends it where the new one began.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Final

import numpy as np

from .analysis import Windows, presence
from .checks import Audio, StartChecks, purity_at, start_checks, timing_at
from .params import (
    C64,
    CAND_MISSES,
    END_SUBS,
    F32,
    F64,
    HIST,
    I64,
    KEYS,
    LOOK,
    MIN_LAST_COVER,
    RATE,
    START_FRACTION,
    START_NO_ONSET_SAMPLES,
    START_ROUGH_SAMPLES,
    START_SAMPLES,
    SUB,
    SUBS_PER_FRAME,
    WIN,
    Bools,
    Events,
    Idx,
)
from .timing import end_events, event

ROWS_ONE_BY_ONE: Final = 120  # up to this many channels, decide_each (crossover: ~130)
_F32_LAST_COVER: Final = float(np.float32(MIN_LAST_COVER))  # the thresholds as the arrays
_F32_START_FRACTION: Final = float(np.float32(START_FRACTION))  # compare them (float32)
_MISSES_KEPT: Final = 100  # a candidate's misses are counted up to this (no overflow)


@dataclass
class DigitState:
    """The decision machine's state, one element per channel (`ref` is 2 × channels).

    Positions are in samples of the channel's stream (see `timing`)."""

    digit: I64  # the digit in progress, or -1
    onset: F64  # its onset
    end: F64  # where its tones were last seen to end
    ref: F32  # its row and column amplitude per sub-block at its start, as correlated
    absent: I64  # sub-blocks in a row without its tones
    candidate: I64  # the digit building up to a start, or -1
    candidate_onset: F64  # its estimated onset
    candidate_misses: I64  # windows missed since its last hit
    candidate_need: F64  # samples it must be seen for to start
    taint: I64  # the digit whose tones are now gliding through, or -1

    @classmethod
    def empty(cls, capacity: int) -> DigitState:
        """Room for `capacity` channels, every one idle."""
        return cls(
            digit=np.full(capacity, -1, dtype=np.int64),
            onset=np.zeros(capacity),
            end=np.zeros(capacity),
            ref=np.zeros((2, capacity), dtype=np.float32),
            absent=np.zeros(capacity, dtype=np.int64),
            candidate=np.full(capacity, -1, dtype=np.int64),
            candidate_onset=np.zeros(capacity),
            candidate_misses=np.zeros(capacity, dtype=np.int64),
            candidate_need=np.zeros(capacity),
            taint=np.full(capacity, -1, dtype=np.int64),
        )

    def grown(self, capacity: int) -> DigitState:
        """A copy with room for `capacity` channels, the new ones idle."""
        bigger = DigitState.empty(capacity)
        for name in _DIGIT_FIELDS:
            old = getattr(self, name)
            getattr(bigger, name)[..., : old.shape[-1]] = old
        return bigger

    # (take and put index each field as it is shaped: a[..., i] costs eight times a[i].)

    def take(self, slots: Idx | slice) -> DigitState:
        """These channels' state (copies when `slots` is an index array)."""
        return DigitState(
            digit=self.digit[slots],
            onset=self.onset[slots],
            end=self.end[slots],
            ref=self.ref[:, slots],
            absent=self.absent[slots],
            candidate=self.candidate[slots],
            candidate_onset=self.candidate_onset[slots],
            candidate_misses=self.candidate_misses[slots],
            candidate_need=self.candidate_need[slots],
            taint=self.taint[slots],
        )

    def put(self, slots: Idx | slice, part: DigitState) -> None:
        """Store these channels' state."""
        for name in _DIGIT_FIELDS:
            if name == "ref":
                self.ref[:, slots] = part.ref
            else:
                getattr(self, name)[slots] = getattr(part, name)

    def reset(self, slots: Idx) -> None:
        """Nothing in progress on these channels."""
        self.digit[slots] = -1
        self.absent[slots] = 0
        self.candidate[slots] = -1
        self.candidate_misses[slots] = 0
        self.taint[slots] = -1

    def busy(self, slots: Idx) -> Bools:
        """Whether these channels have a digit, a candidate or a glide in progress."""
        return np.asarray(
            (self.digit[slots] >= 0) | (self.candidate[slots] >= 0) | (self.taint[slots] >= 0)
        )


_DIGIT_FIELDS: Final = tuple(field.name for field in fields(DigitState))


@dataclass
class Evidence:
    """What the analysis found for the channels decided on, and where to look for more.

    Per sub-block (nsub × channels decided on): `present` and `cover` (the digit in progress
    still there, and how much of the sub-block its tones fill); per frame (F × channels),
    `looked` (screened in, so windows there count). `win` has their decision windows. `zt`,
    `et` (correlations 8 × (HIST + nsub) × k, energies (HIST + nsub) × k) and `audio` hold all
    k channels analysed: `cols` are the ones decided on among them. `pos0` is each channel's
    sample position at the call's first sample, `base` the time of its position 0."""

    slots: Idx
    cols: Idx
    win: Windows
    present: Bools
    cover: F32
    looked: Bools
    zt: C64
    et: F32
    audio: Audio
    pos0: I64
    base: F64


def decide(evidence: Evidence, state: DigitState, events: Events) -> None:
    """Run the decision machine over the call's sub-blocks: `state` is updated, the start and
    end events are appended to `events` in order for each channel."""
    win = evidence.win
    # A start's checks (timing, spectrum) read its window alone: they are made at once, in
    # one batch instead of one per sub-block, for each channel's first window that may
    # start a digit (its spectrum in the next window where the tones were timed short of
    # START_MS: that is where they are checked again); nearly all digits start in one of
    # these. In the loop for the others.
    may_start = (
        (win.digit >= 0)
        & (win.last_cover >= MIN_LAST_COVER)
        & (win.fraction >= START_FRACTION)
        & (win.digit != state.digit)  # a digit going on is not started again
    )
    ahead = np.where(may_start.any(axis=0), may_start.argmax(axis=0), -1)
    # Timed there unless a candidate of that digit is already timed, or needs no timing.
    candidate = state.candidate
    seen = (candidate >= 0) & (candidate == win.digit[np.maximum(ahead, 0), np.arange(ahead.size)])
    to_time = ~(seen & (state.candidate_need != START_ROUGH_SAMPLES))
    checks = start_checks(evidence.audio, evidence.cols, ahead, to_time, win)
    # Few channels: a loop over them costs less than the array calls (the same decisions).
    if evidence.slots.size <= ROWS_ONE_BY_ONE:
        decide_each(evidence, state, checks, events)
    else:
        decide_vectorised(evidence, state, checks, events)
    np.minimum(state.candidate_misses, _MISSES_KEPT, out=state.candidate_misses)


def decide_each(evidence: Evidence, state: DigitState, checks: StartChecks, events: Events) -> None:
    """The decision machine, one channel at a time on Python scalars (the reference).

    `state` is updated in place. Values are read as the arrays hold them (float32 ones
    exactly) and compared as the arrays would be (against float32 thresholds), so that the
    decisions are exactly those of `decide_vectorised`; a new digit's presence comes from one
    batch made for the windows where starts were checked ahead."""
    win, audio, cols = evidence.win, evidence.audio, evidence.cols
    nsub, rows = evidence.present.shape
    # The presence, over this call, of the digit each start window checked ahead would start.
    ahead = np.flatnonzero(checks.pure_sub >= 0)
    at = checks.pure_sub[ahead]
    ahead_present, ahead_cover = presence(
        evidence.zt[:, HIST:, cols[ahead]],
        evidence.et[HIST:, cols[ahead]],
        win.digit[at, ahead],
        win.ref[:, at, ahead],
    )
    # Everything as Python lists, channel first (float32 products stay float32 products).
    ahead_present_of, ahead_filled_of = ahead_present.T.tolist(), (SUB * ahead_cover).T.tolist()
    looked_frames = evidence.looked.T.tolist()  # (rows × F)
    w_digit, w_pair, w_glide = win.digit.T.tolist(), win.pair.T.tolist(), win.glide.T.tolist()
    w_covered, w_onset = win.covered.T.tolist(), win.onset.T.tolist()
    w_last, w_fraction = win.last_cover.T.tolist(), win.fraction.T.tolist()
    present_of, filled_of = evidence.present.T.tolist(), (SUB * evidence.cover).T.tolist()
    timing_sub, pure_sub = checks.timing_sub.tolist(), checks.pure_sub.tolist()
    at_pure = checks.at_pure.tolist()
    digits, onsets, ends = state.digit.tolist(), state.onset.tolist(), state.end.tolist()
    absents, candidates = state.absent.tolist(), state.candidate.tolist()
    candidate_onsets, misses_of = state.candidate_onset.tolist(), state.candidate_misses.tolist()
    needs, taints = state.candidate_need.tolist(), state.taint.tolist()
    starts0 = evidence.pos0.tolist()
    records: list[tuple[int, int, float, float | None]] = []  # row, digit, onset, end (None: start)
    started: list[tuple[int, int]] = []  # (row, sub-block)
    for r in range(rows):
        digit, onset, end, absent = digits[r], onsets[r], ends[r], absents[r]
        candidate, candidate_onset, misses = candidates[r], candidate_onsets[r], misses_of[r]
        need, taint = needs[r], taints[r]
        here_of, filled = present_of[r], filled_of[r]
        for j in range(nsub):
            sub_start = float(starts0[r] + j * SUB)
            end_here = sub_start + SUB

            # -- the digit in progress: still there, or gone for long enough to end?
            if digit >= 0:
                if here_of[j]:  # its tones end, for now, where they stop in this sub-block
                    end = sub_start + filled[j]
                    absent = 0
                else:
                    # First sub-block without them: they may still fill its beginning.
                    if absent == 0 and end >= sub_start - 0.5:
                        end = end + filled[j]
                    absent += 1
                    if absent >= END_SUBS:
                        records.append((r, digit, onset, end))
                        digit, absent = -1, 0

            # -- hits, glides and candidates: the windows count where screened in, or where
            # something is going on.
            looked = looked_frames[r][j // SUBS_PER_FRAME] or digit >= 0 or candidate >= 0
            looked = looked or taint >= 0
            # A steady two-tone pattern seen off frequency (or not clean) taints that pair
            # while it lasts: speech and music glide into the accepted band, keypad tones
            # start in it.
            pair = w_pair[r][j] if looked else -1
            if pair != taint:
                taint = -1
            if looked and w_glide[r][j] and digit < 0:
                taint = pair
            hit = w_digit[r][j] if looked else -1
            if hit == taint or (digit >= 0 and hit == digit):
                hit = -1
            same = hit >= 0 and hit == candidate
            fresh = hit >= 0 and hit != candidate
            if fresh:  # a new candidate: its onset as far back as its tones fill the window
                candidate_onset = end_here - w_covered[r][j]
                need = START_ROUGH_SAMPLES if w_onset[r][j] else START_NO_ONSET_SAMPLES
                candidate = hit
            misses = 0 if hit >= 0 else misses + 1
            if hit < 0 and misses > CAND_MISSES:
                candidate = -1

            # -- a start: seen long enough, still filling the window, then its last checks.
            if not (
                (same or fresh)
                and end_here - candidate_onset >= need
                and w_last[r][j] >= _F32_LAST_COVER
                and w_fraction[r][j] >= _F32_START_FRACTION
            ):
                continue
            # Tones that began abruptly are timed to the sample, from the audio of the window
            # and the LOOK sub-blocks before it: they start once they have lasted START_MS.
            if need == START_ROUGH_SAMPLES:
                if timing_sub[r] == j:
                    made = int(checks.at_timing[r])
                    begins, length = float(checks.onset[made]), float(checks.length[made])
                else:
                    late = timing_at(audio, cols[r : r + 1], j, win, np.array([r]))
                    begins, length = float(late[0][0]), float(late[1][0])
                candidate_onset = sub_start + (SUB - (WIN + LOOK) * SUB) + begins
                need = START_SAMPLES  # timed: the onset is known from now on
                if length < START_SAMPLES:  # not yet
                    continue
            # Last check, on the spectrum of the window: nothing but the two tones.
            if pure_sub[r] == j:
                pure = bool(checks.pure[at_pure[r]])
            else:
                pure = bool(purity_at(audio, cols[r : r + 1], j, win, np.array([r]))[0])
            if not pure:  # more than two tones, or a voice: not again in this pattern
                taint, candidate = candidate, -1
                continue
            if digit >= 0:  # another digit without a gap: the old one ends first, at the
                # latest where the new one began (a shared tone goes on)
                records.append((r, digit, onset, min(end, candidate_onset)))
            records.append((r, candidate, candidate_onset, None))
            digit, onset, end, absent, candidate = candidate, candidate_onset, end_here, 0, -1
            started.append((r, j))
            if j + 1 < nsub:  # the new digit's presence for the rest of this call
                if pure_sub[r] == j:
                    here_of = ahead_present_of[at_pure[r]]
                    filled = ahead_filled_of[at_pure[r]]
                else:
                    later, source = HIST + j + 1, cols[r : r + 1]
                    now_present, now_cover = presence(
                        evidence.zt[:, later:, source],
                        evidence.et[later:, source],
                        np.array([digit]),
                        win.ref[:, j, r : r + 1],
                    )
                    here_of = here_of[: j + 1] + now_present[:, 0].tolist()
                    filled = filled[: j + 1] + (SUB * now_cover[:, 0]).tolist()
        digits[r], onsets[r], ends[r], absents[r] = digit, onset, end, absent
        candidates[r], candidate_onsets[r], misses_of[r] = candidate, candidate_onset, misses
        needs[r], taints[r] = need, taint
    state.digit[:], state.onset[:], state.end[:], state.absent[:] = digits, onsets, ends, absents
    state.candidate[:], state.candidate_onset[:] = candidates, candidate_onsets
    state.candidate_misses[:], state.candidate_need[:], state.taint[:] = misses_of, needs, taints
    if started:
        rows_started, subs_started = np.array(started).T
        state.ref[:, rows_started] = win.ref[:, subs_started, rows_started]
    _emit(evidence, records, events)


def _emit(
    evidence: Evidence, records: list[tuple[int, int, float, float | None]], events: Events
) -> None:
    """`decide_each`'s events, in order: records are (row, digit, onset, end), end None for a
    start. The ends are made in one batch (as `decide_vectorised` makes them)."""
    slots, base = evidence.slots, evidence.base
    ended = [record for record in records if record[3] is not None]
    end_made = iter(
        end_events(
            slots[[r for r, _, _, _ in ended]],
            np.array([digit for _, digit, _, _ in ended], dtype=np.int64),
            base[[r for r, _, _, _ in ended]],
            np.array([onset for _, _, onset, _ in ended]),
            np.array([end for _, _, _, end in ended]),
        )
        if ended
        else []
    )
    bases = base.tolist()
    for r, digit, onset, end in records:
        if end is not None:
            events.append(next(end_made))
        else:
            at_time = bases[r] + onset / RATE
            events.append((int(slots[r]), event(KEYS[digit], "start", at_time, None)))


def decide_vectorised(
    evidence: Evidence, state: DigitState, checks: StartChecks, events: Events
) -> None:
    """The decision machine of `decide_each`, step by step, on arrays over the channels."""
    win, audio, cols, slots, base = (
        evidence.win, evidence.audio, evidence.cols, evidence.slots, evidence.base
    )  # fmt: skip
    present, cover, looked_frames = evidence.present, evidence.cover, evidence.looked
    nsub = present.shape[0]
    digit, onset, end, absent = state.digit, state.onset, state.end, state.absent
    candidate, candidate_onset = state.candidate, state.candidate_onset
    misses, need, taint = state.candidate_misses, state.candidate_need, state.taint
    for j in range(nsub):
        on = digit >= 0
        if not (
            looked_frames[j // SUBS_PER_FRAME].any()
            or on.any()
            or (candidate >= 0).any()
            or (taint >= 0).any()
        ):
            continue  # nothing to look at or to carry on with in this sub-block
        sub_start = (evidence.pos0 + j * SUB).astype(np.float64)
        end_here = sub_start + SUB

        # -- the digit in progress: still there, or gone for long enough to end?
        if on.any():
            here = present[j] & on
            gone = on & ~here
            c = cover[j]
            # Where the tones stopped: the end of the last sub-block holding them, plus
            # what they fill of the first one without them.
            end = np.where(here, sub_start + SUB * c, end)
            first_gone = gone & (absent == 0) & (end >= sub_start - 0.5)
            end = np.where(first_gone, end + SUB * c, end)
            absent = np.where(here, 0, np.where(gone, absent + 1, absent))
            ended = np.flatnonzero(gone & (absent >= END_SUBS))
            if ended.size:
                events += end_events(
                    slots[ended], digit[ended], base[ended], onset[ended], end[ended]
                )
                digit[ended] = -1
                absent[ended] = 0

        # -- hits, glides and candidates
        looked = looked_frames[j // SUBS_PER_FRAME] | (digit >= 0) | (candidate >= 0)
        looked |= taint >= 0
        pair = np.where(looked, win.pair[j], -1)
        taint = np.where(pair != taint, -1, taint)
        taint = np.where(looked & win.glide[j] & (digit < 0), pair, taint)
        hit = np.where(looked, win.digit[j], -1)
        hit = np.where((hit == taint) | ((digit >= 0) & (hit == digit)), -1, hit)
        same = (hit >= 0) & (hit == candidate)
        fresh = (hit >= 0) & (hit != candidate)
        candidate_onset = np.where(fresh, end_here - win.covered[j], candidate_onset)
        need = np.where(
            fresh, np.where(win.onset[j], START_ROUGH_SAMPLES, START_NO_ONSET_SAMPLES), need
        )
        candidate = np.where(fresh, hit, candidate)
        misses = np.where(hit >= 0, 0, misses + 1)
        candidate = np.where((hit < 0) & (misses > CAND_MISSES), -1, candidate)

        # -- starts
        ready = (
            (same | fresh)
            & (end_here - candidate_onset >= need)
            & (win.last_cover[j] >= MIN_LAST_COVER)
        )
        begun = np.flatnonzero(ready & (win.fraction[j] >= START_FRACTION))
        if not begun.size:
            continue
        known = checks.timing_sub[begun] == j  # timed before the loop
        made = checks.at_timing[begun[known]]
        timed = need[begun] == START_ROUGH_SAMPLES
        if timed.any():
            begins = np.empty(begun.size)
            length = np.empty(begun.size)
            begins[known], length[known] = checks.onset[made], checks.length[made]
            late = np.flatnonzero(timed & ~known)
            if late.size:
                begins[late], length[late] = timing_at(
                    audio, cols[begun[late]], j, win, begun[late]
                )
            early = length[timed] < START_SAMPLES
            candidate_onset[begun[timed]] = (
                sub_start[begun[timed]] + (SUB - (WIN + LOOK) * SUB) + begins[timed]
            )
            need[begun[timed]] = START_SAMPLES
            if early.any():  # not yet
                keep = ~timed
                keep[timed] = ~early
                begun = begun[keep]
                if not begun.size:
                    continue
        pure = np.empty(begun.size, dtype=bool)
        known = checks.pure_sub[begun] == j
        pure[known] = checks.pure[checks.at_pure[begun[known]]]
        late = np.flatnonzero(~known)
        if late.size:
            pure[late] = purity_at(audio, cols[begun[late]], j, win, begun[late])
        if not pure.all():
            refused = begun[~pure]
            taint[refused] = candidate[refused]
            candidate[refused] = -1
            begun = begun[pure]
            if not begun.size:
                continue
        again = begun[digit[begun] >= 0]
        if again.size:
            events += end_events(
                slots[again],
                digit[again],
                base[again],
                onset[again],
                np.minimum(end[again], candidate_onset[again]),
            )
        for slot, new, at in zip(
            slots[begun].tolist(),
            candidate[begun].tolist(),
            (base[begun] + candidate_onset[begun] / RATE).tolist(),
            strict=True,
        ):
            events.append((slot, event(KEYS[new], "start", at, None)))
        digit[begun] = candidate[begun]
        onset[begun] = candidate_onset[begun]
        end[begun] = end_here[begun]
        state.ref[:, begun] = win.ref[:, j, begun]
        absent[begun] = 0
        candidate[begun] = -1
        if j + 1 < nsub:  # the new digits' presence for the rest of this call
            later = HIST + j + 1
            source = cols[begun]
            present[j + 1 :, begun], cover[j + 1 :, begun] = presence(
                evidence.zt[:, later:, source],
                evidence.et[later:, source],
                digit[begun],
                state.ref[:, begun],
            )
    state.digit, state.onset, state.end, state.absent = digit, onset, end, absent
    state.candidate, state.candidate_onset = candidate, candidate_onset
    state.candidate_misses, state.candidate_need, state.taint = misses, need, taint
