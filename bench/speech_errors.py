"""Where voice entry's errors come from: a breakdown of `bench_speech_accuracy.py --records`.

Run:  .venv/bin/python bench/bench_speech_accuracy.py --payments 16 --jobs 1 \\
          --conditions clean --records /tmp/clean.jsonl
      .venv/bin/python bench/speech_errors.py /tmp/clean.jsonl [--decoder whisper]

First tries only for the recognition figures (the bench's "digit error, 1st try"): digit
errors by espeak-ng voice, variant, speaking rate, field and digit position; the edit types
(substitution, deletion, insertion) and the commonest substitutions (said -> heard). Then the
read-back dialogue over all tries: what each try came to, and why each unpaid payment failed
(its first field not confirmed right, and what happened to it).

The records hold the simulated callers' synthetic digits; nothing here sees real card data.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from typing import Any


def alignment(truth: str, heard: str) -> list[tuple[str, str | None, str | None]]:
    """One minimal edit script from `truth` to `heard`: ("ok"|"sub"|"del"|"ins", said,
    heard) per step (a deletion has no heard digit, an insertion no said one)."""
    rows, cols = len(truth) + 1, len(heard) + 1
    cost = [[0] * cols for _ in range(rows)]
    for i in range(rows):
        cost[i][0] = i
    for j in range(cols):
        cost[0][j] = j
    for i in range(1, rows):
        for j in range(1, cols):
            cost[i][j] = min(
                cost[i - 1][j] + 1,
                cost[i][j - 1] + 1,
                cost[i - 1][j - 1] + (truth[i - 1] != heard[j - 1]),
            )
    steps: list[tuple[str, str | None, str | None]] = []
    i, j = len(truth), len(heard)
    while i or j:
        if i and j and cost[i][j] == cost[i - 1][j - 1] + (truth[i - 1] != heard[j - 1]):
            kind = "ok" if truth[i - 1] == heard[j - 1] else "sub"
            steps.append((kind, truth[i - 1], heard[j - 1]))
            i, j = i - 1, j - 1
        elif i and cost[i][j] == cost[i - 1][j] + 1:
            steps.append(("del", truth[i - 1], None))
            i -= 1
        else:
            steps.append(("ins", None, heard[j - 1]))
            j -= 1
    return steps[::-1]


def speed_band(speed: int) -> str:
    low = 130 + (speed - 130) // 20 * 20
    return f"{low}-{min(low + 19, 190)} wpm"


def variant_of(voice: str) -> str:
    return "+" + voice.split("+")[1] if "+" in voice else "(none)"


def table(title: str, rows: Iterable[tuple[str, int, int, int, int]]) -> None:
    print(f"\n{title}")
    print("| group | fields | right 1st try | digits | digit errors |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, fields, right, digits, errors in rows:
        print(
            f"| {name} | {fields} | {right / max(fields, 1):.0%} | {digits} | "
            f"{errors / max(digits, 1):.1%} |"
        )


def first_try_breakdown(records: list[dict[str, Any]]) -> None:
    keys: dict[str, Callable[[dict[str, Any]], str]] = {
        "voice": lambda r: r["voice"].split("+")[0],
        "variant": lambda r: variant_of(r["voice"]),
        "speaking rate (first try)": lambda r: speed_band(r["tries"][0]["speed"]),
        "field": lambda r: r["field"] if r["field"] != "card-group" else f"group {r['position']}",
    }
    for title, key in keys.items():
        groups: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        for record in records:
            heard = record["tries"][0]["heard"]
            errors = sum(kind != "ok" for kind, _, _ in alignment(record["truth"], heard))
            g = groups[key(record)]
            g[0] += 1
            g[1] += heard == record["truth"]
            g[2] += len(record["truth"])
            g[3] += errors
        table(f"by {title}", ((name, g[0], g[1], g[2], g[3]) for name, g in sorted(groups.items())))

    kinds: Counter[str] = Counter()
    pairs: Counter[tuple[str | None, str | None]] = Counter()
    by_position: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for record in records:
        truth, heard = record["truth"], record["tries"][0]["heard"]
        steps = alignment(truth, heard)
        said_at = 0
        for kind, said, got in steps:
            kinds[kind] += 1
            if kind != "ok":
                pairs[(said, got)] += 1
            if said is not None:
                place = (
                    "first" if said_at == 0 else "last" if said_at == len(truth) - 1 else "middle"
                )
                by_position[place][0] += 1
                by_position[place][1] += kind != "ok"
                said_at += 1
        if not heard:
            kinds["(nothing read)"] += 1
    total = sum(n for kind, n in kinds.items() if kind in ("ok", "sub", "del"))
    print("\nedit types, first tries (of the digits said)")
    for kind in ("sub", "del", "ins"):
        print(f"- {kind}: {kinds[kind]} ({kinds[kind] / max(total, 1):.1%})")
    print(f"- fields with no reading at all: {kinds['(nothing read)']}")
    print("\ndigit errors by place in the utterance (said digits)")
    for place in ("first", "middle", "last"):
        said_count, wrong = by_position[place]
        print(f"- {place}: {wrong}/{said_count} ({wrong / max(said_count, 1):.1%})")
    print("\ncommonest edits (said -> heard; - for none)")
    for (said, got), count in pairs.most_common(15):
        print(f"- {said or '-'} -> {got or '-'}: {count}")


def dialogue_breakdown(records: list[dict[str, Any]]) -> None:
    outcomes: Counter[str] = Counter()
    for record in records:
        for attempt in record["tries"]:
            right = attempt["heard"] == record["truth"]
            if not attempt["read_back"]:
                outcomes["not read back, reading right" if right else "not read back, wrong"] += 1
                continue
            said = "yes" if right else "no"
            answer = attempt.get("answer")
            if answer == said:
                outcomes[f"read back {'right' if right else 'wrong'}, '{said}' understood"] += 1
            else:
                outcomes[f"read back {'right' if right else 'wrong'}, '{said}' heard {answer}"] += 1
    print("\ntries (all attempts)")
    for name, count in sorted(outcomes.items()):
        print(f"- {name}: {count}")

    fields: Counter[str] = Counter()
    for record in records:
        confirmed = record["confirmed"]
        if confirmed == record["truth"]:
            fields["confirmed right"] += 1
        elif confirmed is not None:
            fields["confirmed wrong ('no' heard as 'yes')"] += 1
        else:
            fields["attempts used up"] += 1
    print("\nfields")
    for name, count in sorted(fields.items()):
        print(f"- {name}: {count}")
    # payments: consecutive records of one decoder and payment (6 or 5 fields)
    grouped: list[list[dict[str, Any]]] = []
    for record in records:
        if record["position"] == 0:
            grouped.append([])
        grouped[-1].append(record)
    reasons: Counter[str] = Counter()
    fields_failed: Counter[int] = Counter()
    for payment in grouped:
        bad = [r for r in payment if r["confirmed"] != r["truth"]]
        fields_failed[len(bad)] += 1
        if not bad:
            reasons["paid"] += 1
            continue
        r = bad[0]
        if r["confirmed"] is not None:
            reasons["a wrong reading confirmed"] += 1
        elif not any(t["read_back"] for t in r["tries"]):
            reasons["attempts used up, nothing read back"] += 1
        elif any(t["heard"] == r["truth"] and t["read_back"] for t in r["tries"]):
            reasons["attempts used up, the right reading read back but 'yes' not heard"] += 1
        else:
            reasons["attempts used up, only wrong readings read back"] += 1
    print(f"\npayments ({len(grouped)}): first failed field's fate")
    for name, count in sorted(reasons.items()):
        print(f"- {name}: {count}")
    print(
        "fields failed per payment: "
        + ", ".join(f"{k}: {v}" for k, v in sorted(fields_failed.items()))
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("records")
    parser.add_argument("--decoder", default="whisper")
    parser.add_argument("--condition")
    args = parser.parse_args()
    with open(args.records) as source:
        records = [json.loads(line) for line in source]
    records = [
        r
        for r in records
        if r["decoder"] == args.decoder and args.condition in (None, r["condition"])
    ]
    if not records:
        print("no records for that decoder/condition", file=sys.stderr)
        return 1
    print(
        f"# {args.decoder}, {len({r['condition'] for r in records})} condition(s), "
        f"{len(records)} fields"
    )
    first_try_breakdown(records)
    dialogue_breakdown(records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
