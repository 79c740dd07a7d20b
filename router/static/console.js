// Ficus console: plain JavaScript, no build step. Every value from the API is put in the page
// as text (textContent), never as HTML. API calls carry the session's CSRF token in a header:
// the API takes the session cookie only with it (router/api.py guard).
"use strict";
(function () {
  const csrfMeta = document.querySelector('meta[name="ficus-csrf"]');
  const CSRF = csrfMeta ? csrfMeta.content : "";

  // htmx's own requests (the gate's verdict, fragments) carry the token too.
  document.body.addEventListener("htmx:configRequest", function (ev) {
    if (CSRF) ev.detail.headers["X-Ficus-CSRF"] = CSRF;
  });

  async function api(method, path, body) {
    const headers = { "Accept": "application/json" };
    if (CSRF) headers["X-Ficus-CSRF"] = CSRF;
    const init = { method: method, headers: headers, credentials: "same-origin" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path, init);
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    return { status: resp.status, ok: resp.ok, data: data };
  }

  function problem(res) {
    if (res.status === 401) return "signed out or the session expired: reload the page to sign in";
    if (res.data && res.data.error) return res.status + ": " + res.data.error;
    return "error " + res.status;
  }

  function el(tag, text, attrs) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (attrs) for (const k of Object.keys(attrs)) node.setAttribute(k, attrs[k]);
    return node;
  }

  function row(cells) {
    const tr = el("tr");
    for (const c of cells) {
      if (c instanceof Node) { const td = el("td"); td.appendChild(c); tr.appendChild(td); }
      else tr.appendChild(el("td", c === undefined || c === null ? "" : c));
    }
    return tr;
  }

  function say(id, text) { const n = document.getElementById(id); if (n) n.textContent = text; }

  function formQuery(form, keys) {
    const q = new URLSearchParams();
    for (const k of keys) {
      const f = form.elements.namedItem(k);
      if (f && f.value.trim()) q.set(k, f.value.trim());
    }
    return q;
  }

  // -- overview: live figures over SSE ---------------------------------------------------------
  function overview() {
    if (!window.EventSource) return;
    const source = new EventSource("/console/stream");
    source.addEventListener("figures", function (ev) {
      const snap = JSON.parse(ev.data);
      const ready = document.querySelector('[data-live="ready"]');
      if (ready) ready.textContent = snap.ready;
      const clock = document.querySelector('[data-live="clock"]');
      if (clock) clock.textContent = "updated " + snap.at;
      for (const name of Object.keys(snap.interfaces)) {
        const cells = snap.interfaces[name];
        for (const field of Object.keys(cells)) {
          const td = document.querySelector('td[data-iface="' + CSS.escape(name) + '"][data-field="' + field + '"]');
          if (!td) continue;
          td.textContent = cells[field];
          if (field === "route") td.className = cells[field].split(" ")[0];
        }
      }
      for (const name of Object.keys(snap.sinks)) {
        const cells = snap.sinks[name];
        for (const field of Object.keys(cells)) {
          const td = document.querySelector('td[data-sink="' + CSS.escape(name) + '"][data-field="' + field + '"]');
          if (td) td.textContent = cells[field];
        }
      }
      if ("alerts" in snap) renderAlerts(snap.alerts);
      if ("instances" in snap) renderInstances(snap.instances);
    });
    source.onerror = function () {
      const clock = document.querySelector('[data-live="clock"]');
      if (clock) clock.textContent = "live updates interrupted; retrying";
    };
  }

  // The instance registry's rows, as the server renders them (router/console/pages.py instance_cells).
  const INSTANCE_COLUMNS = ["health", "draining", "host", "version", "api", "leases", "seen", "problems"];
  function renderInstances(instances) {
    const body = document.querySelector("#instances tbody");
    if (!body) return;
    body.replaceChildren();
    if (!instances || instances.length === 0) {
      const td = el("td", instances ? "no instance registered"
        : "the instances cannot be read while NATS is unavailable", { "colspan": String(INSTANCE_COLUMNS.length + 1) });
      const tr = el("tr"); tr.appendChild(td); body.appendChild(tr);
      return;
    }
    for (const i of instances) {
      const tr = el("tr");
      tr.appendChild(el("th", i.instance, { "scope": "row" }));
      for (const col of INSTANCE_COLUMNS) {
        const attrs = { "data-field": col };
        if (col === "health") attrs["class"] = i.health.replace(" ", "-");
        tr.appendChild(el("td", i[col], attrs));
      }
      body.appendChild(tr);
    }
  }

  let alertsShown = null;
  function renderAlerts(alerts) {
    const key = JSON.stringify(alerts);
    if (key === alertsShown) return;
    alertsShown = key;
    const list = document.getElementById("alerts");
    if (!list) return;
    list.replaceChildren();
    if (!alerts || alerts.length === 0) { list.appendChild(el("li", "no alerts", { "class": "note" })); return; }
    for (const a of alerts) {
      const li = el("li", null, { "class": a.state });
      li.appendChild(el("strong", a.state));
      li.appendChild(document.createTextNode(" " + a.rule + ": " + a.summary + " · " + a.process +
        " · facilities " + (a.facilities || "-") + " · money at risk " + (a.money || "-") +
        " · since " + (a.since || "-")));
      list.appendChild(li);
    }
  }

  // -- interface page: the flip, confirmed after the gate's verdict ---------------------------
  function interfacePage() {
    const form = document.getElementById("flip-form");
    if (!form) return;
    const verdict = document.getElementById("verdict");
    // A new verdict: what was said of the previous one no longer applies.
    verdict.addEventListener("htmx:afterSwap", function () { say("flip-result", ""); });
    // A changed choice invalidates the verdict shown: check again before confirming.
    form.addEventListener("input", function (ev) {
      if (ev.target.name === "reason") return;
      verdict.replaceChildren();
      say("flip-result", "");
    });
    document.addEventListener("click", async function (ev) {
      const button = ev.target.closest("#flip-confirm");
      if (!button) return;
      const reason = form.elements.namedItem("reason").value.trim();
      if (!reason) {
        say("flip-result", "A reason is required.");
        form.elements.namedItem("reason").focus();
        return;
      }
      const body = { mode: button.dataset.mode, reason: reason };
      if (button.dataset.facility) body.facility = button.dataset.facility;
      button.disabled = true;
      const res = await api("PUT", "/api/v1/routes/" + encodeURIComponent(form.dataset.iface), body);
      if (res.ok) {
        const what = body.facility ? "Facility " + body.facility + " switched to " + body.mode
          : "Switched to " + res.data.route.mode;
        say("flip-result", what + " (revision " + (res.data.route.revision || "") +
          "). Recorded in the route history and the audit trail.");
        const route = document.querySelector('[data-live="route"]');
        if (route) route.textContent = res.data.route.mode;
        verdict.replaceChildren();
        form.elements.namedItem("reason").value = "";
        if (window.htmx) window.htmx.ajax("GET", "/console/interfaces/" + encodeURIComponent(form.dataset.iface) +
          "/history", { target: "#history", swap: "innerHTML" });
      } else {
        say("flip-result", "Refused: " + problem(res));
        button.disabled = false;
      }
    });
  }

  // -- dead letters -------------------------------------------------------------------------------
  function deadLetters() {
    const filter = document.getElementById("dlq-filter");
    const act = document.getElementById("dlq-act");
    const detail = document.getElementById("dlq-detail");
    async function load() {
      const q = formQuery(filter, ["interface"]);
      q.set("limit", "200");
      say("dlq-status", "Loading…");
      const res = await api("GET", "/api/v1/dlq?" + q.toString());
      const body = document.querySelector("#dlq-list tbody");
      body.replaceChildren();
      if (!res.ok) { say("dlq-status", problem(res)); return; }
      const onlyOpen = filter.elements.namedItem("state").value === "open";
      let shown = 0;
      for (const x of res.data.dead_letters.slice().reverse()) {
        const state = x.replayed ? "replayed" : x.discarded ? "discarded" : "open";
        if (onlyOpen && state !== "open") continue;
        const pick = el("button", String(x.id), { "type": "button", "data-pick": String(x.id),
          "aria-label": "Choose dead letter " + x.id });
        body.appendChild(row([pick, x.at, x.interface, x.facility, x.reason, x.amount, state]));
        shown += 1;
      }
      say("dlq-status", shown + " dead letter(s) shown");
    }
    if (filter) {
      filter.addEventListener("submit", function (ev) { ev.preventDefault(); load(); });
      load();
      document.getElementById("dlq-list").addEventListener("click", function (ev) {
        const b = ev.target.closest("[data-pick]");
        if (!b) return;
        act.elements.namedItem("id").value = b.dataset.pick;
        inspect(b.dataset.pick);
        act.elements.namedItem("id").focus();
      });
    }
    async function inspect(id) {
      const res = await api("GET", "/api/v1/dlq/" + encodeURIComponent(id));
      if (!res.ok) { say("dlq-result", problem(res)); return; }
      detail.textContent = JSON.stringify(res.data, null, 2);
      say("dlq-result", "Dead letter " + id + ": " + res.data.reason);
    }
    act.addEventListener("submit", function (ev) { ev.preventDefault(); });
    act.addEventListener("click", async function (ev) {
      const b = ev.target.closest("[data-act]");
      if (!b) return;
      const id = act.elements.namedItem("id").value.trim();
      if (!/^[0-9]+$/.test(id)) { say("dlq-result", "Give the dead letter's id (digits)."); return; }
      const what = b.dataset.act;
      if (what === "inspect") return inspect(id);
      if (what === "dry-run") {
        const res = await api("POST", "/api/v1/dlq/" + id + "/replay", { dry_run: true });
        if (!res.ok) { say("dlq-result", "Dry run: " + problem(res)); return; }
        const d = res.data;
        say("dlq-result", d.error ? "Dry run: the replay would still fail: " + d.error
          : "Dry run: the replay would publish " + d.events + " event(s); nothing was stored.");
        detail.textContent = JSON.stringify(d, null, 2);
        return;
      }
      if (what === "replay") {
        const res = await api("POST", "/api/v1/dlq/" + id + "/replay", {});
        say("dlq-result", res.ok ? "Replayed: " + res.data.events + " event(s) published." : "Replay: " + problem(res));
        if (res.ok && filter) load();
        return;
      }
      if (what === "discard") {
        const reason = act.elements.namedItem("reason").value.trim();
        if (!reason) { say("dlq-result", "A reason is required to discard."); act.elements.namedItem("reason").focus(); return; }
        const res = await api("POST", "/api/v1/dlq/" + id + "/discard", { reason: reason });
        say("dlq-result", res.ok ? "Discarded by " + res.data.actor + "." : "Discard: " + problem(res));
        if (res.ok && filter) load();
      }
    });
  }

  // -- message browser ------------------------------------------------------------------------
  function messages() {
    const form = document.getElementById("msg-search");
    const table = document.getElementById("msg-results");
    form.addEventListener("submit", async function (ev) {
      ev.preventDefault();
      const q = formQuery(form, ["interface", "control_id", "account", "encounter", "claim", "trace"]);
      const from = form.elements.namedItem("from").value, to = form.elements.namedItem("to").value;
      if (from) q.set("from", from + "T00:00:00Z");
      if (to) q.set("to", to + "T23:59:59Z");
      q.set("limit", "50");
      say("msg-status", "Searching…");
      const res = await api("GET", "/api/v1/messages?" + q.toString());
      const body = table.querySelector("tbody");
      body.replaceChildren();
      if (res.status === 404 && res.data && res.data.error === "not found") {
        say("msg-status", "The message browser API (GET /api/v1/messages) is not available on this server.");
        table.hidden = true;
        return;
      }
      if (!res.ok) { say("msg-status", problem(res)); table.hidden = true; return; }
      for (const m of res.data.messages) {
        const follow = el("button", "Follow", { "type": "button", "data-correlation": m.correlation,
          "aria-label": "Follow the chain of " + (m.control_id || m.correlation) });
        body.appendChild(row([m.received_at, m.interface, m.control_id, (m.events || []).length,
          (m.dead_letters || []).length, follow]));
      }
      table.hidden = res.data.messages.length === 0;
      say("msg-status", res.data.messages.length + " message(s) found");
    });
    table.addEventListener("click", async function (ev) {
      const b = ev.target.closest("[data-correlation]");
      if (!b) return;
      const res = await api("GET", "/api/v1/messages/" + encodeURIComponent(b.dataset.correlation));
      const section = document.getElementById("chain-section");
      const chain = document.getElementById("chain");
      chain.replaceChildren();
      section.hidden = false;
      say("chain-id", b.dataset.correlation);
      if (!res.ok) { chain.appendChild(el("p", problem(res))); return; }
      const d = res.data;
      const raw = d.raw || {};
      chain.appendChild(el("p", "Raw: " + (raw.ref || JSON.stringify(raw)) + (raw.size ? " (" + raw.size + " bytes)" : "")));
      for (const part of ["events", "dead_letters", "replays", "deliveries"]) {
        const items = d[part] || [];
        chain.appendChild(el("h3", part.replace("_", " ") + " (" + items.length + ")"));
        const list = el("ul", null, { "data-chain": part });
        for (const item of items) list.appendChild(el("li", describe(item)));
        chain.appendChild(list);
      }
      document.getElementById("h-chain").focus();
    });
  }

  function describe(item) {
    if (item === null || typeof item !== "object") return String(item);
    const keys = ["type", "id", "seq", "sink", "event_id", "status", "reason", "interface", "at", "attempts"];
    const parts = [];
    for (const k of keys) if (item[k] !== undefined && item[k] !== null) parts.push(k + " " + item[k]);
    if (item.event && typeof item.event === "object") parts.push("type " + item.event.type, "id " + item.event.id);
    return parts.length ? parts.join(" · ") : JSON.stringify(item);
  }

  // -- audit trail ----------------------------------------------------------------------------
  function audit() {
    const form = document.getElementById("audit-filter");
    async function load() {
      const q = formQuery(form, ["actor", "action", "interface"]);
      const since = form.elements.namedItem("since").value;
      if (since) q.set("since", since + "T00:00:00Z");
      q.set("limit", "1000");
      say("audit-status", "Loading…");
      const res = await api("GET", "/api/v1/audit?" + q.toString());
      const body = document.querySelector("#audit-records tbody");
      body.replaceChildren();
      if (!res.ok) { say("audit-status", problem(res)); return; }
      const records = res.data.records.slice().reverse();
      for (const r of records) {
        body.appendChild(row([r.at, r.actor, r.role, r.action, r.result, r.status, r.interface,
          JSON.stringify(r.target || {})]));
      }
      say("audit-status", records.length + " record(s)" + (res.data.next_after ? "; more follow" : ""));
    }
    form.addEventListener("submit", function (ev) { ev.preventDefault(); load(); });
    load();
  }

  const page = document.body.dataset.page || "";
  if (page === "/") overview();
  else if (page.startsWith("/console/interfaces/")) interfacePage();
  else if (page === "/console/dead-letters") deadLetters();
  else if (page === "/console/messages") messages();
  else if (page === "/console/audit") audit();
})();
