// The agent page of spg-media's assisted mode: plain JavaScript, no build step.
// It shows only what the API answers: a card appears as brand and last four at most, and each
// key the customer presses as one mark. The API token lives in sessionStorage (this tab only)
// and goes in the Authorization header of every request, the event stream included: the stream
// is read with fetch(), because EventSource cannot send that header.
"use strict";

const TOKEN_KEY = "spg-assist-token";
const FIELD_LABELS = {
  "payment-card-number": "card number",
  "expiration-date": "expiry",
  "security-code": "security code",
};
const ERROR_TEXT = {
  "timeout": "no entry in time",
  "invalid-card-number": "card number not valid",
  "invalid-card-type": "card brand not accepted",
  "invalid-date": "expiry not valid",
  "invalid-security-code": "security code not valid",
};
const CALLS_POLL_MS = 2000;

const $ = (id) => document.getElementById(id);
let selectedCall = null;
let payment = null;          // {payment_id, amount_minor, currency}
let pendingKey = null;       // idempotency key of a start not yet answered (reused on retry)
let streamAbort = null;
let keyedMarks = {};         // field -> the marks its last capture reached (kept once captured)

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

function notice(text) { $("notice").textContent = text; }

async function api(method, path, body) {
  const init = { method, headers: { "Authorization": "Bearer " + token() } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (response.status === 401) notice("The API refused the token.");
  return { status: response.status, data };
}

function describeError(data) {
  if (!data) return "no answer";
  let text = data.error + (data.detail ? ": " + data.detail : "");
  if (data.required) text += " (missing: " + data.required.map((f) => FIELD_LABELS[f] || f).join(", ") + ")";
  return text;
}

// ---- calls ----------------------------------------------------------------------------------

async function refreshCalls() {
  if (!token()) return;
  let answer;
  try { answer = await api("GET", "/v1/calls"); } catch (e) { notice("API unreachable"); return; }
  if (answer.status !== 200) return;
  notice("");
  const body = $("calls").tBodies[0];
  body.replaceChildren();
  for (const call of answer.data) {
    const row = body.insertRow();
    row.dataset.callId = call.call_id;
    for (const value of [call.call_id, call.from, call.to, call.started_at, call.payment_id || ""]) {
      row.insertCell().textContent = value;
    }
    const button = document.createElement("button");
    button.type = "button";
    button.className = "select-call";
    button.textContent = call.call_id === selectedCall ? "Selected" : "Take payment";
    button.addEventListener("click", () => selectCall(call));
    row.insertCell().appendChild(button);
  }
  $("calls-empty").hidden = answer.data.length > 0;
}

function selectCall(call) {
  selectedCall = call.call_id;
  $("selected-call").textContent = call.call_id;
  if (call.transaction && !$("transaction").value) $("transaction").value = call.transaction;
  $("start-section").hidden = false;
  refreshCalls();
}

// ---- a payment ------------------------------------------------------------------------------

async function startPayment(event) {
  event.preventDefault();
  if (!selectedCall) return;
  if (!pendingKey) pendingKey = crypto.randomUUID();
  const transaction = $("transaction").value.trim();
  let answer;
  try {
    answer = await api("POST", "/v1/calls/" + encodeURIComponent(selectedCall) + "/payments",
                       { transaction, idempotency_key: pendingKey });
  } catch (e) { $("error").textContent = "API unreachable: try again"; return; }
  if (answer.status !== 201) {
    pendingKey = null;
    showPaymentSection(false);
    $("start-error").textContent = describeError(answer.data);
    return;
  }
  pendingKey = null;
  $("start-error").textContent = "";
  payment = answer.data;
  keyedMarks = {};
  showPaymentSection(true);
  $("payment-id").textContent = payment.payment_id;
  $("amount").textContent = (payment.amount_minor / 100).toFixed(2) + " " + payment.currency;
  $("result").textContent = "";
  render(answer.data);
  followEvents(payment.payment_id);
}

function showPaymentSection(shown) { $("payment-section").hidden = !shown; }

async function followEvents(paymentId) {
  if (streamAbort) streamAbort.abort();
  const abort = new AbortController();
  streamAbort = abort;
  while (!abort.signal.aborted) {
    let finished = false;
    try {
      const response = await fetch("/v1/payments/" + encodeURIComponent(paymentId) + "/events", {
        headers: { "Authorization": "Bearer " + token(), "Accept": "text/event-stream" },
        signal: abort.signal,
      });
      if (!response.ok) { $("error").textContent = "event stream refused (" + response.status + ")"; return; }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = frame.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5)).join("\n");
          if (!data) continue;  // a keep-alive comment
          const state = JSON.parse(data);
          render(state);
          finished = state.status === "complete" || state.status === "cancelled";
        }
      }
    } catch (e) {
      if (abort.signal.aborted) return;
    }
    if (finished || paymentId !== (payment && payment.payment_id)) return;
    await new Promise((resolve) => setTimeout(resolve, 1000));  // reconnect after a cut
  }
}

function render(state) {
  if (!payment || state.payment_id !== payment.payment_id) return;
  const required = state.required || [];
  const active = state.status === "active";
  for (const row of $("fields").tBodies[0].rows) {
    const field = row.dataset.field;
    const marks = row.querySelector(".marks");
    const status = row.querySelector(".field-status");
    row.querySelector(".capture").disabled = !active;
    if (state.capture === field) {
      keyedMarks[field] = state.digits_entered || 0;
      marks.textContent = "\u25CF".repeat(keyedMarks[field]);
      status.textContent = "keying\u2026";
      row.className = "keying";
    } else if (!required.includes(field) && (active || state.status === "processing" || state.result === "approved" || state.result === "declined")) {
      // a captured field keeps one mark per key it took (a fixed-length field's last key too)
      marks.textContent = "\u25CF".repeat(keyedMarks[field] || 0);
      status.textContent = "\u2713 captured";
      row.className = "captured";
    } else {
      marks.textContent = "";
      status.textContent = active ? "needed" : "";
      row.className = "";
    }
  }
  $("card").textContent = state.card_brand ? state.card_brand + " \u2022\u2022\u2022\u2022 " + state.last4 : "";
  $("error").textContent = state.error_type ? (ERROR_TEXT[state.error_type] || state.error_type) : "";
  $("complete").disabled = !active || required.length > 0 || !!state.capture;
  $("cancel").disabled = !active;
  $("status").textContent = "Status: " + state.status;
  if (state.result) {
    $("result").textContent = "Result: " + state.result + (state.reference ? " \u2014 reference " + state.reference : "");
  }
}

async function capture(field) {
  if (!payment) return;
  const answer = await api("POST", "/v1/payments/" + encodeURIComponent(payment.payment_id),
                           { capture: field, prompt: $("prompt").checked });
  // The state is drawn from the event stream only, which is in order: an answer to a POST
  // can arrive after a newer state from the stream.
  if (answer.status !== 200) $("error").textContent = describeError(answer.data);
}

async function setStatus(status) {
  if (!payment) return;
  const answer = await api("POST", "/v1/payments/" + encodeURIComponent(payment.payment_id), { status });
  if (answer.status !== 200) $("error").textContent = describeError(answer.data);
}

// ---- wiring ---------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  const startError = document.createElement("p");
  startError.id = "start-error";
  startError.setAttribute("role", "alert");
  $("start-form").after(startError);
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    notice(token() ? "Token set for this tab." : "");
    refreshCalls();
  });
  $("token-forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    notice("Token forgotten.");
  });
  $("start-form").addEventListener("submit", startPayment);
  for (const button of document.querySelectorAll("button.capture")) {
    button.addEventListener("click", () => capture(button.dataset.field));
  }
  $("complete").addEventListener("click", () => setStatus("complete"));
  $("cancel").addEventListener("click", () => setStatus("cancel"));
  if (token()) notice("Token set for this tab.");
  refreshCalls();
  setInterval(refreshCalls, CALLS_POLL_MS);
});
