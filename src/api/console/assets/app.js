// kinderwatch console. Plain JavaScript, no build step, no framework; DOM built with
// textContent only (nothing from the site is ever parsed as HTML).
"use strict";

(function () {
  const TEXT = window.KW_TEXT;
  const SVG = "http://www.w3.org/2000/svg";
  const EVENT_KINDS = ["line_crossed", "zone_entered", "zone_left", "loitering", "camera_offline",
    "camera_online", "camera_tampered", "storage_failed", "storage_recovered"];
  const PAGE_SIZE = 30;
  const PICTURE_EVERY_MS = 1000;
  const CAMERAS_EVERY_MS = 5000;
  const HEALTH_EVERY_MS = 5000;

  const state = {
    me: null,          // {name, role, csrf, site, time_zone}
    lang: "en",
    cameras: [],
    rules: [],
    timers: [],
    stream: null,
    events: { filters: {}, cursor: null, shown: new Set() },
  };

  const $ = (sel) => document.querySelector(sel);

  // --- words -----------------------------------------------------------------------------
  function pickLanguage() {
    const saved = localStorage.getItem("kw-lang");
    if (saved && TEXT[saved]) return saved;
    for (const l of navigator.languages || [navigator.language || "en"]) {
      const base = String(l).toLowerCase().split("-")[0];
      if (TEXT[base]) return base;
    }
    return "en";
  }

  function t(key, params) {
    let s = (TEXT[state.lang] && TEXT[state.lang][key]) || TEXT.en[key] || key;
    for (const [k, v] of Object.entries(params || {})) s = s.split("{" + k + "}").join(String(v));
    return s;
  }

  function applyWords() {
    document.documentElement.lang = state.lang;
    for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
    $("#lang").value = state.lang;
  }

  function formatTime(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    const opts = { dateStyle: "short", timeStyle: "medium" };
    if (state.me && state.me.time_zone) opts.timeZone = state.me.time_zone;
    try {
      return new Intl.DateTimeFormat(state.lang, opts).format(d);
    } catch (e) {
      return d.toISOString();
    }
  }

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }

  function notice(message) {
    const n = $("#notice");
    n.textContent = message || "";
    n.hidden = !message;
  }

  // --- the API ---------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.reason) || ("HTTP " + status));
      this.status = status;
      this.body = body;
    }
  }

  async function api(path, options) {
    const opts = Object.assign({ credentials: "same-origin", headers: {} }, options || {});
    if (opts.method && opts.method !== "GET" && state.me) opts.headers["X-CSRF-Token"] = state.me.csrf;
    const r = await fetch(path, opts);
    if (r.status === 204) return null;
    const type = r.headers.get("content-type") || "";
    const body = type.includes("json") ? await r.json() : null;
    if (r.status === 401 && state.me) {
      signedOut(t("error.session_ended"));
    }
    if (!r.ok) throw new ApiError(r.status, body);
    return body;
  }

  // --- sign-in ---------------------------------------------------------------------------
  function signedIn(me) {
    state.me = me;
    $("#site").textContent = me.site;
    $("#who").textContent = t("signin.as", { name: me.name, role: t("role." + me.role) });
    $("#nav").hidden = false;
    $("#sign-out").hidden = false;
    route();
  }

  function signedOut(message) {
    state.me = null;
    stopPage();
    $("#nav").hidden = true;
    $("#sign-out").hidden = true;
    $("#who").textContent = "";
    notice(message);
    show("signin");
    $("#token").focus();
  }

  async function signIn(ev) {
    ev.preventDefault();
    const input = $("#token");
    const err = $("#signin-error");
    err.hidden = true;
    try {
      const me = await fetch("/console/session", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ token: input.value.trim() }),
      }).then(async (r) => {
        if (!r.ok) throw new ApiError(r.status, null);
        return r.json();
      });
      input.value = "";
      notice("");
      if (!location.hash || location.hash === "#signin") location.hash = "#cameras";
      signedIn(me);
    } catch (e) {
      err.textContent = e.status === 401 ? t("signin.refused") : t("signin.failed");
      err.hidden = false;
      input.select();
    }
  }

  async function signOut() {
    try {
      await api("/console/session/end", { method: "POST" });
    } catch (e) { /* the cookie is cleared either way */ }
    signedOut("");
  }

  // --- pages -----------------------------------------------------------------------------
  function show(page) {
    for (const s of document.querySelectorAll("main > section")) s.hidden = s.id !== "page-" + page;
    for (const a of document.querySelectorAll("nav a")) {
      const owner = { event: "#events", edit: "#cameras" }[page];
      if (a.getAttribute("href") === "#" + page || a.getAttribute("href") === owner) {
        a.setAttribute("aria-current", "page");
      } else {
        a.removeAttribute("aria-current");
      }
    }
  }

  function stopPage() {
    for (const id of state.timers) clearInterval(id);
    state.timers = [];
    if (state.stream) {
      state.stream.close();
      state.stream = null;
    }
  }

  function every(ms, f) {
    state.timers.push(setInterval(f, ms));
  }

  function route() {
    if (!state.me) return;
    stopPage();
    const hash = location.hash.replace(/^#/, "") || "cameras";
    const [page, arg] = hash.split("/");
    if (page === "edit" && arg && state.me.role === "admin") editPage(decodeURIComponent(arg));
    else if (page === "events") eventsPage();
    else if (page === "event" && arg) eventPage(decodeURIComponent(arg));
    else if (page === "health") healthPage();
    else camerasPage();
  }

  // --- cameras ---------------------------------------------------------------------------
  async function loadCameras() {
    const [cams, rules] = await Promise.all([
      api("/api/v1/cameras"),
      api("/api/v1/rules").catch(() => ({ rules: [] })),
    ]);
    state.cameras = cams.cameras;
    state.rules = rules.rules;
  }

  function overlay(rules) {
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 1 1");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("aria-hidden", "true");
    for (const r of rules) {
      const pts = r.shape.map((p) => p[0] + "," + p[1]).join(" ");
      const dim = r.armed ? "" : " disarmed-shape";
      if (r.kind === "tripwire") {
        const line = document.createElementNS(SVG, "polyline");
        line.setAttribute("points", pts);
        line.setAttribute("class", "wire" + dim);
        svg.append(line);
        for (let i = 0; i + 1 < r.shape.length; i++) svg.append(...arrows(r.shape[i], r.shape[i + 1], r.direction, dim));
      } else {
        const poly = document.createElementNS(SVG, "polygon");
        poly.setAttribute("points", pts);
        poly.setAttribute("class", "zone" + dim);
        svg.append(poly);
      }
    }
    return svg;
  }

  // The crossing direction at a segment's middle. On screen (y down) the right side of a line
  // going from a to b is along (-dy, dx); `right` = crossing from its left side to its right.
  function arrows(a, b, direction, dim) {
    const [dx, dy] = [b[0] - a[0], b[1] - a[1]];
    const len = Math.hypot(dx, dy) || 1;
    const [nx, ny] = [-dy / len, dx / len];
    const [mx, my] = [(a[0] + b[0]) / 2, (a[1] + b[1]) / 2];
    const size = 0.06;
    const sides = direction === "left" ? [-1] : direction === "right" ? [1] : [-1, 1];
    return sides.map((s) => {
      const tip = [mx + s * nx * size, my + s * ny * size];
      const back = [mx + s * nx * size * 0.45, my + s * ny * size * 0.45];
      const wing = [dx / len * size * 0.35, dy / len * size * 0.35];
      const path = document.createElementNS(SVG, "path");
      path.setAttribute("d", `M${mx},${my} L${tip[0]},${tip[1]} M${back[0] + wing[0]},${back[1] + wing[1]} ` +
        `L${tip[0]},${tip[1]} L${back[0] - wing[0]},${back[1] - wing[1]}`);
      path.setAttribute("class", "arrow" + dim);
      return path;
    });
  }

  function ruleItem(r) {
    const words = r.armed ? (r.active ? t("rule.armed") : t("rule.inactive")) : t("rule.disarmed");
    const what = [r.id, t("rule.kind." + r.kind)];
    if (r.direction) what.push(t("rule.direction." + r.direction));
    const li = el("li", { "data-rule": r.id },
      el("span", { class: "what", text: what.join(" · ") }),
      el("span", { class: r.armed ? "armed" : "disarmed", text: words }));
    if (state.me.role === "admin") {
      li.append(el("button", {
        type: "button",
        class: "secondary",
        "data-action": r.armed ? "disarm" : "arm",
        text: r.armed ? t("rule.disarm") : t("rule.arm"),
        onclick: () => setArmed(r.id, !r.armed),
      }));
    }
    return li;
  }

  async function setArmed(rule, armed) {
    try {
      await api(`/api/v1/rules/${encodeURIComponent(rule)}/${armed ? "arm" : "disarm"}`, { method: "POST" });
      notice(t("rule.changed", { rule, state: armed ? t("rule.armed") : t("rule.disarmed") }));
    } catch (e) {
      notice(e.status === 403 ? t("rule.forbidden") : t("error.generic", { reason: e.message }));
    }
    await renderCameras();
  }

  function tile(cam) {
    const rules = state.rules.filter((r) => r.camera === cam.id);
    const img = el("img", { alt: cam.name, hidden: true });
    const empty = el("div", { class: "empty", text: t("cameras.no_picture") });
    img.addEventListener("load", () => { img.hidden = false; empty.hidden = true; });
    img.addEventListener("error", () => { img.hidden = true; empty.hidden = false; });
    const picture = el("div", { class: "picture" }, empty, img, overlay(rules));
    const facts = [t("cameras.fps", { fps: cam.fps })];
    if (cam.decoding === "keyframes") facts.push(t("cameras.keyframes"));
    const body = el("div", { class: "body" },
      el("div", {}, el("span", { class: "state " + cam.state, text: t("state." + cam.state) }),
        document.createTextNode(" · " + facts.join(" · "))),
      cam.last_error ? el("div", { class: "last-error", text: cam.last_error }) : null,
      el("h3", { class: "sub", text: t("cameras.rules") }),
      rules.length ? el("ul", { class: "rules" }, ...rules.map(ruleItem)) : el("p", { class: "help", text: t("cameras.no_rules") }),
      state.me.role === "admin"
        ? el("p", {}, el("a", { href: "#edit/" + encodeURIComponent(cam.id), class: "edit-link", text: t("cameras.edit") }))
        : null,
      el("h3", { class: "sub", text: t("cameras.last_event") }),
      el("p", { class: "last-event", "data-camera": cam.id, text: "…" }));
    const section = el("article", { class: "tile", "data-camera": cam.id },
      el("h2", { text: cam.name + " (" + cam.id + ")" }), picture, body);
    section.refresh = () => { img.src = `/api/v1/cameras/${encodeURIComponent(cam.id)}/frame.jpg?t=${Date.now()}`; };
    return section;
  }

  async function lastEvent(p) {
    try {
      const r = await api(`/api/v1/events?camera=${encodeURIComponent(p.dataset.camera)}&limit=1`);
      p.textContent = "";
      const e = r.events[0];
      if (!e) { p.textContent = t("cameras.no_events"); return; }
      p.append(el("a", { href: "#event/" + e.id, text: t("kind." + e.kind) + (e.rule ? " · " + e.rule : "") + " · " + formatTime(e.time) }));
    } catch (e) {
      p.textContent = t("error.generic", { reason: e.message });
    }
  }

  async function renderCameras() {
    try {
      await loadCameras();
    } catch (e) {
      notice(t("error.generic", { reason: e.message }));
      return;
    }
    const tiles = $("#tiles");
    tiles.textContent = "";
    if (!state.cameras.length) tiles.append(el("p", { text: t("cameras.none") }));
    for (const cam of state.cameras) {
      const tl = tile(cam);
      tiles.append(tl);
      tl.refresh();
    }
    for (const p of tiles.querySelectorAll(".last-event")) lastEvent(p);
  }

  function camerasPage() {
    show("cameras");
    renderCameras();
    every(PICTURE_EVERY_MS, () => {
      if (document.hidden) return;
      for (const tl of document.querySelectorAll(".tile")) tl.refresh();
    });
    every(CAMERAS_EVERY_MS, () => { if (!document.hidden) refreshCameraFacts(); });
  }

  async function refreshCameraFacts() {
    try {
      const before = JSON.stringify([state.cameras.map((c) => [c.state, c.last_error]), state.rules]);
      await loadCameras();
      const after = JSON.stringify([state.cameras.map((c) => [c.state, c.last_error]), state.rules]);
      if (before !== after) renderCameras();
    } catch (e) { /* shown on the next full render */ }
  }

  // --- events ----------------------------------------------------------------------------
  function fillFilters() {
    const f = $("#filters");
    const cam = f.elements.camera;
    const kind = f.elements.kind;
    const keep = [cam.value, kind.value];
    cam.textContent = "";
    cam.append(el("option", { value: "", text: t("events.any") }));
    for (const c of state.cameras) cam.append(el("option", { value: c.id, text: c.name }));
    kind.textContent = "";
    kind.append(el("option", { value: "", text: t("events.any") }));
    for (const k of EVENT_KINDS) kind.append(el("option", { value: k, text: t("kind." + k) }));
    [cam.value, kind.value] = keep;
  }

  function readFilters() {
    const f = $("#filters").elements;
    const out = {};
    if (f.camera.value) out.camera = f.camera.value;
    if (f.kind.value) out.kind = f.kind.value;
    if (f.rule.value.trim()) out.rule = f.rule.value.trim();
    // datetime-local is the browser's local time; the API wants RFC 3339.
    if (f.from.value) out.from = new Date(f.from.value).toISOString();
    if (f.to.value) out.to = new Date(f.to.value).toISOString();
    return out;
  }

  function eventItem(e, fresh) {
    const thumb = e.snapshot_url
      ? el("img", { src: e.snapshot_url, alt: t("events.snapshot", { id: e.id }), loading: "lazy" })
      : el("span", { class: "noimg", text: t("events.no_snapshot") });
    const meta = [formatTime(e.time), e.camera, e.rule].filter(Boolean).join(" · ");
    return el("li", { class: fresh ? "fresh" : null, "data-event": e.id },
      el("a", { href: "#event/" + e.id }, thumb,
        el("span", {},
          el("span", { class: "kind", text: t("kind." + e.kind) }),
          fresh ? el("span", { class: "badge", text: " " + t("events.new") + " " }) : null,
          el("br"),
          el("span", { class: "meta", text: meta }))));
  }

  async function loadEvents(more) {
    const q = new URLSearchParams(state.events.filters);
    q.set("limit", PAGE_SIZE);
    if (more && state.events.cursor) q.set("cursor", state.events.cursor);
    const list = $("#event-list");
    try {
      const r = await api("/api/v1/events?" + q.toString());
      if (!more) {
        list.textContent = "";
        state.events.shown = new Set();
      }
      for (const e of r.events) {
        if (state.events.shown.has(e.id)) continue;
        state.events.shown.add(e.id);
        list.append(eventItem(e, false));
      }
      if (!list.children.length) list.append(el("li", { class: "help", text: t("events.none") }));
      state.events.cursor = r.next_cursor || null;
      $("#older").hidden = !state.events.cursor;
    } catch (e) {
      notice(t("error.generic", { reason: e.message }));
    }
  }

  function matches(e, f) {
    if (f.camera && e.camera !== f.camera) return false;
    if (f.kind && e.kind !== f.kind) return false;
    if (f.rule && e.rule !== f.rule) return false;
    if (f.to) return false; // a closed range: new events are outside it
    return true;
  }

  function liveEvents() {
    const s = new EventSource("/api/v1/events/stream");
    state.stream = s;
    s.addEventListener("recorded", (m) => {
      const e = JSON.parse(m.data);
      if (!matches(e, state.events.filters) || state.events.shown.has(e.id)) return;
      state.events.shown.add(e.id);
      const list = $("#event-list");
      const none = list.querySelector("li.help");
      if (none) none.remove();
      list.prepend(eventItem(e, true));
      $("#live").textContent = t("events.live");
    });
    s.addEventListener("skipped", () => loadEvents(false));
    s.addEventListener("open", () => { $("#live").textContent = t("events.live"); });
    s.addEventListener("error", () => { $("#live").textContent = t("events.live_lost"); });
  }

  async function eventsPage() {
    show("events");
    if (!state.cameras.length) await loadCameras().catch(() => {});
    fillFilters();
    state.events.filters = readFilters();
    await loadEvents(false);
    liveEvents();
  }

  async function eventPage(id) {
    show("event");
    const box = $("#event-detail");
    box.textContent = "";
    try {
      const e = await api("/api/v1/events/" + encodeURIComponent(id));
      const facts = el("dl", { class: "health" });
      const add = (k, v) => { if (v !== undefined && v !== null && v !== "") facts.append(el("dt", { text: k }), el("dd", { text: String(v) })); };
      add(t("events.kind"), t("kind." + e.kind));
      add(t("events.camera"), e.camera);
      add(t("events.rule"), e.rule);
      add("time", formatTime(e.time));
      if (e.object) {
        add("object", [e.object.class, t("events.score", { score: e.object.score.toFixed(2) }),
          t("events.track", { track: e.object.track_id }), e.object.crossing].filter(Boolean).join(" · "));
      }
      if (e.started_at) add("", t("events.started", { time: formatTime(e.started_at) }));
      add("detail", e.detail);
      add("id", e.id);
      box.append(el("h1", { text: t("kind." + e.kind) }),
        e.snapshot_url ? el("div", { class: "detail" }, el("img", { id: "snapshot", src: e.snapshot_url, alt: t("events.snapshot", { id: e.id }) }))
          : el("p", { class: "help", text: t("events.no_snapshot") }),
        facts);
    } catch (err) {
      box.append(el("p", { class: "error", text: t("error.generic", { reason: err.message }) }));
    }
  }

  // --- health ----------------------------------------------------------------------------
  async function renderHealth() {
    const list = $("#health-list");
    try {
      const h = await fetch("/healthz", { credentials: "same-origin" }).then((r) => r.json());
      const s = await api("/api/v1/store").catch(() => null);
      list.textContent = "";
      const add = (k, v, cls) => list.append(el("dt", { text: t(k) }), el("dd", { class: cls || null, text: v }));
      const good = { ok: "good", degraded: "meh", failing: "bad" }[h.status];
      add("health.status", t("health.status." + h.status), good);
      add("health.store", h.store.state === "ok" ? t("health.store.ok") : t("health.store.failing", { reason: h.store.reason }),
        h.store.state === "ok" ? "good" : "bad");
      if (s) {
        add("health.events", String(s.stats.events));
        add("health.outbox", String(s.stats.outbox), s.stats.outbox > 0 ? "meh" : "good");
        add("health.disk", (s.stats.disk_bytes / 1048576).toFixed(1) + " MB");
      }
      if (h.mqtt.configured) {
        add("health.mqtt", h.mqtt.connected
          ? t("health.mqtt.connected", { time: formatTime(h.mqtt.since) })
          : t("health.mqtt.down", { time: formatTime(h.mqtt.since), reason: h.mqtt.last_error || "…" }),
          h.mqtt.connected ? "good" : "bad");
      } else {
        add("health.mqtt", t("health.mqtt.none"), "meh");
      }
      if (h.disk.free_bytes !== null && h.disk.free_bytes !== undefined) {
        add("health.disk_free", (h.disk.free_bytes / 1073741824).toFixed(1) + " GB",
          h.disk.free_bytes < 1073741824 ? "meh" : "good");
      }
      add("health.dead_letters", String(h.outbox.dead_letters), h.outbox.dead_letters > 0 ? "bad" : "good");
      add("health.detector", h.detector.overloaded
        ? t("health.detector.overloaded", { cameras: h.detector.behind.map((b) => b.camera).join(", ") })
        : t("health.detector.ok"), h.detector.overloaded ? "meh" : "good");
      add("health.cameras", h.cameras.streaming + " / " + h.cameras.total,
        h.cameras.streaming === h.cameras.total ? "good" : "meh");
      add("health.stages", String(h.stages.stuck.length), h.stages.stuck.length ? "bad" : "good");
    } catch (e) {
      notice(t("error.generic", { reason: e.message }));
    }
  }

  function healthPage() {
    show("health");
    renderHealth();
    every(HEALTH_EVERY_MS, () => { if (!document.hidden) renderHealth(); });
  }

  // --- the rule editor (editor.js) ------------------------------------------------------
  async function editPage(camera) {
    if (!state.cameras.length) await loadCameras().catch(() => {});
    await editor(camera);
  }
  const editor = window.KW_EDITOR({ t, el, api, notice, every, SVG, arrows, show, state });

  // --- start -----------------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", async () => {
    state.lang = pickLanguage();
    applyWords();
    $("#lang").addEventListener("change", (ev) => {
      state.lang = ev.target.value;
      localStorage.setItem("kw-lang", state.lang);
      applyWords();
      if (state.me) signedIn(state.me);
    });
    $("#signin-form").addEventListener("submit", signIn);
    $("#sign-out").addEventListener("click", signOut);
    $("#filters").addEventListener("submit", (ev) => {
      ev.preventDefault();
      state.events.filters = readFilters();
      loadEvents(false);
    });
    $("#older").addEventListener("click", () => loadEvents(true));
    window.addEventListener("hashchange", route);
    try {
      const me = await fetch("/console/session", { credentials: "same-origin" });
      if (me.ok) return signedIn(await me.json());
    } catch (e) { /* not signed in */ }
    signedOut("");
  });
})();
