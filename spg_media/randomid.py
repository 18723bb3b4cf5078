"""Random identifiers the node makes up (idempotency keys, payment and call ids, SIP tags) that
can never read as a card number.

The node's card-number guard (`cdr.mask_card_like`) rewrites any Luhn-valid run of 12–19 decimal
digits in a call record or journal line to its last four. A random hex string holds such a run
now and then (about one idempotency key in a hundred): masked, the journal's key would no
longer be the one the platform saw, and reconciliation would look for the wrong payment. So an
identifier with a run of 12 or more decimal digits is drawn again.
"""

from __future__ import annotations

import re
import secrets

DIGIT_RUN = re.compile(r"[0-9]{12}")  # the shortest run the guard could take for a card


def random_hex(nbytes: int) -> str:
    """`nbytes` random bytes as hex (2 × `nbytes` digits) without 12 decimal digits in a row."""
    while True:
        value = secrets.token_hex(nbytes)
        if not DIGIT_RUN.search(value):
            return value
