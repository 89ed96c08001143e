// The coordinator's incident map. Plain JavaScript, no build step, served by the Auxilio server
// from its own binary. It talks only to the server that served it, with the coordinator's token
// in an Authorization header (never in a URL: URLs are logged and kept in histories).
//
// Data flow: the map's bounding box, zoom and filters -> GET /v1/map (the server clusters) ->
// groups and single encounters drawn as markers; a click on an encounter -> GET
// /v1/encounters/{id} in the side panel; the hotspot layer -> GET /v1/hotspots; GET /v1/events
// (Server-Sent Events, read with fetch so the token stays in a header) -> redraw when a device
// syncs.
"use strict";

(() => {
  const TOKEN_KEY = "auxilio.coordinatorToken";
  // Northern Mexico from Baja California to the Gulf: the Sonoran desert and the Río Bravo.
  const START_BOUNDS = [[24.8, -117.4], [33.2, -96.6]];
  const RECONNECT_MIN_MS = 1000;
  const RECONNECT_MAX_MS = 30000;
  // The server sends a keep-alive every 15 s; silence for this long means the link is dead.
  const STREAM_SILENCE_MS = 45000;

  // Reference places drawn over the offline outlines so a coordinator can tell where a cluster
  // is: border crossings and cities along the routes. Public geography, not data.
  const PLACES = [
    ["Tijuana", 32.53, -117.04], ["Mexicali", 32.62, -115.45], ["Sonoyta", 31.86, -112.85],
    ["Sásabe", 31.48, -111.54], ["Nogales", 31.31, -110.94], ["Altar", 30.71, -111.83],
    ["Agua Prieta", 31.33, -109.55], ["Hermosillo", 29.07, -110.96], ["Ciudad Juárez", 31.69, -106.42],
    ["Chihuahua", 28.63, -106.07], ["Ojinaga", 29.56, -104.41], ["Ciudad Acuña", 29.32, -100.93],
    ["Piedras Negras", 28.70, -100.52], ["Nuevo Laredo", 27.48, -99.51], ["Monterrey", 25.69, -100.32],
    ["Reynosa", 26.09, -98.28], ["Matamoros", 25.87, -97.50], ["Tucson", 32.22, -110.97],
    ["Phoenix", 33.45, -112.07], ["San Antonio", 29.42, -98.49], ["Culiacán", 24.80, -107.39],
    ["Torreón", 25.54, -103.41], ["Saltillo", 25.42, -101.00], ["Ciudad de México", 19.43, -99.13],
    ["Tapachula", 14.91, -92.26], ["Tenosique", 17.47, -91.42], ["Coatzacoalcos", 18.15, -94.43],
  ];
  const COUNTRIES = [["UNITED STATES", 34.9, -103.0], ["MEXICO", 26.2, -104.2], ["GUATEMALA", 15.6, -90.3]];

  const $ = (id) => document.getElementById(id);
  const state = {
    token: null,
    whoami: null,
    map: null,
    markers: null,
    hotspots: null,
    mapRequest: null,
    hotspotRequest: null,
    statsRequest: null,
    events: null,
    renders: 0,
    fresh: new Map(), // encounter id -> time it was announced, to highlight it briefly
    selected: null,
    teams: new Set(),
    refreshTimer: null,
  };

  // ---------------------------------------------------------------- small DOM helpers

  // Builds an element; text is always set as text, never parsed as HTML.
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "text") el.textContent = value;
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  const numberFormat = new Intl.NumberFormat();
  const fmt = (n) => numberFormat.format(n);
  const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
  function fmtTime(text) {
    if (!text) return "–";
    const d = new Date(text);
    return Number.isNaN(d.getTime()) ? text : dateFormat.format(d);
  }
  const label = (code) => String(code).replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
  const shortId = (id) => (id && id.length > 10 ? `${id.slice(0, 6)}…${id.slice(-4)}` : id || "");

  let toastTimer = null;
  function toast(text) {
    const el = $("toast");
    el.textContent = text;
    el.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { el.hidden = true; }, 5000);
  }

  function showMapMessage(text) {
    const el = $("map-message");
    el.textContent = text || "";
    el.hidden = !text;
  }

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, signal) {
    const response = await fetch(path, {
      headers: { Authorization: `Bearer ${state.token}`, Accept: "application/json" },
      cache: "no-store",
      signal,
    });
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      try {
        const body = await response.json();
        if (body && body.error) message = body.error + (body.hint ? ` (${body.hint})` : "");
      } catch (_) { /* not JSON */ }
      throw new ApiError(response.status, message);
    }
    return response.json();
  }

  // 401 and 403 end the session with a message that says what to do.
  function authFailure(error) {
    if (!(error instanceof ApiError) || (error.status !== 401 && error.status !== 403)) return false;
    const message = error.status === 401
      ? `The server did not accept this token: it is unknown, mistyped or revoked. (${error.message})`
      : "This token's role does not read the map. The map needs a coordinator or team lead token: ask an administrator for one (auxilio admin device enroll --role coordinator).";
    signOut(message);
    return true;
  }

  // ---------------------------------------------------------------- filters

  function filterParams() {
    const form = $("filters");
    const params = new URLSearchParams();
    for (const name of ["team", "service", "triage", "status", "uasc"]) {
      const value = form.elements[name].value.trim();
      if (value) params.set(name, value);
    }
    for (const name of ["from", "to"]) {
      const value = form.elements[name].value;
      if (value) {
        // datetime-local is the browser's local time; the API takes RFC 3339.
        const d = new Date(value);
        if (!Number.isNaN(d.getTime())) params.set(name, d.toISOString());
      }
    }
    return params;
  }

  function toLocalInput(date) {
    const pad = (n) => String(n).padStart(2, "0");
    return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
  }

  function setQuickRange(range) {
    const form = $("filters");
    const hours = { "24h": 24, "7d": 24 * 7, "30d": 24 * 30 }[range];
    form.elements.from.value = hours ? toLocalInput(new Date(Date.now() - hours * 3600e3)) : "";
    form.elements.to.value = "";
    markQuickRange(range);
  }

  function markQuickRange(range) {
    for (const chip of document.querySelectorAll(".quick-range .chip")) {
      chip.setAttribute("aria-pressed", String(chip.dataset.range === range));
    }
  }

  // ---------------------------------------------------------------- map

  function initMap(config) {
    const map = L.map("map", { zoomControl: false, preferCanvas: false, minZoom: 3, worldCopyJump: true });
    L.control.zoom({ position: "topright" }).addTo(map);
    L.control.scale({ imperial: false, position: "bottomright" }).addTo(map);
    map.attributionControl.setPrefix(false);
    map.createPane("basemap").style.zIndex = "150";
    if (config.tile_url) {
      L.tileLayer(config.tile_url, {
        maxZoom: 18,
        attribution: escapeHtml(config.tile_attribution || ""),
      }).addTo(map);
    } else {
      loadOutlines(map);
    }
    if (!applyHash(map)) map.fitBounds(START_BOUNDS);
    if (!config.tile_url) drawPlaces(map);
    state.markers = L.layerGroup().addTo(map);
    map.on("moveend", () => {
      // The view is kept in the address (#map=zoom/lat/lon) so a coordinator can bookmark or
      // share it; the part after # never reaches a server.
      const c = map.getCenter();
      history.replaceState(null, "", `#map=${map.getZoom()}/${c.lat.toFixed(4)}/${c.lng.toFixed(4)}`);
      scheduleRefresh(120);
    });
    window.addEventListener("hashchange", () => applyHash(map));
    state.map = map;
  }

  function applyHash(map) {
    const match = /^#map=(\d{1,2})\/(-?\d+(?:\.\d+)?)\/(-?\d+(?:\.\d+)?)$/.exec(location.hash);
    if (!match) return false;
    const [zoom, lat, lon] = [Number(match[1]), Number(match[2]), Number(match[3])];
    if (Math.abs(lat) > 90 || Math.abs(lon) > 180) return false;
    map.setView([lat, lon], zoom);
    return true;
  }

  function drawPlaces(map) {
    map.createPane("labels").style.zIndex = "350";
    const places = L.layerGroup(PLACES.map(([name, lat, lon]) => L.marker([lat, lon], {
      pane: "labels",
      interactive: false,
      keyboard: false,
      icon: L.divIcon({ className: "place-label", html: `<span>${escapeHtml(name)}</span>`, iconSize: null, iconAnchor: [2, 8] }),
    })));
    const countries = L.layerGroup(COUNTRIES.map(([name, lat, lon]) => L.marker([lat, lon], {
      pane: "labels",
      interactive: false,
      keyboard: false,
      icon: L.divIcon({ className: "country-label", html: `<span>${escapeHtml(name)}</span>`, iconSize: null }),
    })));
    // Town names only once there is room for them.
    const update = () => {
      const zoom = map.getZoom();
      if (zoom >= 5) places.addTo(map); else places.remove();
      if (zoom >= 4 && zoom <= 8) countries.addTo(map); else countries.remove();
    };
    map.on("zoomend", update);
    update();
  }

  function escapeHtml(text) {
    const div = document.createElement("div");
    div.textContent = text;
    return div.innerHTML;
  }

  // The bundled Natural Earth outlines: land and borders, drawn under everything else.
  async function loadOutlines(map) {
    try {
      const response = await fetch("/assets/basemap/countries.geojson");
      const data = await response.json();
      L.geoJSON(data, {
        pane: "basemap",
        interactive: false,
        style: { color: "#a9a397", weight: 1, fillColor: "#f7f5f0", fillOpacity: 1 },
      }).addTo(map);
      map.attributionControl.addAttribution("Outlines: Natural Earth");
    } catch (error) {
      showMapMessage(`The basemap could not be loaded: ${error.message}`);
    }
  }

  function bboxParam() {
    const b = state.map.getBounds();
    // Leaflet may report longitudes beyond ±180 after panning around the world.
    const clampLon = (x) => Math.max(-180, Math.min(180, x));
    const clampLat = (y) => Math.max(-90, Math.min(90, y));
    return [clampLon(b.getWest()), clampLat(b.getSouth()), clampLon(b.getEast()), clampLat(b.getNorth())]
      .map((n) => n.toFixed(5)).join(",");
  }

  // body[data-loading] is "true" from the moment a redraw is due until the map answer is drawn,
  // so a person (or a test) can tell a settled map from one about to change.
  function scheduleRefresh(delay) {
    clearTimeout(state.refreshTimer);
    document.body.dataset.loading = "true";
    state.refreshTimer = setTimeout(() => {
      state.refreshTimer = null;
      refresh();
    }, delay);
  }

  function refresh() {
    if (!state.token || !state.map) return;
    loadMap();
    loadFigures();
    if ($("toggle-hotspots").checked) loadHotspots();
  }

  // Counted figures for what is in view, from /v1/stats with the same box and filters. Open
  // encounters are the total less those a status=closed query would count, so one request does.
  async function loadFigures() {
    if (state.statsRequest) state.statsRequest.abort();
    const controller = new AbortController();
    state.statsRequest = controller;
    const params = filterParams();
    params.set("bbox", bboxParam());
    try {
      const [all, closed] = await Promise.all([
        api(`/v1/stats?${params}`, controller.signal),
        params.get("status") ? null : api(`/v1/stats?${params}&status=closed`, controller.signal),
      ]);
      if (controller.signal.aborted) return;
      const t = all.totals || {};
      const open = params.get("status") === "closed" ? 0
        : params.get("status") === "open" ? t.encounters : t.encounters - ((closed && closed.totals.encounters) || 0);
      for (const [id, value] of [["people", t.people], ["rescues", t.rescues], ["injured", t.injured],
        ["uasc", t.uasc], ["deceased", t.deceased], ["open", open]]) {
        $(`figure-${id}`).textContent = typeof value === "number" ? fmt(value) : "–";
      }
      $("figures").hidden = false;
    } catch (error) {
      if (error.name === "AbortError") return;
      if (authFailure(error)) return;
      $("figures").hidden = true;
    } finally {
      if (state.statsRequest === controller) state.statsRequest = null;
    }
  }

  async function loadMap() {
    if (state.mapRequest) state.mapRequest.abort();
    const controller = new AbortController();
    state.mapRequest = controller;
    const params = filterParams();
    params.set("bbox", bboxParam());
    params.set("zoom", String(Math.round(state.map.getZoom())));
    $("loading").hidden = false;
    try {
      const data = await api(`/v1/map?${params}`, controller.signal);
      if (controller.signal.aborted) return;
      render(data);
      showMapMessage("");
    } catch (error) {
      if (error.name === "AbortError") return;
      if (authFailure(error)) return;
      showMapMessage(`The map could not be loaded: ${error.message}`);
    } finally {
      if (state.mapRequest === controller) {
        state.mapRequest = null;
        $("loading").hidden = true;
        if (!state.refreshTimer) document.body.dataset.loading = "false";
      }
    }
  }

  function clusterSize(count) {
    return Math.round(28 + 11 * Math.log10(Math.max(1, count)));
  }

  function triageOf(point) {
    // The worst category present, whether the API gives one value or a list.
    const order = ["black", "red", "yellow", "gray", "green"];
    const values = Array.isArray(point.triage) ? point.triage : point.triage ? [point.triage] : [];
    return order.find((c) => values.includes(c)) || null;
  }

  function render(data) {
    const now = Date.now();
    for (const [id, at] of state.fresh) if (now - at > 15000) state.fresh.delete(id);
    state.markers.clearLayers();
    const clusters = data.clusters || [];
    const points = data.points || [];
    for (const cluster of clusters) {
      const size = clusterSize(cluster.count);
      const icon = L.divIcon({
        className: `aux-cluster${cluster.count >= 100 ? " big" : ""}`,
        html: `<span>${fmt(cluster.count)}</span>`,
        iconSize: [size, size],
      });
      const marker = L.marker([cluster.lat, cluster.lon], {
        icon,
        keyboard: true,
        title: `${fmt(cluster.count)} encounters here: select to zoom in`,
        riseOnHover: true,
      });
      marker.on("click", () => zoomInto(cluster));
      marker.on("add", () => {
        const el = marker.getElement();
        el.dataset.count = String(cluster.count);
        el.setAttribute("aria-label", `${cluster.count} encounters; zoom in`);
      });
      marker.addTo(state.markers);
    }
    for (const point of points) {
      const triage = triageOf(point);
      const classes = ["aux-point", triage ? `triage-${triage}` : "triage-none", `status-${point.status || "open"}`];
      if (point.uasc) classes.push("uasc");
      if (state.fresh.has(point.id)) classes.push("fresh");
      if (state.selected === point.id) classes.push("selected");
      const services = (point.services || []).map(label).join(", ");
      const title = [
        `Encounter ${shortId(point.id)}`,
        point.status ? label(point.status) : null,
        triage ? `triage ${triage}` : null,
        point.uasc ? "UASC present" : null,
        services || null,
        point.occurred_at ? fmtTime(point.occurred_at) : null,
      ].filter(Boolean).join(" · ");
      const marker = L.marker([point.lat, point.lon], {
        icon: L.divIcon({ className: classes.join(" "), iconSize: [16, 16] }),
        keyboard: true,
        title,
        riseOnHover: true,
      });
      marker.on("click", () => openDetail(point.id));
      marker.on("add", () => {
        const el = marker.getElement();
        el.dataset.id = point.id;
        el.setAttribute("aria-label", title);
      });
      marker.addTo(state.markers);
    }
    const shown = clusters.reduce((n, c) => n + c.count, 0) + points.length;
    const total = typeof data.total === "number" ? data.total : shown;
    $("summary-total").textContent = fmt(total);
    $("summary-label").textContent = total === 1 ? "encounter" : "encounters";
    $("summary").dataset.total = String(total);
    $("summary-detail").textContent = points.length || clusters.length
      ? `${fmt(points.length)} shown one by one, ${fmt(clusters.length)} ${clusters.length === 1 ? "group" : "groups"}`
      : "Nothing matches in this area. Zoom out or clear filters.";
    state.renders += 1;
    document.body.dataset.renders = String(state.renders);
  }

  function zoomInto(cluster) {
    const b = cluster.bbox;
    if (Array.isArray(b) && b.length === 4 && (b[2] - b[0] > 1e-6 || b[3] - b[1] > 1e-6)) {
      state.map.fitBounds([[b[1], b[0]], [b[3], b[2]]], { padding: [40, 40], maxZoom: 16 });
    } else {
      state.map.setView([cluster.lat, cluster.lon], Math.min(state.map.getZoom() + 3, 16));
    }
  }

  async function loadHotspots() {
    if (state.hotspotRequest) state.hotspotRequest.abort();
    const controller = new AbortController();
    state.hotspotRequest = controller;
    try {
      // With the view's box the server sizes its cells to the view.
      const params = filterParams();
      params.set("bbox", bboxParam());
      const data = await api(`/v1/hotspots?${params}`, controller.signal);
      if (controller.signal.aborted || !$("toggle-hotspots").checked) return;
      drawHotspots(data);
    } catch (error) {
      if (error.name === "AbortError") return;
      if (authFailure(error)) return;
      showMapMessage(`Hotspots could not be loaded: ${error.message}`);
    } finally {
      if (state.hotspotRequest === controller) state.hotspotRequest = null;
    }
  }

  function drawHotspots(data) {
    clearHotspots();
    const features = (data && data.features) || [];
    const max = features.reduce((m, f) => Math.max(m, Number(f.properties && f.properties.count) || 0), 1);
    state.hotspots = L.geoJSON(data, {
      style: (feature) => {
        const share = (Number(feature.properties && feature.properties.count) || 0) / max;
        return { color: "#b3261e", weight: 1, opacity: 0.7, fillColor: "#e4572e", fillOpacity: 0.12 + 0.33 * share };
      },
      onEachFeature: (feature, layer) => {
        const p = feature.properties || {};
        const parts = [`${fmt(Number(p.count) || 0)} encounters with a rescue or injuries`];
        if (typeof p.rescues === "number") parts.push(`${fmt(p.rescues)} rescues`);
        if (typeof p.injured === "number") parts.push(`${fmt(p.injured)} people injured`);
        layer.bindTooltip(parts.join(" · "), { sticky: true, className: "hotspot-tip" });
      },
    }).addTo(state.map);
    document.body.dataset.hotspots = String(features.length);
  }

  function clearHotspots() {
    if (state.hotspots) state.hotspots.remove();
    state.hotspots = null;
    delete document.body.dataset.hotspots;
  }

  // ---------------------------------------------------------------- detail panel

  async function openDetail(id) {
    state.selected = id;
    for (const el of document.querySelectorAll(".aux-point.selected")) el.classList.remove("selected");
    const el = document.querySelector(`.aux-point[data-id="${CSS.escape(id)}"]`);
    if (el) el.classList.add("selected");
    const panel = $("detail");
    panel.hidden = false;
    $("detail-title").textContent = `Encounter ${shortId(id)}`;
    const body = $("detail-body");
    body.replaceChildren(h("p", { class: "muted", text: "Loading…" }));
    state.map.invalidateSize();
    try {
      const detail = await api(`/v1/encounters/${encodeURIComponent(id)}`);
      if (state.selected !== id) return;
      body.replaceChildren(...detailView(detail));
      panel.dataset.id = id;
    } catch (error) {
      if (authFailure(error)) return;
      body.replaceChildren(h("p", { class: "detail-error", text: `This encounter could not be loaded: ${error.message}` }));
    }
  }

  function closeDetail() {
    state.selected = null;
    $("detail").hidden = true;
    delete $("detail").dataset.id;
    for (const el of document.querySelectorAll(".aux-point.selected")) el.classList.remove("selected");
    state.map.invalidateSize();
  }

  const AGE_BANDS = ["0-4", "5-11", "12-17", "18-59", "60+", "unknown"];

  function detailView(detail) {
    const e = detail.encounter || {};
    const out = [];
    const pills = h("div", { class: "detail-pills" },
      h("span", { class: `pill status-${e.status || "open"}`, text: label(e.status || "open") }),
      (e.services || []).map((s) => h("span", { class: "pill", text: label(s) })),
      detail.clock_suspect ? h("span", { class: "pill warn", text: "Device clock suspect" }) : null,
      detail.complete === false ? h("span", { class: "pill warn", text: "Waiting for changes" }) : null,
    );
    out.push(pills);

    const loc = e.location;
    const meta = [
      ["Team", detail.team],
      ["Occurred", fmtTime(detail.occurred_at)],
      ["Received", fmtTime(detail.received_at)],
      ["Last change", fmtTime(detail.updated_at)],
      ["Location", loc && typeof loc.lat === "number" ? `${loc.lat.toFixed(4)}, ${loc.lon.toFixed(4)}${loc.accuracy_m ? ` (±${loc.accuracy_m} m)` : ""}` : "–"],
      ["Terrain", e.terrain ? label(e.terrain) : "–"],
      ["Hazards", (e.hazards || []).map(label).join(", ") || "–"],
      ["Trigger", e.trigger ? label(e.trigger) : null],
      ["Area", [e.adm1, e.adm2].filter(Boolean).join(" / ") || null],
      ["Encounter id", detail.id],
    ].filter(([, v]) => v !== null && v !== undefined);
    out.push(h("dl", { class: "detail-meta" }, meta.map(([k, v]) => [
      h("dt", { text: k }),
      h("dd", { class: k === "Encounter id" ? "mono" : null, text: v }),
    ])));

    const conflicts = detail.conflicts || [];
    out.push(h("h3", { text: conflicts.length ? `Unresolved conflicts (${conflicts.length})` : "Conflicts" }));
    if (conflicts.length) {
      out.push(h("p", { class: "conflict-note", text: "Devices wrote different values at the same time. The first is shown elsewhere until someone sets the field again." }));
      for (const conflict of conflicts) {
        out.push(h("div", { class: "conflict", "data-path": conflict.path },
          h("div", { class: "conflict-path", text: conflict.path }),
          h("ul", {}, (conflict.values || []).map((v, i) => h("li", {},
            h("span", { class: "value", text: JSON.stringify(v.value) + (i === 0 ? "  (shown)" : "") }),
            h("span", { class: "device", title: v.device || "", text: v.device ? `device ${shortId(v.device)}` : "unknown device" }),
          ))),
        ));
      }
    } else {
      out.push(h("p", { class: "muted", text: "None: every device agrees." }));
    }

    const counts = e.counts || {};
    const sexes = [["f", "Women, girls"], ["m", "Men, boys"], ["unknown", "Sex unknown"]];
    const rows = sexes.filter(([k]) => counts[k] && Object.values(counts[k]).some((n) => n > 0));
    const total = rows.reduce((n, [k]) => n + Object.values(counts[k]).reduce((a, b) => a + b, 0), 0);
    out.push(h("h3", { text: `People (${fmt(total)})` }));
    if (rows.length) {
      const bands = AGE_BANDS.filter((band) => rows.some(([k]) => counts[k][band] > 0));
      out.push(h("table", { class: "counts" },
        h("thead", {}, h("tr", {}, h("th", { text: "" }), bands.map((b) => h("th", { scope: "col", text: b })))),
        h("tbody", {}, rows.map(([k, name]) => h("tr", {},
          h("th", { scope: "row", text: name }),
          bands.map((b) => h("td", { text: fmt(counts[k][b] || 0) })),
        ))),
      ));
    }
    const extra = [["injured", "Injured"], ["deceased", "Deceased"], ["uasc", "UASC"], ["pregnant", "Pregnant"]]
      .filter(([k]) => counts[k] > 0)
      .map(([k, name]) => h("span", { class: `pill${k === "deceased" || k === "uasc" ? " warn" : ""}`, text: `${name}: ${fmt(counts[k])}` }));
    if (extra.length) out.push(h("div", {}, extra));
    const nationalities = Object.entries(e.nationality_counts || {}).filter(([, n]) => n > 0);
    if (nationalities.length) {
      out.push(h("p", { class: "muted small", text: `Nationalities: ${nationalities.map(([c, n]) => `${c} ${n}`).join(", ")}` }));
    }

    const casualties = Object.entries(e.casualties || {}).filter(([, c]) => !c.withdrawn_at);
    if (casualties.length) {
      out.push(h("h3", { text: `Casualties (${casualties.length})` }));
      for (const [ref, c] of casualties) {
        const triage = c.triage && c.triage.category;
        out.push(h("div", { class: "casualty" },
          h("div", {},
            triage ? h("span", { class: `pill triage-${triage}`, text: `${label(triage)} (${String(c.triage.method).toUpperCase()})` }) : h("span", { class: "pill", text: "Not triaged" }),
            c.uasc ? h("span", { class: "pill warn", text: c.uasc.handed_over_at ? "UASC handed over" : "UASC awaiting hand-over" }) : null,
          ),
          h("p", { text: [
            [c.sex ? label(c.sex) : null, c.age_band || (c.age_years !== undefined ? `${c.age_years} y` : null)].filter(Boolean).join(", "),
            (c.conditions || []).map(label).join(", "),
            c.disposition ? label(c.disposition) : null,
          ].filter(Boolean).join(" · ") || `Casualty ${ref}` }),
        ));
      }
    }

    const referrals = e.referrals || [];
    if (referrals.length) {
      out.push(h("h3", { text: `Referrals (${referrals.length})` }));
      out.push(h("ul", { class: "small" }, referrals.map((r) => h("li", { text: [label(r.to || r.kind || "referral"), r.status ? label(r.status) : null].filter(Boolean).join(" · ") }))));
    }

    if (e.notes) {
      out.push(h("h3", { text: "Notes" }));
      out.push(h("p", { class: "notes", text: e.notes }));
    }

    const problems = detail.problems || [];
    if (problems.length) {
      out.push(h("h3", { text: "Flagged problems" }));
      out.push(h("ul", { class: "small" }, problems.map((p) => h("li", { text: typeof p === "string" ? p : [p.field, p.message].filter(Boolean).join(": ") || JSON.stringify(p) }))));
    }
    return out;
  }

  // ---------------------------------------------------------------- live updates

  function setLive(stateName, text) {
    $("live").dataset.state = stateName;
    $("live-text").textContent = text;
  }

  // Reads /v1/events with fetch and a stream reader (EventSource cannot send an Authorization
  // header), and reconnects with exponential backoff and jitter.
  async function listen(session) {
    let delay = RECONNECT_MIN_MS;
    let connectedBefore = false;
    while (state.events === session) {
      setLive(connectedBefore ? "reconnecting" : "connecting", connectedBefore ? "Reconnecting…" : "Connecting…");
      const controller = new AbortController();
      session.controller = controller;
      let watchdog = null;
      const arm = () => {
        clearTimeout(watchdog);
        watchdog = setTimeout(() => controller.abort(), STREAM_SILENCE_MS);
      };
      try {
        arm();
        const response = await fetch("/v1/events", {
          headers: { Authorization: `Bearer ${state.token}`, Accept: "text/event-stream" },
          cache: "no-store",
          signal: controller.signal,
        });
        if (response.status === 401 || response.status === 403) {
          clearTimeout(watchdog);
          let message = "";
          try { message = (await response.json()).error || ""; } catch (_) { /* not JSON */ }
          authFailure(new ApiError(response.status, message));
          return;
        }
        if (!response.ok || !response.body) throw new Error(`event stream answered ${response.status}`);
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          arm();
          buffer += value.replace(/\r\n?/g, "\n");
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            const event = parseEvent(block);
            if (!event) continue;
            if (event.type === "ready") {
              delay = RECONNECT_MIN_MS;
              setLive("live", "Live");
              // Anything stored while the stream was down is read now.
              if (connectedBefore) scheduleRefresh(0);
              connectedBefore = true;
            } else {
              onEvent(event);
            }
          }
        }
      } catch (error) {
        if (state.events !== session) return;
      } finally {
        clearTimeout(watchdog);
      }
      if (state.events !== session) return;
      connectedBefore = true;
      setLive("reconnecting", `Reconnecting in ${Math.round(delay / 1000)} s…`);
      await new Promise((resolve) => setTimeout(resolve, delay * (0.75 + Math.random() * 0.5)));
      delay = Math.min(delay * 2, RECONNECT_MAX_MS);
    }
  }

  function parseEvent(block) {
    let type = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue; // comments are keep-alives
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") type = value;
      else if (field === "data") data.push(value);
    }
    if (!data.length && type === "message") return null;
    let payload = null;
    try { payload = JSON.parse(data.join("\n")); } catch (_) { /* not JSON */ }
    return { type, payload };
  }

  function onEvent(event) {
    if (event.type === "encounters" && event.payload) {
      const ids = event.payload.ids || [];
      const teams = event.payload.teams || [];
      const now = Date.now();
      for (const id of ids) state.fresh.set(id, now);
      for (const team of teams) addTeam(team);
      toast(`${fmt(ids.length)} ${ids.length === 1 ? "encounter" : "encounters"} updated${teams.length ? ` by ${teams.join(", ")}` : ""}`);
      scheduleRefresh(250);
      if (state.selected && ids.includes(state.selected)) openDetail(state.selected);
    } else if (event.type === "resync") {
      scheduleRefresh(250);
      if (state.selected) openDetail(state.selected);
    }
  }

  function addTeam(team) {
    if (!team || state.teams.has(team)) return;
    state.teams.add(team);
    const list = $("team-names");
    list.replaceChildren(...[...state.teams].sort().map((t) => h("option", { value: t })));
  }

  // ---------------------------------------------------------------- session

  async function signIn(token) {
    state.token = token;
    const whoami = await api("/v1/whoami");
    // Coordinators see every team; team leads their own (the server scopes every answer).
    const roleNames = { coordinator: "Coordinator", team_lead: "Team lead" };
    if (!roleNames[whoami.role]) throw new ApiError(403, whoami.role);
    state.whoami = whoami;
    sessionStorage.setItem(TOKEN_KEY, token);
    document.body.dataset.signedIn = "true";
    $("signin").hidden = true;
    $("sign-out").hidden = false;
    $("whoami").textContent = `${roleNames[whoami.role]} · ${whoami.team}`;
    state.map.invalidateSize();
    const session = {};
    state.events = session;
    listen(session);
    refresh();
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    state.whoami = null;
    const session = state.events;
    state.events = null;
    if (session && session.controller) session.controller.abort();
    for (const request of [state.mapRequest, state.statsRequest, state.hotspotRequest]) {
      if (request) request.abort();
    }
    if (state.markers) state.markers.clearLayers();
    clearHotspots();
    closeDetail();
    setLive("off", "Not connected");
    document.body.dataset.signedIn = "false";
    $("whoami").textContent = "";
    $("sign-out").hidden = true;
    $("signin").hidden = false;
    const error = $("signin-error");
    error.textContent = message || "";
    error.hidden = !message;
    $("signin-token").value = "";
    $("signin-token").focus();
  }

  async function onSignInSubmit(event) {
    event.preventDefault();
    const token = $("signin-token").value.trim();
    if (!token) return;
    const button = $("signin-submit");
    button.disabled = true;
    $("signin-error").hidden = true;
    try {
      await signIn(token);
    } catch (error) {
      state.token = null;
      if (!authFailure(error)) signOut(`The server could not be reached: ${error.message}`);
    } finally {
      button.disabled = false;
    }
  }

  // ---------------------------------------------------------------- start

  async function start() {
    let config = {};
    try {
      config = await (await fetch("/config.json", { cache: "no-store" })).json();
    } catch (_) { /* outlines then */ }
    initMap(config);

    $("signin-form").addEventListener("submit", onSignInSubmit);
    $("sign-out").addEventListener("click", () => signOut(""));
    $("detail-close").addEventListener("click", closeDetail);
    document.addEventListener("keydown", (e) => { if (e.key === "Escape" && state.selected) closeDetail(); });

    const form = $("filters");
    form.addEventListener("change", (e) => {
      if (e.target.name === "from" || e.target.name === "to") markQuickRange(null);
      scheduleRefresh(0);
    });
    form.addEventListener("submit", (e) => e.preventDefault());
    form.addEventListener("reset", () => {
      markQuickRange("all");
      setTimeout(() => scheduleRefresh(0), 0);
    });
    for (const chip of document.querySelectorAll(".quick-range .chip")) {
      chip.addEventListener("click", () => { setQuickRange(chip.dataset.range); scheduleRefresh(0); });
    }
    $("toggle-hotspots").addEventListener("change", (e) => {
      if (e.target.checked) loadHotspots(); else clearHotspots();
    });

    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) {
      try {
        await signIn(saved);
        return;
      } catch (error) {
        state.token = null;
        if (authFailure(error)) return;
      }
    }
    signOut("");
  }

  document.addEventListener("DOMContentLoaded", start);
})();
