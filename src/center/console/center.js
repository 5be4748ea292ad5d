// The city center's alarm queue: signs in with an API token (a session cookie, as the site
// console), lists the alarms of /api/v1/alarms with district/site/state filters, reloads on the
// live feed (/api/v1/alarms/stream: server-sent events from the database's notifications), and
// lets an admin acknowledge and resolve an alarm with an outcome and a note.
"use strict";

const $ = (sel) => document.querySelector(sel);
let me = null;          // {name, role, csrf, instance}
let feed = null;        // the EventSource
let reloadTimer = null;
let known = null;       // alarm ids shown so far (null: nothing loaded yet)
let fresh = new Set();  // ids that arrived while the page was open: highlighted

const KINDS = {
  line_crossed: "Line crossed", zone_entered: "Zone entered", loitering: "Loitering",
  site_offline: "Site offline", camera_offline: "Camera offline", camera_tampered: "Camera tampered",
  storage_failed: "Storage failing",
};

function notice(text) {
  const n = $("#notice");
  n.textContent = text || "";
  n.hidden = !text;
}

async function api(method, path, body) {
  const opts = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  if (method !== "GET" && me) opts.headers["X-CSRF-Token"] = me.csrf;
  const r = await fetch(path, opts);
  const text = await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
  if (r.status === 401 && path !== "/console/session") { signedOut(); }
  if (!r.ok) {
    const why = (json && (json.reason || json.error)) || `HTTP ${r.status}`;
    throw new Error(why);
  }
  return json;
}

function show(page) {
  for (const p of document.querySelectorAll(".page")) p.hidden = p.id !== page;
}

function signedOut() {
  me = null;
  if (feed) { feed.close(); feed = null; }
  $("#who").textContent = "";
  $("#sign-out").hidden = true;
  $("#live-state").hidden = true;
  show("page-signin");
}

function signedIn(who) {
  me = who;
  $("#who").textContent = `${who.name} (${who.role})`;
  $("#instance").textContent = who.instance || "";
  $("#sign-out").hidden = false;
  show("page-queue");
  loadSites().then(reload);
  listen();
}

function listen() {
  if (feed) feed.close();
  feed = new EventSource("/api/v1/alarms/stream");
  const state = $("#live-state");
  state.hidden = false;
  feed.onopen = () => { state.textContent = "live"; state.className = "who good"; };
  feed.onerror = () => { state.textContent = "reconnecting…"; state.className = "who meh"; };
  const soon = () => { clearTimeout(reloadTimer); reloadTimer = setTimeout(reload, 250); };
  feed.addEventListener("alarm", soon);
  feed.addEventListener("resync", soon);
}

// Alarms that stand for a condition: cleared when it ends (a perimeter alarm never is).
const CONDITIONS = new Set(["site_offline", "camera_offline", "camera_tampered", "storage_failed"]);

async function loadSites() {
  const { sites } = await api("GET", "/api/v1/sites");
  const districts = [...new Set(sites.map((s) => s.district).filter(Boolean))].sort();
  const d = $("#filters [name=district]");
  const s = $("#filters [name=site]");
  // Signed in again: the lists are filled afresh after their "all".
  d.length = 1;
  s.length = 1;
  for (const x of districts) d.append(new Option(x, x));
  for (const x of sites) s.append(new Option(x.name ? `${x.name} (${x.id})` : x.id, x.id));
}

function query() {
  const f = new FormData($("#filters"));
  const q = new URLSearchParams();
  for (const k of ["district", "site", "state"]) {
    const v = f.get(k);
    if (v) q.set(k, v);
  }
  q.set("limit", "200");
  return q.toString();
}

function when(t) {
  return t ? new Date(t).toLocaleString() : "";
}

async function reload() {
  if (!me) return;
  let alarms;
  try {
    ({ alarms } = await api("GET", `/api/v1/alarms?${query()}`));
    notice("");
  } catch (e) {
    notice(`The queue could not be loaded: ${e.message}`);
    return;
  }
  const list = $("#alarms");
  if (known) for (const a of alarms) if (!known.has(a.id)) fresh.add(a.id);
  known = new Set(alarms.map((a) => a.id));
  list.replaceChildren(...alarms.map((a) => row(a, fresh.has(a.id))));
  $("#count").textContent = String(alarms.filter((a) => a.state === "new").length);
  $("#empty").hidden = alarms.length > 0;
}

function row(a, fresh) {
  const li = $("#alarm-row").content.firstElementChild.cloneNode(true);
  li.dataset.id = a.id;
  li.classList.add(a.state);
  if (fresh) li.classList.add("fresh");
  li.querySelector(".kind").textContent = KINDS[a.kind] || a.kind;
  li.querySelector(".state-badge").textContent = a.state;
  li.querySelector(".recovered").hidden = !a.recovered;
  li.querySelector(".inactive").hidden = !(CONDITIONS.has(a.kind) && !a.active);
  const site = a.site_name ? `${a.site_name} (${a.site})` : a.site;
  const parts = [site, a.district && `district ${a.district}`, a.camera && `camera ${a.camera}`, a.rule && `rule ${a.rule}`];
  li.querySelector(".where").textContent = parts.filter(Boolean).join(" · ");
  const times = [`raised ${when(a.raised_at)}`];
  if (a.occurrences > 1) times.push(`${a.occurrences} times, last ${when(a.last_at)}`);
  li.querySelector(".when").textContent = times.join(" · ");
  const handled = [];
  if (a.acknowledged_by) handled.push(`acknowledged by ${a.acknowledged_by} ${when(a.acknowledged_at)}`);
  if (a.resolved_by) handled.push(`resolved by ${a.resolved_by} ${when(a.resolved_at)}: ${a.outcome}`);
  if (a.note) handled.push(`“${a.note}”`);
  li.querySelector(".handled").textContent = handled.join(" · ");
  if (a.snapshot) {
    const img = li.querySelector(".snap");
    img.src = `/api/v1/alarms/${a.id}/snapshot.jpg`;
    img.alt = `snapshot of alarm ${a.id}`;
    img.hidden = false;
    li.querySelector(".snap-none").hidden = true;
  }
  const admin = me && me.role === "admin";
  const ack = li.querySelector(".ack");
  ack.hidden = !(admin && a.state === "new");
  ack.addEventListener("click", () => act(a.id, "acknowledge", {}));
  const resolve = li.querySelector(".resolve");
  resolve.hidden = !(admin && a.state !== "resolved");
  resolve.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = new FormData(resolve);
    const body = { outcome: f.get("outcome") };
    if (f.get("note")) body.note = f.get("note");
    act(a.id, "resolve", body);
  });
  return li;
}

async function act(id, action, body) {
  try {
    await api("POST", `/api/v1/alarms/${id}/${action}`, body);
    notice("");
  } catch (e) {
    notice(`Alarm ${id}: ${e.message}`);
  }
  reload();
}

$("#signin-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const err = $("#signin-error");
  err.hidden = true;
  try {
    const who = await api("POST", "/console/session", { token: $("#token").value.trim() });
    $("#token").value = "";
    signedIn(who);
  } catch (e) {
    err.textContent = e.message;
    err.hidden = false;
  }
});

$("#sign-out").addEventListener("click", async () => {
  try { await api("POST", "/console/session/end"); } catch (_) { /* gone anyway */ }
  signedOut();
});

$("#filters").addEventListener("change", () => { known = null; fresh = new Set(); reload(); });

api("GET", "/console/session").then(signedIn, signedOut);
