"""Voice entry in the caller's journey: spoken digits read back and confirmed, keys and speech
mixed, 'start again', keys winning, timeouts and attempts. Utterances are made here (words and
scores, as the recogniser hands them), the rest is the real journey and constrained decoding."""

from __future__ import annotations

import dataclasses

import pytest
from test_journey import (
    AMEX,
    CVC,
    EXPIRY,
    STEP,
    TODAY,
    VISA,
    Caller,
    authorize_of,
    held,
    only_play,
    outcome_of,
    plays,
    state_now,
)

from spg_media.payment.journey import (
    Action,
    Authorize,
    Journey,
    JourneyConfig,
    Play,
    PromptPart,
    State,
    StopPlayback,
)
from spg_media.payment.model import Result, SecretDigits
from spg_media.speech.model import Hypothesis, Utterance
from spg_media.tts.phrases import PROMPT_NAMES, SPEECH_PROMPT_NAMES

SPEECH = JourneyConfig(speech=True)
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def words(digits: str) -> tuple[str, ...]:
    return tuple(WORDS[int(d)] for d in digits)


def utterance(
    *readings: tuple[tuple[str, ...], float], at: float, length: float = 1.0
) -> Utterance:
    return Utterance(tuple(Hypothesis(w, score) for w, score in readings), at - length, at)


class Speaker(Caller):
    """A caller who may also talk: `say` hands the journey one utterance ending now."""

    def __init__(self, config: JourneyConfig = SPEECH) -> None:
        super().__init__(config)

    def say(
        self, text: str, *, also: tuple[tuple[str, float], ...] = (), gap: float = 1.5
    ) -> list[Action]:
        """`text`: digits ("4111") or words ("yes", "start again"); `also`: other hypotheses
        (text, score) after the best one (score 0)."""
        self.now += gap
        readings = [(self._words(text), 0.0), *((self._words(t), s) for t, s in also)]
        return self._got(self.journey.speech(utterance(*readings, at=self.now), self.now))

    @staticmethod
    def _words(text: str) -> tuple[str, ...]:
        return words(text) if text.isdigit() else tuple(text.split())

    def group(self, digits: str) -> list[Action]:
        """Say a group after the prompt, then say yes to its read-back."""
        self.done()
        heard = self.say(digits)
        assert heard_digits(heard) == digits
        self.done()
        return self.say("yes")


def heard_digits(actions: list[Action], prompt: str = "heard") -> str:
    """The digits of the read-back played (the test may look: it knows what was said);
    `prompt` "heard_instead" for a runner-up read back after a "no"."""
    play = only_play(actions)
    found = [p for p in play.parts if p.name == prompt]
    assert len(found) == 1, plays(actions)
    value = dict(found[0].params)["digits"]
    assert isinstance(value, SecretDigits)
    return "".join(value.characters())


def part(name: str, **params: object) -> PromptPart:
    return PromptPart(name, tuple(params.items()))  # type: ignore[arg-type]


def spoken_card(speaker: Speaker, pan: str = VISA) -> list[Action]:
    actions: list[Action] = []
    for start in range(0, len(pan), 4):
        actions = speaker.group(pan[start : start + 4])
    return actions


# ---- prompts -------------------------------------------------------------------------------------


def test_speech_prompts_say_key_or_say() -> None:
    speaker = Speaker()
    assert [p.name for p in only_play(speaker.start()).parts] == [
        "announce_sale",
        "enter_card_speech",
    ]
    assert plays(spoken_card(speaker)) == [("enter_expiry_speech",)]
    assert plays(speaker.group(EXPIRY)) == [("enter_cvc_speech",)]
    assert dict(only_play(speaker.actions[-1:]).parts[0].params) == {"digits": 3}


def test_keypad_only_journey_never_offers_speech() -> None:
    """Speech off (ivr.input = dtmf, a language without a model, no recognition slot, agent-
    assisted mode): the keypad prompts, and anything heard is ignored."""
    caller = Caller(JourneyConfig(speech=False, confirm=True))
    caller.start()
    assert (
        caller.journey.speech(utterance((words("4111"), 0.0), at=caller.now + 1), caller.now) == []
    )
    caller.card()
    caller.expiry()
    caller.cvc()
    authorize_of(caller.keys("1"))
    names = {p.name for a in caller.actions if isinstance(a, Play) for p in a.parts}
    assert names <= set(PROMPT_NAMES)
    assert not names & set(SPEECH_PROMPT_NAMES)


def test_speech_is_off_by_default() -> None:
    assert JourneyConfig().speech is False


# ---- the whole card by voice ------------------------------------------------------------------


def test_card_expiry_and_code_said_and_confirmed() -> None:
    speaker = Speaker()
    speaker.start()
    speaker.done()
    first = speaker.say("4111")
    assert plays(first) == [("heard",)] and heard_digits(first) == "4111"
    assert dict(only_play(first).parts[0].params)["group"] == 4
    speaker.done()
    assert plays(speaker.say("yes")) == [("next_digits",)]
    for group in ("1111", "1111"):
        assert plays(speaker.group(group)) == [("next_digits",)]
    assert plays(speaker.group("1111")) == [("enter_expiry_speech",)]
    assert speaker.journey.state is State.EXPIRY
    speaker.done()
    expiry = speaker.say(EXPIRY)
    assert heard_digits(expiry) == EXPIRY
    assert dict(only_play(expiry).parts[0].params)["group"] == 2  # read as 12, 30
    speaker.done()
    speaker.say("yes")
    auth = authorize_of(speaker.group(CVC))
    assert auth.card.pan.matches(VISA) and auth.card.cvc.matches(CVC)
    assert (auth.card.exp_month, auth.card.exp_year) == (12, 2030)
    speaker.authorized()
    outcome = speaker.finish_result()
    assert outcome.result is Result.APPROVED
    assert outcome.inputs == (("card", "speech"), ("expiry", "speech"), ("security_code", "speech"))
    assert outcome.attempts == 1  # the authorisation alone


def test_whole_number_in_one_breath() -> None:
    speaker = Speaker()
    speaker.start()
    speaker.done()
    assert heard_digits(speaker.say(VISA)) == VISA
    speaker.done()
    assert plays(speaker.say("yes")) == [("enter_expiry_speech",)]


def test_luhn_picks_the_reading_that_completes_the_card() -> None:
    """The last group: the recogniser's best guess breaks Luhn, the second one completes the
    number: that one is read back."""
    speaker = Speaker()
    speaker.start()
    for group in ("4111", "1111", "1111"):
        speaker.group(group)
    speaker.done()
    heard = speaker.say("1117", also=(("1111", -0.5),))
    assert heard_digits(heard) == "1111"


def test_key_one_confirms_a_read_back_and_the_field_stays_spoken() -> None:
    speaker = Speaker()
    speaker.start()
    speaker.done()
    speaker.say(VISA)
    assert plays(speaker.keys("1")) == [("enter_expiry_speech",)]
    speaker.keys(EXPIRY)
    speaker.keys(CVC, gap=STEP)
    speaker.authorized()
    outcome = speaker.finish_result()
    assert outcome.inputs == (("card", "speech"), ("expiry", "dtmf"), ("security_code", "dtmf"))


# ---- "no", start again, repeat ----------------------------------------------------------------


def test_wrong_read_back_answered_no_asks_again() -> None:
    speaker = Speaker()
    speaker.start()
    speaker.group("4111")
    speaker.done()
    assert heard_digits(speaker.say("1117")) == "1117"  # misheard
    speaker.done()
    assert plays(speaker.say("no")) == [("say_again",)]
    speaker.done()
    assert heard_digits(speaker.say("1111")) == "1111"
    speaker.done()
    speaker.say("yes")
    speaker.group("1111")
    assert plays(speaker.group("1111")) == [("enter_expiry_speech",)]
    speaker.group(EXPIRY)
    speaker.group(CVC)
    speaker.authorized()
    outcome = speaker.finish_result()
    assert outcome.attempts == 2  # the "no" counts as a failed attempt, then the authorisation


def test_key_two_is_no_and_the_confirmed_groups_stay() -> None:
    speaker = Speaker()
    speaker.start()
    speaker.group("4111")
    speaker.done()
    speaker.say("2222")
    assert plays(speaker.keys("2")) == [("say_again",)]
    speaker.group("1111")
    speaker.group("1111")
    assert plays(speaker.group("1111")) == [("enter_expiry_speech",)]


def test_no_every_time_ends_too_many_attempts() -> None:
    speaker = Speaker(JourneyConfig(speech=True, max_attempts=3))
    speaker.start()
    for group in ("4111", "4112", "4113"):
        speaker.done()
        assert heard_digits(speaker.say(group)) == group
        speaker.done()
        actions = speaker.say("no")
    assert plays(actions) == [("too_many_attempts", "goodbye")]
    assert outcome_of(speaker.done()).result is Result.TOO_MANY_ATTEMPTS
    assert held(speaker.journey) == []


def test_a_reading_denied_is_not_read_back_again_for_the_same_digits() -> None:
    # (no runner-up read back in the same try: above 1, no reading is sure enough for it)
    speaker = Speaker(
        JourneyConfig(speech=True, max_attempts=5, speech_min_runner_up_confidence=1.1)
    )
    speaker.start()
    speaker.done()
    assert heard_digits(speaker.say("4111", also=(("4117", -0.5),))) == "4111"
    speaker.done()
    assert plays(speaker.say("no")) == [("say_again",)]
    speaker.done()
    # the recogniser hears the same again: its runner-up is read back, not the denied one
    assert heard_digits(speaker.say("4111", also=(("4117", -0.5),))) == "4117"
    speaker.done()
    speaker.say("no")
    speaker.done()
    # nothing left but denied readings: not understood, asked again
    assert plays(speaker.say("4117", also=(("4111", -0.5),)))[0][0] == "not_understood"
    # taken digits move on: the next group may be heard as a denied reading was
    speaker.done()
    assert heard_digits(speaker.say("4171")) == "4171"
    speaker.done()
    speaker.say("yes")
    speaker.done()
    assert heard_digits(speaker.say("4111")) == "4111"


def heard_instead_digits(actions: list[Action]) -> str:
    """The digits of a runner-up read back after a "no" ("Sorry. Was it ...?")."""
    return heard_digits(actions, "heard_instead")


def test_after_a_no_the_runner_up_is_read_back_without_a_failed_attempt() -> None:
    # max_attempts 1: a failed attempt would end the payment
    speaker = Speaker(JourneyConfig(speech=True, max_attempts=1))
    speaker.start()
    speaker.done()
    assert heard_digits(speaker.say("4111", also=(("4117", -0.5),))) == "4111"
    speaker.done()
    assert heard_instead_digits(speaker.say("no")) == "4117"
    speaker.done()
    assert plays(speaker.say("yes")) == [("next_digits",)]
    speaker.keys("111111111115#")  # 4117 1111 1111 1115: the rest keyed
    assert speaker.journey.state is State.EXPIRY
    assert outcome_of(speaker.journey.hangup(speaker.now)).result is not Result.TOO_MANY_ATTEMPTS


def test_a_no_to_the_runner_up_is_one_failed_attempt_and_asks_again() -> None:
    speaker = Speaker(JourneyConfig(speech=True, max_attempts=2))
    speaker.start()
    speaker.done()
    speaker.say("4111", also=(("4117", -0.5), ("4171", -0.6)))
    speaker.done()
    assert heard_instead_digits(speaker.say("no")) == "4117"
    speaker.done()
    # no third reading of the same try: the caller says the digits again
    assert plays(speaker.say("no")) == [("say_again",)]
    speaker.done()
    # both denied readings stay out of the next try's pooled ones (4171 was third)
    assert heard_digits(speaker.say("4111", also=(("4117", -0.1), ("4171", -2.0)))) == "4171"
    speaker.done()
    # a "no" to the next try's read-back: its runner-up, if any, is read back again;
    # here every other reading is denied, so the second failed attempt ends the payment
    assert plays(speaker.say("no")) == [("too_many_attempts", "goodbye")]
    assert outcome_of(speaker.done()).result is Result.TOO_MANY_ATTEMPTS
    assert held(speaker.journey) == []


def test_a_runner_up_too_unsure_or_breaking_the_rules_is_not_read_back() -> None:
    speaker = Speaker(JourneyConfig(speech=True, max_attempts=5))
    speaker.start()
    speaker.done()
    # 4117 far behind (share < 0.1), 9117 no card's start: neither read back after a "no"
    speaker.say("4111", also=(("4117", -4.0), ("9117", -0.1)))
    speaker.done()
    assert plays(speaker.say("no")) == [("say_again",)]


def test_the_runner_up_is_read_back_on_a_repeat_and_replaced_by_new_digits() -> None:
    speaker = Speaker(JourneyConfig(speech=True, max_attempts=5))
    speaker.start()
    speaker.done()
    speaker.say("4111", also=(("4117", -0.5),))
    speaker.done()
    assert heard_instead_digits(speaker.say("no")) == "4117"
    speaker.done()
    assert heard_instead_digits(speaker.say("repeat")) == "4117"
    speaker.done()
    # the caller says the digits instead of answering: a new reading, read back as heard
    assert heard_digits(speaker.say("4171")) == "4171"
    speaker.done()
    # a "no": 4117, never denied (the caller spoke over it), is the tries' runner-up
    assert heard_instead_digits(speaker.say("no")) == "4117"
    speaker.done()
    assert plays(speaker.say("no")) == [("say_again",)]


def test_the_tries_at_the_same_digits_add_up() -> None:
    speaker = Speaker(JourneyConfig(speech=True, max_attempts=5))
    speaker.start()
    speaker.done()
    # first try: 4111 a little ahead of 4171; the caller says no
    assert heard_digits(speaker.say("4111", also=(("4171", -0.2),))) == "4111"
    speaker.done()
    speaker.say("no")
    speaker.done()
    # second try alone would say 4911, but 4171 was heard both times
    second = speaker.say("4911", also=(("4171", -0.1), ("4111", -3.0)))
    assert heard_digits(second) == "4171"
    denied = [d for d in held(speaker.journey) if d.matches("4111")]
    assert len(denied) == 1
    speaker.done()
    speaker.say("yes")
    assert len(denied[0]) == 0  # the group taken: the reading denied for it is wiped
    speaker.keys("111111111118#")  # the rest of 4171 1111 1111 1118 on the keypad
    assert speaker.journey.state is State.EXPIRY


@pytest.mark.parametrize("how", ["say", "key"])
def test_start_again_wipes_the_field_without_cancelling(how: str) -> None:
    speaker = Speaker()
    speaker.start()
    speaker.group("4111")
    speaker.group("1111")
    speaker.done()
    speaker.say("1111")  # a read-back is waiting
    actions = speaker.say("start again") if how == "say" else speaker.keys("*")
    assert plays(actions) == [("enter_card_speech",)]
    assert speaker.journey.state is State.CARD and held(speaker.journey) == []
    spoken_card(speaker)
    assert state_now(speaker.journey) is State.EXPIRY


def test_start_again_on_an_empty_field_asks_again() -> None:
    speaker = Speaker()
    speaker.start()
    speaker.done()
    assert plays(speaker.say("start again")) == [("enter_card_speech",)]
    assert speaker.journey.state is State.CARD


def test_repeat_plays_the_read_back_again() -> None:
    speaker = Speaker()
    speaker.start()
    speaker.done()
    speaker.say("4111")
    speaker.done()
    assert heard_digits(speaker.say("repeat")) == "4111"
    speaker.done()
    assert plays(speaker.say("yes")) == [("next_digits",)]


# ---- keys and speech together ------------------------------------------------------------------


def test_part_said_and_the_rest_keyed_is_mixed() -> None:
    speaker = Speaker()
    speaker.start()
    speaker.group("4111")
    speaker.group("1111")
    speaker.done()
    assert plays(speaker.keys("11111111#")) == [("enter_expiry_speech",)]
    speaker.keys(EXPIRY)
    speaker.keys(CVC)
    speaker.authorized()
    outcome = speaker.finish_result()
    assert outcome.inputs == (("card", "mixed"), ("expiry", "dtmf"), ("security_code", "dtmf"))


def test_keyed_start_said_end() -> None:
    speaker = Speaker()
    speaker.start()
    speaker.done()
    speaker.keys("41111111")
    speaker.say("1111")
    speaker.done()
    speaker.say("yes")
    speaker.group("1111")
    assert speaker.journey.state is State.EXPIRY
    speaker.done()
    speaker.keys("12")  # the month keyed, the year said
    heard = speaker.say("30")
    assert heard_digits(heard) == "30"
    speaker.done()
    assert plays(speaker.say("yes")) == [("enter_cvc_speech",)]
    speaker.keys(CVC)
    speaker.authorized()
    outcome = speaker.finish_result()
    assert outcome.inputs == (("card", "mixed"), ("expiry", "mixed"), ("security_code", "dtmf"))


def test_a_key_pressed_while_the_caller_spoke_wins() -> None:
    speaker = Speaker()
    speaker.start()
    speaker.done()
    speaker.keys("4")
    # an utterance that started before that key (it ends after it): keys win
    late = Utterance((Hypothesis(words("5555"), 0.0),), speaker.now - 0.5, speaker.now + 0.5)
    assert speaker.journey.speech(late, speaker.now + 1.0) == []
    speaker.keys("111111111111111#")
    assert speaker.journey.state is State.EXPIRY


def test_a_digit_key_during_a_read_back_drops_what_was_heard() -> None:
    speaker = Speaker()
    speaker.start()
    speaker.done()
    speaker.say("4111")
    actions = speaker.keys("4")
    assert actions == [StopPlayback()]
    speaker.keys("111111111111111#")
    assert speaker.journey.state is State.EXPIRY
    speaker.keys(EXPIRY)
    auth = authorize_of(speaker.keys(CVC))
    assert auth.card.pan.matches(VISA)


def test_speech_during_a_prompt_stops_it() -> None:
    speaker = Speaker()
    speaker.start()  # the announcement plays
    actions = speaker.say("4111")
    assert isinstance(actions[0], StopPlayback) and heard_digits(actions[1:]) == "4111"


def test_speech_outside_the_fields_is_ignored() -> None:
    speaker = Speaker()
    speaker.start()
    spoken_card(speaker)
    speaker.group(EXPIRY)
    speaker.group(CVC)
    assert speaker.journey.state is State.PROCESSING
    assert speaker.say("repeat") == []


# ---- confirmation by voice ----------------------------------------------------------------------


def test_confirmation_by_voice() -> None:
    speaker = Speaker(JourneyConfig(speech=True, confirm=True))
    speaker.start()
    spoken_card(speaker)
    speaker.group(EXPIRY)
    confirm = speaker.group(CVC)
    assert [p.name for p in only_play(confirm).parts] == ["confirm_speech"]
    speaker.done()
    assert plays(speaker.say("no")) == [("enter_card_speech",)]  # starts again
    spoken_card(speaker)
    speaker.group(EXPIRY)
    speaker.group(CVC)
    speaker.done()
    assert isinstance(speaker.say("yes")[-1], Authorize)


def test_confirmation_not_understood_asks_again() -> None:
    speaker = Speaker(JourneyConfig(speech=True, confirm=True))
    speaker.start()
    spoken_card(speaker)
    speaker.group(EXPIRY)
    speaker.group(CVC)
    speaker.done()
    assert plays(speaker.say("4")) == [("not_understood", "confirm_speech")]


# ---- not understood, timeouts ------------------------------------------------------------------


def test_unsure_reading_is_not_read_back_and_counts_as_an_attempt() -> None:
    speaker = Speaker(dataclasses.replace(SPEECH, speech_min_confidence=0.5))
    speaker.start()
    speaker.group("4111")
    speaker.done()
    # three readings about equally likely: not sure enough to read any back
    actions = speaker.say("1111", also=(("7777", 0.0), ("9999", 0.0)))
    assert plays(actions) == [("not_understood", "next_digits")]  # the first group stays
    speaker.group("1111")
    speaker.group("1111")
    assert plays(speaker.group("1111")) == [("enter_expiry_speech",)]


def test_any_reading_that_fits_the_rules_is_read_back_however_unsure() -> None:
    # not reading it back would cost the attempt a "no" costs, and a right one would be lost
    speaker = Speaker()
    speaker.start()
    speaker.group("4111")
    speaker.done()
    actions = speaker.say("1111", also=(("7777", 0.0), ("9999", 0.0)))
    assert heard_digits(actions) == "1111"  # the first of equals: the one said last
    speaker.done()
    speaker.say("no")
    speaker.done()
    # the same three again: the one denied is not read back again
    assert heard_digits(speaker.say("1111", also=(("7777", 0.0), ("9999", 0.0)))) == "7777"


def test_an_unsure_reading_that_breaks_the_rules_is_not_read_back() -> None:
    speaker = Speaker()
    speaker.start()
    spoken_card(speaker)
    speaker.done()
    # no month 13-15: read by the words alone, a third of the probability each
    actions = speaker.say("1399", also=(("1499", 0.0), ("1599", 0.0)))
    assert plays(actions) == [("not_understood", "enter_expiry_speech")]
    speaker.done()
    assert heard_digits(speaker.say("1399")) == "1399"  # sure of it: read back all the same


def test_words_that_are_no_digits_are_not_understood() -> None:
    speaker = Speaker()
    speaker.start()
    speaker.done()
    assert plays(speaker.say("yes")) == [("not_understood", "enter_card_speech")]


def test_wrong_length_for_the_expiry_is_not_understood() -> None:
    speaker = Speaker()
    speaker.start()
    spoken_card(speaker)
    speaker.done()
    assert plays(speaker.say("12345")) == [("not_understood", "enter_expiry_speech")]


def test_confirmed_but_invalid_expiry_gets_its_own_prompt() -> None:
    speaker = Speaker()
    speaker.start()
    spoken_card(speaker)
    speaker.done()
    speaker.say("0120")  # a date that has passed: read back all the same, the caller said it
    speaker.done()
    assert plays(speaker.say("yes")) == [("expiry_past", "enter_expiry_speech")]


def test_unanswered_read_back_times_out_and_is_asked_again() -> None:
    speaker = Speaker(JourneyConfig(speech=True, first_digit_timeout_s=10, max_attempts=2))
    speaker.start()
    speaker.group("4111")
    speaker.done()
    speaker.say("1111")
    speaker.done()
    actions = speaker.wait(10)
    assert plays(actions) == [("no_input", "heard")] and heard_digits(actions) == "1111"
    speaker.done()
    assert plays(speaker.say("yes")) == [("next_digits",)]
    speaker.done()
    # the next group's wait is the first-digit timeout; the second failure on the field ends it
    assert plays(speaker.wait(10)) == [("too_many_attempts", "goodbye")]


def test_no_group_after_next_digits_times_out_like_keys() -> None:
    speaker = Speaker(JourneyConfig(speech=True, first_digit_timeout_s=10))
    speaker.start()
    speaker.group("4111")
    speaker.done()
    assert plays(speaker.wait(10)) == [("no_input", "enter_card_speech")]
    assert held(speaker.journey) == []


def test_the_caller_talking_holds_the_timer() -> None:
    speaker = Speaker(JourneyConfig(speech=True, first_digit_timeout_s=10))
    speaker.start()
    speaker.done()
    due = speaker.journey.next_wake()
    assert due is not None
    speaker.journey.speaking(due)
    assert speaker.journey.timer(due) == []
    held_until = speaker.journey.next_wake()
    assert held_until is not None and held_until > due
    speaker.now = due + 0.5
    assert heard_digits(speaker.say("4111", gap=0.25)) == "4111"


def test_speaking_does_nothing_without_speech() -> None:
    caller = Caller()
    caller.start()
    caller.done()
    due = caller.journey.next_wake()
    assert due is not None
    caller.journey.speaking(due)
    assert caller.journey.next_wake() == due


# ---- card data ---------------------------------------------------------------------------------


def test_nothing_heard_is_kept_or_shown() -> None:
    speaker = Speaker()
    speaker.start()
    speaker.group("4111")
    speaker.done()
    speaker.say("1111")
    for action in speaker.actions:
        assert "4111" not in repr(action) and "1111" not in repr(action)
    speaker.hangup()
    assert held(speaker.journey) == []
    outcome = speaker.journey.outcome
    assert outcome is not None and outcome.result is Result.HUNG_UP and outcome.inputs == ()


def test_read_back_owns_its_copy() -> None:
    speaker = Speaker()
    speaker.start()
    speaker.done()
    play = only_play(speaker.say("4111"))
    digits = dict(play.parts[0].params)["digits"]
    assert isinstance(digits, SecretDigits)
    digits.wipe()  # the renderer may wipe what it was given
    speaker.done()
    speaker.say("yes")
    speaker.group("1111")
    speaker.group("1111")
    assert plays(speaker.group("1111")) == [("enter_expiry_speech",)]


def test_amex_said_in_its_own_groups() -> None:
    speaker = Speaker()
    speaker.start()
    for group in ("3782", "822463", "10005"):
        speaker.done()
        assert heard_digits(speaker.say(group)) == group
        speaker.done()
        actions = speaker.say("yes")
    assert plays(actions) == [("enter_expiry_speech",)]
    speaker.group(EXPIRY)
    assert dict(only_play(speaker.actions[-1:]).parts[0].params) == {"digits": 4}
    auth = authorize_of(speaker.group("8642"))
    assert auth.card.pan.matches(AMEX) and auth.card.brand == "amex"


def test_journey_is_sans_io_with_speech() -> None:
    journey = Journey(dataclasses.replace(SPEECH), None, None, TODAY)
    assert journey.speech(utterance((words("4111"), 0.0), at=1.0), 1.0) == []


# ---- what the recogniser is told to expect -----------------------------------------------------


def test_expected_digits_follow_the_groups_printed_on_the_card() -> None:
    speaker = Speaker()
    assert speaker.journey.expected_digits() is None  # before the journey
    speaker.start()
    seen = []
    for group in ("4111", "1111", "1111", "1111"):
        seen.append(speaker.journey.expected_digits())
        speaker.group(group)
    assert seen == [4, 4, 4, 4]
    assert speaker.journey.expected_digits() == 4  # the expiry
    speaker.group(EXPIRY)
    assert speaker.journey.expected_digits() == 3
    speaker.group(CVC)
    assert speaker.journey.expected_digits() is None  # processing


def test_expected_digits_for_amex_are_four_six_five() -> None:
    speaker = Speaker()
    speaker.start()
    seen = []
    for group in ("3782", "822463", "10005"):
        seen.append(speaker.journey.expected_digits())
        speaker.group(group)
    assert seen == [4, 6, 5]
    speaker.group(EXPIRY)
    assert speaker.journey.expected_digits() == 4  # the code on the front


def test_after_a_no_the_same_group_is_expected_again() -> None:
    speaker = Speaker()
    speaker.start()
    speaker.group("4111")
    speaker.done()
    speaker.say("1111")
    speaker.done()
    assert plays(speaker.say("no")) == [("say_again",)]
    assert speaker.journey.expected_digits() == 4  # the read-back showed the grouping
    speaker.done()
    assert heard_digits(speaker.say("1112", also=(("1111", 0.0),))) == "1112"


def test_after_a_group_went_wrong_any_grouping_is_heard() -> None:
    speaker = Speaker()
    speaker.start()
    speaker.done()
    assert plays(speaker.say("yes")) == [("not_understood", "enter_card_speech")]
    assert speaker.journey.expected_digits() is None
    speaker.done()
    speaker.say("41111111")  # the caller groups by eight
    speaker.done()
    speaker.say("yes")
    assert speaker.journey.expected_digits() == 4  # back to the card's groups


def test_keyed_digits_between_groups_leave_the_length_open() -> None:
    speaker = Speaker()
    speaker.start()
    speaker.done()
    speaker.keys("41")
    assert speaker.journey.expected_digits() is None
    speaker.keys("11")
    assert speaker.journey.expected_digits() == 4
    speaker.keys("111111111111#")
    speaker.keys("1")
    assert speaker.journey.expected_digits() == 3  # the rest of the expiry


def test_no_expected_digits_without_speech() -> None:
    caller = Caller()
    caller.start()
    assert caller.journey.expected_digits() is None


def test_after_a_try_not_understood_a_group_of_the_printed_length_is_still_preferred() -> None:
    """The grammar is left open after a try not understood; an inserted digit in the best
    guess does not win over the group of four the caller most likely said again."""
    speaker = Speaker()
    speaker.start()
    speaker.done()
    assert plays(speaker.say("repeat yes")) == [("not_understood", "enter_card_speech")]
    assert speaker.journey.expected_digits() is None
    speaker.done()
    assert heard_digits(speaker.say("41118", also=(("4111", -0.2),))) == "4111"
