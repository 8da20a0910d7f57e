// The dashboard's only script: select dead letters, ask the API for a dry-run count, confirm,
// then replay or purge; pause and resume a handler; run an event's retries now; and log out.
// Every call sends the page's CSRF token.
"use strict";

const csrfToken = document.querySelector('meta[name="csrf-token"]').content;

async function callApi(path, body) {
  const response = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  const answer = text ? JSON.parse(text) : {};
  if (!response.ok) {
    throw new Error(answer.detail || answer.error || response.statusText);
  }
  return answer;
}

function element(tag, attributes, text) {
  const node = document.createElement(tag);
  Object.assign(node, attributes || {});
  if (text !== undefined) node.textContent = text;
  return node;
}

function selectionOf(container) {
  if (container.dataset.ids) return { ids: JSON.parse(container.dataset.ids) };
  const matching = container.querySelector("[data-select-matching]");
  if (matching && matching.checked) return { filter: JSON.parse(container.dataset.filter) };
  const ids = [...container.querySelectorAll('input[name="id"]:checked')].map((box) => box.value);
  return ids.length ? { ids } : null;
}

function show(panel, ...nodes) {
  panel.replaceChildren(...nodes);
  panel.hidden = false;
}

function plural(count, word) {
  return `${count} ${word}${count === 1 ? "" : "s"}`;
}

function outcomeOf(action, answer, container) {
  const parts = [];
  if (action === "replay") {
    parts.push(
      element("span", {}, `Replayed ${answer.replayed}, skipped ${answer.skipped}, ` +
        `already gone ${answer.gone}.` +
        (answer.erased ? ` Refused ${answer.erased}: personal data erased.` : "")),
    );
    const eventId = container.dataset.eventId;
    if (eventId && answer.replayed) {
      parts.push(" ", element("a", { href: `/events/${encodeURIComponent(eventId)}` }, "Open the event"));
    }
  } else {
    parts.push(element("span", {}, `Purged ${plural(answer.purged, "dead letter")}.`));
  }
  if (!container.dataset.ids) {
    parts.push(" ", element("a", { href: window.location.href }, "Reload the list"));
  }
  return parts;
}

async function act(container, action) {
  const panel = container.querySelector("[data-confirm]");
  const selection = selectionOf(container);
  if (!selection) {
    show(panel, element("span", { className: "error" }, "Select dead letters first."));
    return;
  }
  const path = `/api/dead-letters/${action}`;
  try {
    const { matched } = await callApi(path, { ...selection, dry_run: true });
    if (!matched) {
      show(panel, element("span", {}, "Nothing matches: nothing to do."));
      return;
    }
    const question = action === "replay"
      ? `${plural(matched, "dead letter")} will be replayed (dry run: nothing changed yet).`
      : `${plural(matched, "dead letter")} will be deleted for good.`;
    const confirm = element("button", {
      type: "button",
      className: action === "replay" ? "primary" : "danger",
    }, action === "replay" ? "Confirm replay" : "Confirm purge");
    confirm.dataset.confirmAction = action;
    const cancel = element("button", { type: "button" }, "Cancel");
    cancel.addEventListener("click", () => { panel.hidden = true; });
    confirm.addEventListener("click", async () => {
      confirm.disabled = true;
      try {
        const answer = await callApi(path, { ...selection, dry_run: false });
        show(panel, ...outcomeOf(action, answer, container));
      } catch (error) {
        show(panel, element("span", { className: "error" }, error.message));
      }
    });
    show(panel, element("span", {}, question), " ", confirm, " ", cancel);
  } catch (error) {
    show(panel, element("span", { className: "error" }, error.message));
  }
}

async function controlHandler(row, action) {
  const outcome = row.querySelector("[data-outcome]");
  const name = row.dataset.handler;
  const reasonBox = row.querySelector("[data-reason]");
  const body = action === "pause" ? { reason: (reasonBox && reasonBox.value.trim()) || null } : undefined;
  try {
    const answer = await callApi(`/api/handlers/${encodeURIComponent(name)}/${action}`, body);
    const said = action === "pause"
      ? (answer.already_paused ? "Was already paused." : "Paused.")
      : `Resumed: ${plural(answer.queued, "waiting event")} queued.`;
    outcome.replaceChildren(said, " ", element("a", { href: window.location.href }, "Reload"));
  } catch (error) {
    outcome.replaceChildren(element("span", { className: "error" }, error.message));
  }
}

async function retryNow(container) {
  const outcome = container.querySelector("[data-outcome]");
  const eventId = container.dataset.eventId;
  try {
    const answer = await callApi(`/api/events/${encodeURIComponent(eventId)}/retry-now`);
    outcome.replaceChildren(`${answer.retries === 1 ? "1 retry" : `${answer.retries} retries`} due now.`);
  } catch (error) {
    outcome.replaceChildren(element("span", { className: "error" }, error.message));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const row of document.querySelectorAll("[data-handler]")) {
    for (const button of row.querySelectorAll("[data-handler-action]")) {
      button.addEventListener("click", () => controlHandler(row, button.dataset.handlerAction));
    }
  }
  for (const container of document.querySelectorAll("[data-retry-now]")) {
    const button = container.querySelector("[data-retry-now-button]");
    button.addEventListener("click", () => retryNow(container));
  }
  for (const container of document.querySelectorAll("[data-selection]")) {
    for (const button of container.querySelectorAll("[data-action]")) {
      button.addEventListener("click", () => act(container, button.dataset.action));
    }
    const pageBox = container.querySelector("[data-select-page]");
    if (pageBox) {
      pageBox.addEventListener("change", () => {
        for (const box of container.querySelectorAll('input[name="id"]')) box.checked = pageBox.checked;
      });
    }
  }
  const logout = document.querySelector("[data-logout]");
  if (logout) {
    logout.addEventListener("click", async () => {
      await callApi("/logout");
      window.location.assign("/login");
    });
  }
});
