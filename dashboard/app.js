// The fleet dashboard: every number on the page comes from the public API, called with the key the
// user typed (kept in sessionStorage only, sent as Authorization: Bearer). uPlot draws the charts.
"use strict";

(() => {
  const KEY_STORAGE = "telemetry.apiKey";
  const WORST = 20;
  const WINDOW_HOURS = { "24h": 24, "7d": 24 * 7, "30d": 24 * 30 };
  // Rules whose device is a vehicle (device_silent may name a meter or a vehicle).
  const VEHICLE_RULES = ["faulty_charger", "impossible_energy", "battery_overheat"];
  const VERDICTS = ["healthy", "degraded", "faulty", "anomaly", "insufficient_data"];
  const COLORS = { ac: "#2563eb", dc: "#16a34a", efficiency: "#9333ea", temperature: "#ea580c" };

  const state = {
    key: sessionStorage.getItem(KEY_STORAGE),
    scopes: [],
    window: "24h",
    dates: null, // {from: "YYYY-MM-DD", to: "YYYY-MM-DD"} for the "two dates" window
    bucket: null, // chosen by the user, else picked from the window's length
    render: 0, // the current render; answers to an older one are dropped
    charts: [],
    worstRows: [],
    worstSort: { key: "efficiency", ascending: true },
    alertsNext: null,
  };

  const $ = (selector, root = document) => root.querySelector(selector);
  const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

  class ApiError extends Error {
    constructor(status, message, retryAfter) {
      super(message);
      this.status = status;
      this.retryAfter = retryAfter;
    }
  }

  // ---- the API ---------------------------------------------------------------------------------

  async function api(path, { method = "GET", notFound = false } = {}) {
    let response;
    try {
      response = await fetch(path, {
        method,
        cache: "no-store",
        headers: { Authorization: `Bearer ${state.key}`, Accept: "application/json" },
      });
    } catch {
      throw new ApiError(0, "The API cannot be reached: is the server running?");
    }
    if (response.ok) return response.json();
    if (response.status === 404 && notFound) return null;
    let message = response.statusText;
    try {
      message = (await response.json()).message || message;
    } catch {
      // not a JSON error body: keep the status text
    }
    throw new ApiError(response.status, message, response.headers.get("Retry-After"));
  }

  const query = (params) => new URLSearchParams(params).toString();

  // ---- formatting ------------------------------------------------------------------------------

  const DASH = "—";
  const number = (value, digits = 2) =>
    value === null || value === undefined ? DASH
      : value.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  const percent = (ratio) => (ratio === null || ratio === undefined ? DASH : `${(ratio * 100).toFixed(1)} %`);

  function formatted(value, unit) {
    if (unit === "%") return percent(value);
    if (unit === "kWh") return value === null ? DASH : `${number(value)} kWh`;
    if (unit === "°C") return value === null ? DASH : `${number(value, 1)} °C`;
    return value === null || value === undefined ? DASH : value.toLocaleString("en-US");
  }

  const time = (iso) => (iso ? `${new Date(iso).toISOString().slice(0, 16).replace("T", " ")} UTC` : DASH);

  function age(iso, now) {
    if (!iso) return DASH;
    const seconds = Math.max(0, (new Date(now) - new Date(iso)) / 1000);
    if (seconds < 120) return `${Math.round(seconds)} s ago`;
    if (seconds < 7200) return `${Math.round(seconds / 60)} min ago`;
    if (seconds < 172800) return `${Math.round(seconds / 3600)} h ago`;
    return `${Math.round(seconds / 86400)} days ago`;
  }

  // A number shown on the page keeps the API's exact value in data-value.
  function show(element, value, unit = element.dataset.unit) {
    element.textContent = formatted(value, unit);
    element.dataset.value = value === null || value === undefined ? "" : String(value);
  }

  function fill(root, values) {
    for (const element of $$("[data-field]", root)) {
      if (element.dataset.field in values) {
        if (element.classList.contains("verdict")) {
          element.textContent = values[element.dataset.field].replace("_", " ");
          element.dataset.verdict = values[element.dataset.field];
        } else {
          show(element, values[element.dataset.field]);
        }
      }
    }
  }

  function cell(row, text, className) {
    const td = row.insertCell();
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  function keyValueRows(table, rows) {
    const body = table.tBodies[0];
    body.replaceChildren();
    for (const [label, value] of rows) {
      const row = body.insertRow();
      const th = document.createElement("th");
      th.textContent = label;
      row.append(th);
      cell(row, value);
    }
  }

  // ---- states: banner, login -------------------------------------------------------------------

  function banner(message, retry = null) {
    const element = $("#banner");
    element.replaceChildren(message);
    if (retry) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = "Retry";
      button.addEventListener("click", () => retry());
      element.append(" ", button);
    }
    element.hidden = false;
  }

  function failed(error, retry = route) {
    if (!(error instanceof ApiError)) throw error;
    if (error.status === 401) {
      askForKey(`The API key was refused (401: ${error.message}). Enter a valid key.`);
    } else if (error.status === 403) {
      banner(`This API key lacks a scope the dashboard needs (403: ${error.message}). Use a key with the read scope.`);
    } else if (error.status === 503) {
      const wait = error.retryAfter ? ` Retry in ${error.retryAfter} s.` : "";
      banner(`The database is unavailable (503): the numbers cannot be read right now.${wait}`, retry);
    } else if (error.status === 0) {
      banner(error.message, retry);
    } else {
      banner(`The API answered ${error.status}: ${error.message}`, retry);
    }
  }

  function askForKey(message) {
    state.key = null;
    sessionStorage.removeItem(KEY_STORAGE);
    destroyCharts();
    for (const element of $$(".view, #window-bar, #nav, #banner")) element.hidden = true;
    $("#login").hidden = false;
    const error = $("#login-error");
    error.textContent = message || "";
    error.hidden = !message;
    $("#api-key").value = "";
    $("#api-key").focus();
  }

  async function logIn(key) {
    state.key = key;
    const me = await api("/v1/me");
    state.scopes = me.scopes;
    sessionStorage.setItem(KEY_STORAGE, key);
    $("#login").hidden = true;
    $("#nav").hidden = false;
    $("#window-bar").hidden = false;
    route();
  }

  // ---- the window ------------------------------------------------------------------------------

  function currentWindow() {
    if (state.window === "dates" && state.dates) {
      const from = new Date(`${state.dates.from}T00:00:00Z`);
      const to = new Date(`${state.dates.to}T00:00:00Z`);
      to.setUTCDate(to.getUTCDate() + 1); // the second date is included
      return { from: from.toISOString(), to: to.toISOString(), hours: (to - from) / 3.6e6 };
    }
    const hours = WINDOW_HOURS[state.window] || 24;
    const to = new Date();
    to.setUTCSeconds(0, 0);
    const from = new Date(to.getTime() - hours * 3.6e6);
    return { from: from.toISOString(), to: to.toISOString(), hours };
  }

  function describeWindow(w) {
    $("#window-text").textContent = `${time(w.from)} → ${time(w.to)}`;
  }

  // ---- views -----------------------------------------------------------------------------------

  function route() {
    if (!state.key) return askForKey();
    $("#banner").hidden = true;
    const render = ++state.render;
    const [, view, ...rest] = (location.hash || "#/fleet").slice(1).split("/");
    for (const link of $$("#nav a")) link.classList.toggle("active", link.dataset.view === view);
    destroyCharts();
    for (const section of $$(".view")) section.hidden = true;
    const w = currentWindow();
    describeWindow(w);
    let shown;
    if (view === "vehicle" && rest.length) shown = showVehicle(decodeURIComponent(rest.join("/")), w, render);
    else if (view === "alerts") shown = showAlerts(render);
    else shown = showFleet(w, render);
    shown.catch((error) => {
      if (render !== state.render) return;
      unanswered();
      failed(error);
    });
  }

  // What a failed render left waiting says so, instead of loading for ever.
  function unanswered() {
    for (const element of $$(".view [data-field]")) {
      if (element.textContent === "…") element.textContent = DASH;
    }
    for (const chart of $$(".chart[data-state=loading]")) {
      chart.replaceChildren(placeholder("Not available."));
      chart.dataset.state = "failed";
    }
    for (const busy of $$("[aria-busy=true]")) busy.setAttribute("aria-busy", "false");
  }

  async function showFleet(w, render) {
    const section = $("#view-fleet");
    section.hidden = false;
    const grid = $("#fleet");
    grid.setAttribute("aria-busy", "true");
    grid.dataset.from = w.from;
    grid.dataset.to = w.to;
    grid.dataset.worst = String(WORST);
    for (const element of $$("[data-field]", grid)) {
      element.textContent = "…";
      delete element.dataset.value;
    }
    $("#verdicts").replaceChildren();
    $("#freshness").tBodies[0].replaceChildren();
    $("#freshness-note").textContent = "";
    $("#worst").tBodies[0].replaceChildren();
    $("#worst-empty").hidden = true;
    const [fleet, freshness] = await Promise.all([
      api(`/v1/analytics/fleet?${query({ from: w.from, to: w.to, worst: WORST })}`),
      api("/v1/fleet/freshness"),
    ]);
    if (render !== state.render) return;
    fill(grid, { ...fleet, unlinkedVehicles: fleet.vehicles - fleet.linkedVehicles });
    grid.setAttribute("aria-busy", "false");

    const verdicts = $("#verdicts");
    for (const verdict of VERDICTS) {
      const item = document.createElement("li");
      item.dataset.verdict = verdict;
      const name = document.createElement("span");
      name.className = "verdict";
      name.dataset.verdict = verdict;
      name.textContent = verdict.replace("_", " ");
      const count = document.createElement("strong");
      show(count, fleet.verdicts[verdict] ?? 0, "");
      item.append(name, count);
      verdicts.append(item);
    }

    const silentMinutes = Math.round(freshness.silentAfterS / 60);
    const streams = [freshness.meters, freshness.vehicles];
    const freshnessBody = $("#freshness").tBodies[0];
    freshnessBody.replaceChildren();
    for (const [name, label, value] of [
      ["devices", "Devices reporting", (s) => s.devices.toLocaleString("en-US")],
      ["newest", "Newest reading", (s) => age(s.newestReading, freshness.now)],
      ["stored", "Last stored", (s) => age(s.newestReceivedAt, freshness.now)],
      ["stalest", "Stalest device", (s) => age(s.oldestLatestReading, freshness.now)],
      ["silent", `Silent > ${silentMinutes} min`, (s) => s.silent.toLocaleString("en-US")],
    ]) {
      const row = freshnessBody.insertRow();
      row.dataset.row = name;
      const th = document.createElement("th");
      th.textContent = label;
      row.append(th);
      for (const stream of streams) cell(row, value(stream), "num");
    }
    $("#freshness-note").textContent = `Newest reading at ${time(freshness.meters.newestReading)} (meters), `
      + `${time(freshness.vehicles.newestReading)} (vehicles); database clock ${time(freshness.now)}.`;

    state.worstRows = fleet.worst;
    renderWorst();
  }

  function renderWorst() {
    const { key, ascending } = state.worstSort;
    const rows = [...state.worstRows].sort((a, b) => {
      const x = a[key];
      const y = b[key];
      if (x === y) return 0;
      if (x === null) return 1; // no value: last, either way
      if (y === null) return -1;
      return (x < y ? -1 : 1) * (ascending ? 1 : -1);
    });
    for (const th of $$("#worst th")) {
      th.setAttribute("aria-sort", th.dataset.key !== key ? "none" : ascending ? "ascending" : "descending");
    }
    const body = $("#worst").tBodies[0];
    body.replaceChildren();
    for (const vehicle of rows) {
      const row = body.insertRow();
      row.dataset.vehicle = vehicle.vehicleId;
      const link = document.createElement("a");
      link.href = `#/vehicle/${encodeURIComponent(vehicle.vehicleId)}`;
      link.textContent = vehicle.vehicleId;
      row.insertCell().append(link);
      cell(row, vehicle.meterId ?? DASH);
      cell(row, percent(vehicle.efficiency), "num");
      cell(row, number(vehicle.acConsumedKwh), "num");
      cell(row, number(vehicle.dcDeliveredKwh), "num");
      cell(row, number(vehicle.lossKwh), "num");
      cell(row, number(vehicle.avgBatteryTemp, 1), "num");
      const verdict = cell(row, vehicle.verdict.replace("_", " "), "verdict");
      verdict.dataset.verdict = vehicle.verdict;
      row.addEventListener("click", (event) => {
        if (event.target !== link) location.hash = link.getAttribute("href");
      });
    }
    $("#worst-empty").hidden = rows.length > 0;
  }

  async function showVehicle(vehicleId, w, render) {
    const section = $("#view-vehicle");
    section.hidden = false;
    $("#vehicle-title").textContent = `Vehicle ${vehicleId}`;
    const bucket = state.bucket || (w.hours > 24 * 14 ? "1d" : "1h");
    $("#bucket").value = bucket;
    const summary = $("#vehicle-summary");
    for (const element of $$("[data-field]", summary)) element.textContent = "…";
    for (const chart of $$(".chart", section)) {
      chart.replaceChildren(placeholder("Loading…"));
      chart.dataset.state = "loading";
      delete chart.dataset.points;
    }
    keyValueRows($("#vehicle-status"), [["", "Loading…"]]);
    $("#vehicle-links").tBodies[0].replaceChildren();

    const id = encodeURIComponent(vehicleId);
    const span = { from: w.from, to: w.to };
    const [performance, series, status, links] = await Promise.all([
      api(`/v1/analytics/performance/${id}?${query(span)}`, { notFound: true }),
      api(`/v1/analytics/vehicles/${id}/series?${query({ ...span, bucket })}`),
      api(`/v1/vehicles/${id}/status`, { notFound: true }),
      api(`/v1/vehicles/${id}/meter`, { notFound: true }),
    ]);
    if (render !== state.render) return;

    if (performance) fill(summary, performance);
    else fill(summary, { efficiency: null, acConsumedKwh: null, dcDeliveredKwh: null, avgBatteryTemp: null,
                         verdict: "unknown vehicle" });

    drawCharts(section, series, w);

    keyValueRows($("#vehicle-status"), status ? [
      ["Reading time", `${time(status.timestamp)} (${age(status.timestamp, new Date())})`],
      ["State of charge", `${number(status.soc, 1)} %`],
      ["DC in last interval", `${number(status.kwhDeliveredDc, 3)} kWh`],
      ["Battery temperature", `${number(status.batteryTemp, 1)} °C`],
      ["Received", time(status.receivedAt)],
    ] : [["", "No reading from this vehicle yet."]]);

    const body = $("#vehicle-links").tBodies[0];
    if (!links) {
      const row = body.insertRow();
      const td = cell(row, "Not linked to a meter: its AC side is unknown.", "muted");
      td.colSpan = 3;
    } else {
      for (const period of [...links.history].reverse()) {
        const row = body.insertRow();
        cell(row, period.meterId);
        cell(row, period.validFrom ? time(period.validFrom) : "all history");
        cell(row, period.validTo ? time(period.validTo) : "now (current)");
      }
    }
  }

  function placeholder(text) {
    const element = document.createElement("p");
    element.className = "placeholder muted";
    element.textContent = text;
    return element;
  }

  function destroyCharts() {
    for (const chart of state.charts) chart.destroy();
    state.charts = [];
  }

  function drawCharts(section, series, w) {
    const points = series.points;
    const xs = points.map((p) => new Date(p.bucket).getTime() / 1000);
    const definitions = {
      efficiency: [{ label: "Efficiency %", stroke: COLORS.efficiency, values: points.map((p) => p.efficiency === null ? null : p.efficiency * 100) }],
      energy: [
        { label: "AC kWh", stroke: COLORS.ac, fill: "rgba(37, 99, 235, 0.25)", values: points.map((p) => p.acConsumedKwh), bars: 0.8 },
        { label: "DC kWh", stroke: COLORS.dc, fill: "rgba(22, 163, 74, 0.55)", values: points.map((p) => p.dcDeliveredKwh), bars: 0.5 },
      ],
      temperature: [{ label: "°C", stroke: COLORS.temperature, values: points.map((p) => p.avgBatteryTemp) }],
    };
    for (const container of $$(".chart", section)) {
      container.replaceChildren();
      container.dataset.bucket = series.bucket;
      container.dataset.from = series.from;
      container.dataset.to = series.to;
      if (!points.length) {
        container.append(placeholder("No readings in this window."));
        container.dataset.points = "0";
        container.dataset.state = "empty";
        continue;
      }
      const lines = definitions[container.dataset.series];
      const options = {
        width: Math.max(260, container.clientWidth),
        height: 220,
        // The page speaks UTC throughout (window, dates, tables).
        tzDate: (seconds) => uPlot.tzDate(new Date(seconds * 1000), "Etc/UTC"),
        scales: {
          x: { time: true, range: [new Date(w.from) / 1000, new Date(w.to) / 1000] },
          // From zero: a flat series at 58.9 % must not look like a swing.
          y: { range: (chart, min, max) => [Math.min(0, min ?? 0), Math.max((max ?? 0) * 1.1, container.dataset.series === "efficiency" ? 100 : 1)] },
        },
        axes: [{}, { size: 56 }],
        series: [{}, ...lines.map((line) => ({
          label: line.label,
          stroke: line.stroke,
          fill: line.fill,
          width: line.bars ? 1 : 2,
          spanGaps: false,
          points: { show: !line.bars && points.length <= 200 },
          paths: line.bars ? uPlot.paths.bars({ size: [line.bars, 60] }) : undefined,
        }))],
        hooks: {
          // The number of points uPlot has drawn, for whoever checks the chart (the browser tests).
          draw: [(chart) => {
            container.dataset.points = String(chart.data[0].length);
            container.dataset.state = "drawn";
          }],
        },
      };
      state.charts.push(new uPlot(options, [xs, ...lines.map((line) => line.values)], container));
    }
  }

  async function showAlerts(render, append = false) {
    $("#view-alerts").hidden = false;
    const body = $("#alerts").tBodies[0];
    const canAcknowledge = state.scopes.includes("ingest") || state.scopes.includes("admin");
    const note = $("#ack-note");
    note.hidden = canAcknowledge;
    note.textContent = canAcknowledge ? "" : "Acknowledging an alert needs a key with the ingest or admin scope; "
      + `this key has: ${state.scopes.join(", ")}.`;
    if (!append) {
      body.replaceChildren();
      state.alertsNext = null;
    }
    const params = { state: "open", limit: 50 };
    if (append && state.alertsNext) params.cursor = state.alertsNext;
    const page = await api(`/v1/alerts?${query(params)}`);
    if (render !== state.render) return;
    for (const alert of page.alerts) {
      const row = body.insertRow();
      row.dataset.alert = String(alert.id);
      cell(row, time(alert.openedAt));
      cell(row, alert.rule.replace("_", " "));
      const device = row.insertCell();
      if (VEHICLE_RULES.includes(alert.rule)) {
        const link = document.createElement("a");
        link.href = `#/vehicle/${encodeURIComponent(alert.deviceId)}`;
        link.textContent = alert.deviceId;
        device.append(link);
      } else {
        device.textContent = alert.deviceId;
      }
      cell(row, alert.value === null ? DASH : number(alert.value), "num");
      cell(row, time(alert.lastSeenAt));
      const action = row.insertCell();
      acknowledgeCell(action, alert, canAcknowledge);
    }
    state.alertsNext = page.next;
    $("#alerts-empty").hidden = body.rows.length > 0;
    $("#alerts-more").hidden = !page.next;
  }

  function acknowledgeCell(td, alert, canAcknowledge) {
    td.replaceChildren();
    if (alert.acknowledgedAt) {
      td.append(placeholder(`acknowledged ${time(alert.acknowledgedAt)}`));
      return;
    }
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "Acknowledge";
    button.disabled = !canAcknowledge;
    if (!canAcknowledge) button.title = "Needs a key with the ingest or admin scope";
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        acknowledgeCell(td, await api(`/v1/alerts/${alert.id}/acknowledge`, { method: "POST" }), canAcknowledge);
      } catch (error) {
        button.disabled = false;
        failed(error);
      }
    });
    td.append(button);
  }

  // ---- wiring ----------------------------------------------------------------------------------

  function start() {
    $("#login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = $("#api-key").value.trim();
      $("#login-error").hidden = true;
      logIn(key).catch((error) => {
        if (error instanceof ApiError && error.status === 401) askForKey(`This API key was refused (401: ${error.message}).`);
        else if (error instanceof ApiError && error.status === 403) askForKey("This API key lacks the read scope (403): use a key with read.");
        else failed(error, () => logIn(key).catch((again) => failed(again)));
      });
    });
    $("#forget-key").addEventListener("click", () => askForKey());
    $("#window").addEventListener("change", (event) => {
      const dates = event.target.value === "dates";
      $("#dates").hidden = !dates;
      if (!dates) {
        state.window = event.target.value;
        state.bucket = null;
        route();
      }
    });
    $("#apply-dates").addEventListener("click", () => {
      const from = $("#date-from").value;
      const to = $("#date-to").value;
      if (!from || !to || to < from) {
        banner("Pick two dates, the second on or after the first.");
        return;
      }
      state.window = "dates";
      state.dates = { from, to };
      state.bucket = null;
      route();
    });
    $("#bucket").addEventListener("change", (event) => {
      state.bucket = event.target.value;
      route();
    });
    const sortBy = (th) => {
      const { key, ascending } = state.worstSort;
      state.worstSort = { key: th.dataset.key, ascending: key === th.dataset.key ? !ascending : true };
      renderWorst();
    };
    for (const th of $$("#worst th")) {
      th.tabIndex = 0; // sortable from the keyboard too
      th.addEventListener("click", () => sortBy(th));
      th.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          sortBy(th);
        }
      });
    }
    $("#alerts-more").addEventListener("click", () => {
      showAlerts(state.render, true).catch(failed);
    });
    window.addEventListener("hashchange", route);
    let resizing;
    window.addEventListener("resize", () => {
      clearTimeout(resizing);
      resizing = setTimeout(() => {
        for (const chart of state.charts) chart.setSize({ width: Math.max(260, chart.root.parentNode.clientWidth), height: 220 });
      }, 150);
    });
    const today = new Date().toISOString().slice(0, 10);
    $("#date-to").value = today;
    $("#date-from").value = new Date(Date.now() - 7 * 864e5).toISOString().slice(0, 10);
    const resume = () => logIn(state.key).catch((error) => failed(error, resume));
    if (state.key) resume();
    else askForKey();
  }

  start();
})();
