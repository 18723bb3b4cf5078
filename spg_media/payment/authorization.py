"""One authorisation as the node sends it: journal line, random idempotency key, bounded wait.

This module owns the sequence every authorisation follows, whatever asked for it (the IVR
call's journey in `call.py`, an agent-assisted payment session):

1. a fresh random idempotency key (never a Call-ID or anything a peer chose);
2. the journal's open line, made durable before anything is sent (no line, no request:
   the result is `error`, not charged);
3. the connector's `authorize` (which reconciles by itself when the answer is uncertain),
   within `bound_s`; a timeout or a connector bug is `error` with the charge unknown;
4. the card wiped, whatever happened;
5. the journal's close line when the charge state is known (an unknown one stays open for
   `spg-media reconcile`).
"""

from __future__ import annotations

import asyncio
import logging

from spg_media.config import Config
from spg_media.payment.connectors import Connector
from spg_media.payment.journal import (
    JournalEntry,
    PaymentJournal,
    new_idempotency_key,
    utc_now_iso,
)
from spg_media.payment.model import (
    AuthorizationResult,
    CardData,
    ChargeState,
    Result,
    TransactionInfo,
)

log = logging.getLogger("spg.authorization")

AUTHORIZATION_GRACE_S = 5.0  # beyond the connector's timeout and reconciliation window


def authorization_bound_s(config: Config) -> float:
    """The longest an authorisation may take, reconciliation included, before the call or the
    assisted payment gives up on the connector (and a draining node waits for it)."""
    gateway = config.gateway
    return gateway.timeout_s + gateway.reconcile_s + AUTHORIZATION_GRACE_S


async def authorize_journaled(
    connector: Connector,
    journal: PaymentJournal | None,
    transaction: TransactionInfo,
    card: CardData,
    attempt: int,
    call_id: str,
    bound_s: float,
) -> AuthorizationResult:
    """Authorise `card` for `transaction` as the module docstring says; `card` is wiped."""
    key = new_idempotency_key()
    journaled = False
    try:
        if journal is not None:
            entry = JournalEntry(
                key, transaction.token, call_id, attempt, transaction.amount_minor,
                transaction.currency, utc_now_iso(),
            )  # fmt: skip
            await asyncio.to_thread(journal.begin, entry)
            journaled = True
        result = await _bounded(connector, transaction, card, attempt, key, call_id, bound_s)
    except OSError as exc:  # the journal line could not be written: nothing is sent
        log.error(
            "payment journal not writable (%s): authorisation not sent",
            exc.strerror or type(exc).__name__,
            extra={"call_id": call_id},
        )
        result = AuthorizationResult(Result.ERROR, detail="payment journal not writable")
    finally:
        card.wipe()
    if journaled and journal is not None and result.charge_state is not ChargeState.UNKNOWN:
        try:
            await asyncio.to_thread(
                journal.settle, key, transaction.token, str(result.result), result.reference,
                result.charge_state,
            )  # fmt: skip
        except OSError as exc:  # the entry stays open: reconcile settles it later
            log.error(
                "payment journal: closing line not written (%s)",
                exc.strerror or type(exc).__name__,
                extra={"call_id": call_id},
            )
    return result


async def _bounded(
    connector: Connector,
    transaction: TransactionInfo,
    card: CardData,
    attempt: int,
    key: str,
    call_id: str,
    bound_s: float,
) -> AuthorizationResult:
    """The connector's answer (reconciled by it when uncertain), within `bound_s`."""
    try:
        async with asyncio.timeout(bound_s):
            return await connector.authorize(transaction, card, attempt, key)
    except TimeoutError:
        detail = "authorisation timed out"
    except Exception as exc:  # a connector bug must still end in a result
        log.error("connector failed: %s", type(exc).__name__, extra={"call_id": call_id})
        detail = "connector failure"
    # Whether the request reached the platform is not known: neither is the charge.
    return AuthorizationResult(Result.ERROR, detail=detail, charge_unknown=True)
