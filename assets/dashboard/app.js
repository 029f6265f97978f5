// sync-async dashboard: live figures over server-sent events, hand-drawn SVG charts, the demo's
// bursts and the Redeliver button. Plain JS, no dependency; loaded with `defer`, never inline
// (the Content-Security-Policy allows only this file).
"use strict";

(() => {
  const body = document.body;
  const base = body.dataset.base || "";
  const STORAGE_KEY = "sync-async.dashboard.refresh-ms";

  // --- figures -------------------------------------------------------------------------------

  const at = (obj, path) => path.split(".").reduce((v, k) => (v == null ? undefined : v[k]), obj);

  const show = (v) => {
    if (v === null || v === undefined) return "–";
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(1);
    return String(v);
  };

  function bind(snapshot) {
    for (const el of document.querySelectorAll("[data-field]")) {
      let value = at(snapshot, el.dataset.field);
      // A status a burst never got is absent from its counts: that is a zero, not unknown.
      if (value === undefined && el.dataset.zero !== undefined && snapshot.burst) value = 0;
      el.textContent = show(value);
    }
    for (const m of document.querySelectorAll("meter[data-value-field]")) {
      const max = at(snapshot, m.dataset.maxField);
      const value = at(snapshot, m.dataset.valueField);
      if (typeof max === "number") m.max = Math.max(max, 1);
      if (typeof value === "number") m.value = value;
    }
    const replicas = document.querySelector("[data-replicas]");
    if (replicas) {
      replicas.replaceChildren(
        ...snapshot.metrics.cluster.replicas.map((r) =>
          row([r.id, `${r.workers_busy} / ${r.workers}`, `${r.sync_in_flight} / ${r.sync_max}`, r.last_seen_at]),
        ),
      );
    }
    const burstState = document.querySelector("[data-burst-state]");
    if (burstState && snapshot.burst) {
      const b = snapshot.burst;
      burstState.textContent = b.finished
        ? `#${b.id} finished: ${b.n} ${b.mode}, ${b.operation} complexity ${b.complexity}, last answer after ${Math.round(b.took_ms)} ms`
        : `#${b.id} running: ${b.n} ${b.mode}, ${b.operation} complexity ${b.complexity}`;
      burstState.dataset.finished = String(b.finished);
    }
    for (const svg of document.querySelectorAll("svg[data-chart]")) {
      const chart = CHARTS[svg.dataset.chart];
      if (chart) draw(svg, chart(snapshot.rates));
    }
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const text of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  }

  // --- charts --------------------------------------------------------------------------------

  const last = (values, n) => values.slice(Math.max(values.length - n, 0));
  const sum = (a, b) => a.map((x, i) => x + b[i]);
  const pick = (list, key) => list.map((x) => x[key]);

  // Each chart: the series it draws (label, CSS class, values), its unit and its span.
  const CHARTS = {
    throughput: (r) => ({
      unit: "per second",
      lines: [
        ["200", "s-ok", pick(r.sync, "ok")],
        ["202", "s-accepted", pick(r.async, "ok")],
        ["503", "s-busy", sum(pick(r.sync, "busy"), pick(r.async, "busy"))],
        ["429", "s-limited", sum(pick(r.sync, "limited"), pick(r.async, "limited"))],
      ],
    }),
    sync: (r) => ({
      unit: "per second",
      span: 120,
      lines: [
        ["200", "s-ok", pick(r.sync, "ok")],
        ["503", "s-busy", pick(r.sync, "busy")],
        ["429", "s-limited", pick(r.sync, "limited")],
      ],
    }),
    async: (r) => ({
      unit: "per second",
      span: 120,
      lines: [
        ["202", "s-accepted", pick(r.async, "ok")],
        ["429", "s-limited", pick(r.async, "limited")],
      ],
    }),
    queue: (r) => ({
      unit: "jobs, workers",
      span: 120,
      lines: [
        ["queue depth", "s-limited", r.backlog],
        ["workers busy", "s-async", r.workers_busy],
      ],
    }),
    "lat-sync": (r) => percentiles(r.sync_ms),
    "lat-ack": (r) => percentiles(r.ack_ms),
    "lat-done": (r) => percentiles(r.completion_ms),
  };

  const percentiles = (series) => ({
    unit: "ms",
    span: 120,
    lines: [
      ["p50", "s-p50", pick(series, "p50")],
      ["p95", "s-p95", pick(series, "p95")],
      ["p99", "s-p99", pick(series, "p99")],
    ],
  });

  const SVG = "http://www.w3.org/2000/svg";
  const LEFT = 34, RIGHT = 6, TOP = 24, BOTTOM = 18;

  function el(name, attrs, text) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // Tick labels stay short enough for the margin: 1500 -> 1.5k.
  const tick = (v) => (v >= 1000 ? `${+(v / 1000).toFixed(1)}k` : show(v));

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  // Draws in the SVG's own viewBox units, so a wide chart and a small one keep the same type size.
  function draw(svg, chart) {
    const { width: W, height: H } = svg.viewBox.baseVal;
    // The whole span is drawn even when the server has run for less: the data sits at the right.
    const n = chart.span || 300;
    const lines = chart.lines.map(([label, cls, values]) => [label, cls, last(values, n)]);
    const top = niceMax(Math.max(0, ...lines.flatMap((l) => l[2].filter((v) => v != null))));
    const x = (i) => LEFT + ((W - LEFT - RIGHT) * i) / (n - 1);
    const y = (v) => TOP + (H - TOP - BOTTOM) * (1 - v / top);
    const nodes = [];
    for (const f of [0, 0.5, 1]) {
      nodes.push(el("line", { class: "grid", x1: LEFT, x2: W - RIGHT, y1: y(top * f), y2: y(top * f) }));
      nodes.push(el("text", { class: "axis", x: LEFT - 4, y: y(top * f) + 4, "text-anchor": "end" }, tick(top * f)));
    }
    nodes.push(el("text", { class: "axis", x: W - RIGHT, y: 15, "text-anchor": "end" }, chart.unit));
    nodes.push(el("text", { class: "axis", x: LEFT, y: H - 4 }, n >= 120 ? `-${n / 60} min` : `-${n} s`));
    nodes.push(el("text", { class: "axis", x: W - RIGHT, y: H - 4, "text-anchor": "end" }, "now"));
    let legendX = LEFT;
    for (const [label, cls, values] of lines) {
      // A gap (no sample that second) breaks the line rather than drawing a false zero.
      let points = [];
      const flush = () => {
        if (points.length > 1) nodes.push(el("polyline", { class: cls, points: points.join(" ") }));
        if (points.length === 1) {
          const [px, py] = points[0].split(",");
          nodes.push(el("circle", { class: cls, cx: px, cy: py, r: 2.5 }));
        }
        points = [];
      };
      values.forEach((v, i) => {
        if (v == null) flush();
        else points.push(`${x(i + n - values.length).toFixed(1)},${y(v).toFixed(1)}`);
      });
      flush();
      nodes.push(el("rect", { class: cls, x: legendX, y: 6, width: 10, height: 10, rx: 2 }));
      nodes.push(el("text", { class: "legend", x: legendX + 14, y: 15 }, label));
      legendX += 22 + label.length * 6.5;
    }
    svg.replaceChildren(...nodes);
  }

  // --- live updates --------------------------------------------------------------------------

  const refresh = document.getElementById("refresh");
  const beacon = document.querySelector("[data-testid='live-state']");
  let source = null;

  function setBeacon(text, cls) {
    if (!beacon) return;
    beacon.textContent = text;
    beacon.className = `beacon ${cls}`;
  }

  function disconnect() {
    if (source) source.close();
    source = null;
  }

  // Opens the stream at the chosen interval; "off" and a hidden tab close it.
  function connect() {
    disconnect();
    const ms = Number(refresh.value);
    if (!ms) return setBeacon("off", "off");
    if (document.visibilityState === "hidden") return setBeacon("paused while hidden", "off");
    source = new EventSource(`${base}/dashboard/events?every_ms=${ms}`);
    source.addEventListener("snapshot", (event) => {
      bind(JSON.parse(event.data));
      setBeacon(`live, every ${ms / 1000} s`, "on");
    });
    source.addEventListener("problem", (event) => setBeacon(JSON.parse(event.data).detail, "off"));
    source.addEventListener("error", () => setBeacon("reconnecting…", "off"));
  }

  // One snapshot now: after an action while live updates are off.
  async function refreshOnce() {
    const answer = await fetch(`${base}/dashboard/api/snapshot`);
    if (answer.ok) bind(await answer.json());
  }

  if (refresh) {
    const saved = localStorage.getItem(STORAGE_KEY);
    if (saved !== null && [...refresh.options].some((o) => o.value === saved)) refresh.value = saved;
    refresh.addEventListener("change", () => {
      localStorage.setItem(STORAGE_KEY, refresh.value);
      connect();
    });
    document.addEventListener("visibilitychange", connect);
    connect();
  }

  // --- bursts --------------------------------------------------------------------------------

  const burstForm = document.getElementById("burst-form");
  if (burstForm) {
    const n = burstForm.querySelector("#burst-n");
    const message = burstForm.querySelector("[data-testid='burst-message']");
    const say = (text, error) => {
      message.textContent = text;
      message.classList.toggle("error", Boolean(error));
    };
    const showN = () => burstForm.querySelectorAll("[data-burst-n]").forEach((s) => (s.textContent = n.value));
    n.addEventListener("change", showN);
    showN();
    burstForm.addEventListener("submit", (event) => event.preventDefault());
    for (const button of burstForm.querySelectorAll("[data-fire]")) {
      button.addEventListener("click", async () => {
        const order = {
          mode: button.dataset.fire,
          n: Number(n.value),
          operation: burstForm.querySelector("#burst-operation").value,
          complexity: Number(burstForm.querySelector("#burst-complexity").value),
        };
        say("Firing…");
        try {
          const answer = await fetch(`${base}/dashboard/api/burst`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify(order),
          });
          const reply = await answer.json();
          if (!answer.ok) return say(reply.detail || `refused (${answer.status})`, true);
          say(`Burst #${reply.id} fired: ${reply.n} ${reply.mode} request${reply.mode === "both" ? "s each" : "s"}.`);
          if (!source) setTimeout(refreshOnce, 1000);
        } catch (err) {
          say(`The burst could not be sent: ${err.message}`, true);
        }
      });
    }
  }

  // --- redeliver -----------------------------------------------------------------------------

  const redeliver = document.querySelector("[data-redeliver]");
  if (redeliver) {
    const request = document.getElementById("request");
    const id = encodeURIComponent(request.dataset.requestId);
    const status = document.querySelector("[data-testid='redeliver-status']");
    const rows = document.querySelector("[data-attempts]");

    const render = (figures) => {
      rows.replaceChildren(
        ...figures.attempts.map((a) => {
          const tr = row([a.number, a.attempted_at, a.outcome, a.duration_ms, a.error, a.next_retry]);
          tr.dataset.testid = "attempt-row";
          return tr;
        }),
      );
      const state = document.querySelector("[data-testid='delivery-state']");
      if (state && figures.delivery) state.textContent = figures.delivery;
      document.querySelector("[data-no-attempts]")?.remove();
    };

    // Follows the new round until it has made an attempt and settled, or a minute passed.
    const follow = async (before) => {
      const until = Date.now() + 60000;
      while (Date.now() < until) {
        await new Promise((resolve) => setTimeout(resolve, 500));
        const answer = await fetch(`${base}/dashboard/api/requests/${id}`);
        if (!answer.ok) continue;
        const figures = await answer.json();
        render(figures);
        const settled = figures.delivery === "delivered" || figures.delivery === "failed";
        if (figures.attempts.length > before && settled) {
          status.textContent = `Redelivery ${figures.delivery}.`;
          redeliver.disabled = figures.delivery !== "failed";
          return;
        }
      }
      status.textContent = "Still delivering; reload the page to see later attempts.";
    };

    redeliver.addEventListener("click", async () => {
      if (!window.confirm(redeliver.dataset.confirm)) return;
      redeliver.disabled = true;
      const before = rows.children.length;
      const answer = await fetch(`${base}/dashboard/api/requests/${id}/redeliver`, { method: "POST" });
      if (!answer.ok) {
        const problem = await answer.json().catch(() => ({}));
        status.textContent = problem.detail || `refused (${answer.status})`;
        redeliver.disabled = false;
        return;
      }
      status.textContent = "Redelivery started…";
      await follow(before);
    });
  }
})();
