// kinderwatch console: the rule editor (page #edit/<camera>, administrators). Draws a camera's
// zones, object masks and tripwires on its live picture; points are added by clicking (pointer
// events) and moved by dragging their handles, or typed as "x,y x,y" for keyboard use. Saving
// sends the whole perimeter to PUT /api/v1/cameras/{id}/perimeter, which checks it as
// check-config does, writes the config file and applies it; problems come back per shape.
"use strict";

window.KW_EDITOR = function (kw) {
  const { t, el, api, notice, every, SVG, arrows } = kw;
  const $ = (sel) => document.querySelector(sel);
  const HANDLE = 0.012;

  let ed = null; // {camera, version, zones, masks, rules, selected, drawing, problems, dirty}

  // --- the model -------------------------------------------------------------------------
  function key(kind, id) { return kind + ":" + id; }

  function shapes() {
    const out = [];
    for (const r of ed.rules) if (r.kind === "tripwire") out.push({ kind: "rule", id: r.id, item: r, points: r.line, open: true });
    for (const z of ed.zones) out.push({ kind: "zone", id: z.id, item: z, points: z.polygon, open: false });
    ed.masks.forEach((m, i) => out.push({ kind: "mask", id: String(i), item: m, points: m, open: false }));
    return out;
  }

  function selectedItem() {
    if (!ed.selected) return null;
    const [kind, id] = ed.selected.split(/:(.*)/s);
    if (kind === "rule") return { kind, rule: ed.rules.find((r) => r.id === id) };
    if (kind === "zone") return { kind, zone: ed.zones.find((z) => z.id === id) };
    if (kind === "mask") return { kind, index: Number(id), mask: ed.masks[Number(id)] };
    return null;
  }

  function freeId(prefix) {
    const taken = new Set([...ed.rules.map((r) => r.id), ...ed.zones.map((z) => z.id)]);
    for (let i = 1; ; i++) if (!taken.has(prefix + "-" + i)) return prefix + "-" + i;
  }

  function changed() {
    ed.dirty = true;
    $("#edit-save").disabled = false;
    $("#edit-state").textContent = t("edit.unsaved");
    render();
  }

  function problemsOf(kind, id) {
    return ed.problems.filter((p) => p.shape && p.shape[kind] !== undefined && String(p.shape[kind]) === String(id));
  }

  const round = (v) => Math.round(Math.min(1, Math.max(0, v)) * 10000) / 10000;
  const pointsText = (pts) => pts.map((p) => p[0] + "," + p[1]).join(" ");
  function parsePoints(text) {
    const pts = [];
    for (const pair of text.trim().split(/\s+/).filter(Boolean)) {
      const xy = pair.split(",").map(Number);
      if (xy.length !== 2 || xy.some((v) => !Number.isFinite(v))) return null;
      pts.push([xy[0], xy[1]]);
    }
    return pts;
  }

  // --- drawing ---------------------------------------------------------------------------
  function at(ev) {
    const r = $("#edit-svg").getBoundingClientRect();
    return [round((ev.clientX - r.left) / r.width), round((ev.clientY - r.top) / r.height)];
  }

  function svgEl(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    return e;
  }

  function render() {
    const svg = $("#edit-svg");
    svg.textContent = "";
    for (const s of shapes()) {
      const k = key(s.kind, s.id);
      const cls = [s.kind === "rule" ? "wire" : s.kind === "zone" ? "zone" : "mask"];
      if (ed.selected === k) cls.push("selected");
      if (problemsOf(s.kind, s.id).length) cls.push("bad-shape");
      const pts = s.points.map((p) => p[0] + "," + p[1]).join(" ");
      const shape = svgEl(s.open ? "polyline" : "polygon", { points: pts, class: cls.join(" "), "data-shape": k });
      shape.addEventListener("pointerdown", (ev) => {
        if (ed.drawing) return;
        ev.stopPropagation();
        select(k);
      });
      svg.append(shape);
      if (s.kind === "rule") {
        for (let i = 0; i + 1 < s.points.length; i++) svg.append(...arrows(s.points[i], s.points[i + 1], s.item.direction || "any", ""));
      }
      if (ed.selected === k) {
        s.points.forEach((p, i) => svg.append(handle(s, i)));
      }
    }
    if (ed.drawing && ed.drawing.points.length) {
      const pts = ed.drawing.points.map((p) => p[0] + "," + p[1]).join(" ");
      svg.append(svgEl("polyline", { points: pts, class: "drawing" }));
      for (const p of ed.drawing.points) svg.append(svgEl("ellipse", { cx: p[0], cy: p[1], rx: HANDLE, ry: HANDLE * 4 / 3, class: "handle" }));
    }
    renderList();
  }

  function handle(s, i) {
    const p = s.points[i];
    const h = svgEl("ellipse", { cx: p[0], cy: p[1], rx: HANDLE, ry: HANDLE * 4 / 3, class: "handle", "data-point": i });
    h.addEventListener("pointerdown", (ev) => {
      ev.stopPropagation();
      ev.preventDefault();
      h.setPointerCapture(ev.pointerId);
      const move = (m) => {
        const q = at(m);
        s.points[i][0] = q[0];
        s.points[i][1] = q[1];
        h.setAttribute("cx", q[0]);
        h.setAttribute("cy", q[1]);
      };
      const up = (u) => {
        move(u);
        h.removeEventListener("pointermove", move);
        h.removeEventListener("pointerup", up);
        changed();
        fillForm();
      };
      h.addEventListener("pointermove", move);
      h.addEventListener("pointerup", up);
    });
    return h;
  }

  function startDrawing(kind) {
    ed.drawing = { kind, points: [] };
    ed.selected = null;
    $("#edit-hint").textContent = t(kind === "tripwire" ? "edit.hint.tripwire" : "edit.hint.polygon");
    $("#edit-finish").hidden = false;
    $("#edit-cancel-draw").hidden = false;
    $("#edit-draw-typed").hidden = false;
    $("#edit-draw-points").value = "";
    render();
    fillForm();
  }

  function stopDrawing() {
    ed.drawing = null;
    $("#edit-hint").textContent = t("edit.hint.select");
    $("#edit-finish").hidden = true;
    $("#edit-cancel-draw").hidden = true;
    $("#edit-draw-typed").hidden = true;
  }

  function finishDrawing() {
    const d = ed.drawing;
    if (!d) return;
    const need = d.kind === "tripwire" ? 2 : 3;
    // Without a pointer: the points typed instead.
    const typed = $("#edit-draw-points").value.trim();
    if (!d.points.length && typed) {
      const parsed = parsePoints(typed);
      if (!parsed) { $("#edit-hint").textContent = t("edit.bad_points"); return; }
      d.points = parsed.map(([x, y]) => [round(x), round(y)]);
    }
    if (d.points.length < need) {
      $("#edit-hint").textContent = t("edit.hint.more", { n: need });
      return;
    }
    stopDrawing();
    if (d.kind === "tripwire") {
      const id = freeId("tripwire");
      ed.rules.push({ id, kind: "tripwire", line: d.points, direction: "right", min_score: 0.5, cooldown: "1m", schedule: [] });
      ed.selected = key("rule", id);
    } else if (d.kind === "zone") {
      const id = freeId("zone");
      ed.zones.push({ id, polygon: d.points });
      ed.selected = key("zone", id);
    } else {
      ed.masks.push(d.points);
      ed.selected = key("mask", ed.masks.length - 1);
    }
    changed();
    fillForm();
  }

  function select(k) {
    ed.selected = k;
    render();
    fillForm();
  }

  // --- the side panel --------------------------------------------------------------------
  function label(s) {
    if (s.kind === "rule") return t("edit.shape.tripwire", { id: s.id });
    if (s.kind === "zone") return t("edit.shape.zone", { id: s.id });
    return t("edit.shape.mask", { n: Number(s.id) + 1 });
  }

  function renderList() {
    const list = $("#shape-list");
    list.textContent = "";
    for (const s of shapes()) {
      const k = key(s.kind, s.id);
      const bad = problemsOf(s.kind, s.id).length;
      list.append(el("li", {},
        el("button", { type: "button", class: "secondary" + (ed.selected === k ? " current" : "") + (bad ? " bad-item" : ""),
          "data-shape": k, "aria-pressed": ed.selected === k ? "true" : "false", onclick: () => select(k),
          text: label(s) + (bad ? " ⚠" : "") })));
    }
    for (const r of ed.rules.filter((r) => r.kind !== "tripwire")) {
      const k = key("rule", r.id);
      const bad = problemsOf("rule", r.id).length;
      list.append(el("li", {},
        el("button", { type: "button", class: "secondary" + (ed.selected === k ? " current" : "") + (bad ? " bad-item" : ""),
          "data-shape": k, "aria-pressed": ed.selected === k ? "true" : "false", onclick: () => select(k),
          text: t("edit.shape.zone_rule", { id: r.id, kind: t("rule.kind." + r.kind), zone: r.zone || "?" }) + (bad ? " ⚠" : "") })));
    }
    if (!list.children.length) list.append(el("li", { class: "help", text: t("edit.none") }));
  }

  function field(name, labelKey, input) {
    input.name = name;
    input.id = "edit-" + name;
    return el("div", { class: "field" }, el("label", { for: input.id, text: t(labelKey) }), input);
  }

  function textInput(value, onchange, attrs) {
    return el("input", Object.assign({ value: value === undefined || value === null ? "" : String(value), spellcheck: "false",
      onchange: (ev) => onchange(ev.target.value) }, attrs || {}));
  }

  function fillForm() {
    const form = $("#shape-form");
    form.textContent = "";
    const sel = selectedItem();
    if (!sel || (!sel.rule && !sel.zone && !sel.mask)) {
      form.append(el("p", { class: "help", text: t("edit.pick") }));
      return;
    }
    const problems = sel.rule ? problemsOf("rule", sel.rule.id) : sel.zone ? problemsOf("zone", sel.zone.id) : problemsOf("mask", sel.index);
    if (problems.length) {
      form.append(el("ul", { class: "problems", role: "alert" }, ...problems.map((p) => el("li", { class: "error", text: p.message + " (" + p.path + ")" }))));
    }
    const points = (pts, set) => field("points", "edit.points", textInput(pointsText(pts), (v) => {
      const parsed = parsePoints(v);
      if (!parsed) { notice(t("edit.bad_points")); return; }
      set(parsed);
      changed();
    }, { size: 40 }));
    if (sel.rule) {
      const r = sel.rule;
      form.append(field("id", "edit.id", textInput(r.id, (v) => { r.id = v.trim(); ed.selected = key("rule", r.id); changed(); })));
      if (r.kind === "tripwire") {
        form.append(points(r.line, (p) => { r.line = p; }));
        const dir = el("select", { onchange: (ev) => { r.direction = ev.target.value; changed(); } },
          ...["right", "left", "any"].map((d) => el("option", { value: d, text: t("rule.direction." + d), selected: (r.direction || "any") === d })));
        form.append(field("direction", "edit.direction", dir));
        form.append(el("button", { type: "button", class: "secondary", id: "edit-flip", text: t("edit.flip"), onclick: () => {
          r.direction = r.direction === "right" ? "left" : "right";
          changed();
          fillForm();
        } }));
      } else {
        const kind = el("select", { onchange: (ev) => { r.kind = ev.target.value; if (r.kind === "loitering" && !r.dwell) r.dwell = "1m"; changed(); fillForm(); } },
          ...["zone", "loitering"].map((k) => el("option", { value: k, text: t("rule.kind." + k), selected: r.kind === k })));
        form.append(field("kind", "edit.kind", kind));
        const zone = el("select", { onchange: (ev) => { r.zone = ev.target.value; changed(); } },
          ...ed.zones.map((z) => el("option", { value: z.id, text: z.id, selected: r.zone === z.id })));
        form.append(field("zone", "edit.zone", zone));
        if (r.kind === "loitering") form.append(field("dwell", "edit.dwell", textInput(r.dwell, (v) => { r.dwell = v.trim(); changed(); }, { size: 8 })));
      }
      form.append(field("min_score", "edit.min_score", textInput(r.min_score, (v) => {
        const n = Number(v);
        if (v.trim() === "" || !Number.isFinite(n)) { notice(t("edit.bad_score")); fillForm(); return; }
        r.min_score = n;
        changed();
      }, { type: "number", step: "0.05", min: "0", max: "1" })));
      form.append(field("cooldown", "edit.cooldown", textInput(r.cooldown, (v) => { r.cooldown = v.trim(); changed(); }, { size: 8 })));
      const sched = el("textarea", { rows: 3, cols: 30, spellcheck: "false", onchange: (ev) => {
        r.schedule = ev.target.value.split("\n").map((s) => s.trim()).filter(Boolean);
        changed();
      } });
      sched.value = (r.schedule || []).join("\n");
      form.append(field("schedule", "edit.schedule", sched), el("p", { class: "help", text: t("edit.schedule_help") }));
    } else if (sel.zone) {
      const z = sel.zone;
      form.append(field("id", "edit.id", textInput(z.id, (v) => {
        const id = v.trim();
        for (const r of ed.rules) if (r.zone === z.id) r.zone = id;
        z.id = id;
        ed.selected = key("zone", id);
        changed();
      })));
      form.append(points(z.polygon, (p) => { z.polygon = p; }));
      form.append(el("div", { class: "row" },
        el("button", { type: "button", class: "secondary", id: "edit-add-entry", text: t("edit.add_entry"), onclick: () => addZoneRule(z, "zone") }),
        el("button", { type: "button", class: "secondary", id: "edit-add-loitering", text: t("edit.add_loitering"), onclick: () => addZoneRule(z, "loitering") })));
    } else {
      form.append(points(sel.mask, (p) => { ed.masks[sel.index] = p; }));
      form.append(el("p", { class: "help", text: t("edit.mask_help") }));
    }
    form.append(el("button", { type: "button", class: "secondary danger", id: "edit-delete", text: t("edit.delete"), onclick: deleteSelected }));
  }

  function addZoneRule(z, kind) {
    const id = freeId(z.id + "-" + (kind === "zone" ? "entry" : "loitering"));
    const r = { id, kind, zone: z.id, min_score: 0.5, cooldown: "1m", schedule: [] };
    if (kind === "loitering") r.dwell = "1m";
    ed.rules.push(r);
    ed.selected = key("rule", id);
    changed();
    fillForm();
  }

  function deleteSelected() {
    const sel = selectedItem();
    if (!sel) return;
    if (sel.rule) ed.rules = ed.rules.filter((r) => r !== sel.rule);
    if (sel.zone) {
      ed.zones = ed.zones.filter((z) => z !== sel.zone);
      ed.rules = ed.rules.filter((r) => r.zone !== sel.zone.id || r.kind === "tripwire");
    }
    if (sel.mask) ed.masks.splice(sel.index, 1);
    ed.selected = null;
    changed();
    fillForm();
  }

  // --- load and save ---------------------------------------------------------------------
  async function load(camera) {
    const p = await api(`/api/v1/cameras/${encodeURIComponent(camera)}/perimeter`);
    if (opened !== camera) return; // another camera's editor was opened meanwhile
    // Each shape remembers its id in the file, so that a rename keeps the entry's other keys.
    for (const z of p.zones) z.was = z.id;
    for (const r of p.rules) r.was = r.id;
    ed = { camera, version: p.version, zones: p.zones, masks: p.object_masks, rules: p.rules, selected: null, drawing: null, problems: [], dirty: false };
    $("#edit-save").disabled = true;
    $("#edit-state").textContent = t("edit.saved_state");
    stopDrawing();
    render();
    fillForm();
    showProblems();
  }

  function showProblems() {
    const box = $("#edit-problems");
    box.textContent = "";
    box.hidden = !ed.problems.length;
    if (!ed.problems.length) return;
    box.append(el("p", { class: "error", text: t("edit.invalid", { n: ed.problems.length }) }));
    box.append(el("ul", {}, ...ed.problems.map((p) => {
      const where = p.shape ? (p.shape.rule ? t("edit.shape.rule", { id: p.shape.rule }) : p.shape.zone ? t("edit.shape.zone", { id: p.shape.zone })
        : t("edit.shape.mask", { n: p.shape.mask + 1 })) : p.path;
      return el("li", { text: where + ": " + p.message });
    })));
  }

  async function save() {
    if (ed.drawing) finishDrawing();
    const body = { version: ed.version, zones: ed.zones, object_masks: ed.masks, rules: ed.rules };
    $("#edit-save").disabled = true;
    try {
      const r = await api(`/api/v1/cameras/${encodeURIComponent(ed.camera)}/perimeter`, {
        method: "PUT",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      const keep = ed.selected;
      await load(ed.camera);
      ed.selected = keep;
      render();
      fillForm();
      $("#edit-state").textContent = r.changed ? t("edit.applied") : t("edit.nothing");
      notice(r.changed ? t("edit.applied") : t("edit.nothing"));
    } catch (e) {
      $("#edit-save").disabled = false;
      if (e.status === 422 && e.body && e.body.problems) {
        ed.problems = e.body.problems;
        const first = ed.problems.find((p) => p.shape);
        if (first) ed.selected = first.shape.rule !== undefined ? key("rule", first.shape.rule)
          : first.shape.zone !== undefined ? key("zone", first.shape.zone) : key("mask", first.shape.mask);
        render();
        fillForm();
        showProblems();
        $("#edit-state").textContent = t("edit.refused");
      } else {
        $("#edit-state").textContent = t("edit.refused");
        notice(e.status === 403 ? t("edit.forbidden") : t("error.generic", { reason: e.message }));
      }
    }
  }

  function bind() {
    const svg = $("#edit-svg");
    svg.addEventListener("pointerdown", (ev) => {
      if (!ed) return;
      if (ed.drawing) {
        ev.preventDefault();
        ed.drawing.points.push(at(ev));
        render();
      } else {
        ed.selected = null;
        render();
        fillForm();
      }
    });
    svg.addEventListener("dblclick", () => finishDrawing());
    // Nothing to do before the perimeter has loaded.
    const when = (f) => () => { if (ed) f(); };
    $("#edit-add-tripwire").addEventListener("click", when(() => startDrawing("tripwire")));
    $("#edit-add-zone").addEventListener("click", when(() => startDrawing("zone")));
    $("#edit-add-mask").addEventListener("click", when(() => startDrawing("mask")));
    $("#edit-finish").addEventListener("click", when(finishDrawing));
    $("#edit-cancel-draw").addEventListener("click", when(() => { stopDrawing(); render(); }));
    $("#shape-form").addEventListener("submit", (ev) => ev.preventDefault());
    $("#edit-save").addEventListener("click", when(save));
    $("#edit-revert").addEventListener("click", when(() => load(ed.camera)));
    document.addEventListener("keydown", (ev) => {
      if (!ed || !ed.drawing || $("#page-edit").hidden) return;
      if (ev.key === "Enter") { ev.preventDefault(); finishDrawing(); }
      if (ev.key === "Escape") { stopDrawing(); render(); }
    });
  }

  let bound = false;
  let opened = null;
  return async function editPage(camera) {
    if (!bound) { bind(); bound = true; }
    opened = camera;
    ed = null;
    kw.show("edit");
    const cam = kw.state.cameras.find((c) => c.id === camera);
    $("#edit-title").textContent = t("edit.title", { camera: cam ? cam.name + " (" + camera + ")" : camera });
    const img = $("#edit-picture");
    const refresh = () => { img.src = `/api/v1/cameras/${encodeURIComponent(camera)}/frame.jpg?t=${Date.now()}`; };
    refresh();
    every(1000, () => { if (!document.hidden) refresh(); });
    try {
      await load(camera);
    } catch (e) {
      notice(e.status === 403 ? t("edit.forbidden") : t("error.generic", { reason: e.message }));
    }
  };
};
