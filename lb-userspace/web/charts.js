// Charts of servers' recent past, drawn as SVG from the agent's history
// (GET /api/v1/pools/{pool}/history: a point a second, the last 5 minutes):
// a small one per row of a pool's servers, a larger one on a server's own
// page with its drain (when it began, its deadline) on the same time axis.
// Colours come from style.css (the page's policy allows no inline style).
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  node.append(...children);
  return node;
}

// The points of one series as a polyline's "x,y x,y ...", `value` scaled to [0, top].
function pathOf(points, x, y, value, top) {
  return points.map((p) => `${x(p.at_ms).toFixed(1)},${y(top > 0 ? value(p) / top : 0).toFixed(1)}`).join(" ");
}

// A row's chart: live flows (filled) and new flows/s (a line), each on its
// own scale; the tooltip says the latest and the highest of each.
function sparkline(points) {
  const [w, h] = [120, 28];
  const chart = svg("svg", { class: "spark", width: w, height: h, viewBox: `0 0 ${w} ${h}`, role: "img" });
  if (points.length < 2) {
    chart.setAttribute("aria-label", "No history yet");
    return chart;
  }
  const [t0, t1] = [points[0].at_ms, points[points.length - 1].at_ms];
  const x = (t) => ((t - t0) / Math.max(1, t1 - t0)) * (w - 2) + 1;
  const y = (f) => h - 2 - f * (h - 4);
  const maxFlows = Math.max(...points.map((p) => p.flows));
  const maxRate = Math.max(...points.map((p) => p.new_per_s));
  const flows = pathOf(points, x, y, (p) => p.flows, maxFlows);
  chart.append(
    svg("polygon", { class: "flows-area", points: `${x(t0)},${h - 2} ${flows} ${x(t1)},${h - 2}` }),
    svg("polyline", { class: "flows", points: flows }),
    svg("polyline", { class: "rate", points: pathOf(points, x, y, (p) => p.new_per_s, maxRate) }));
  const last = points[points.length - 1];
  const minutes = ((t1 - t0) / 60000).toFixed(1);
  const said = `Last ${minutes} min: live flows now ${count(last.flows)} (highest ${count(maxFlows)}); ` +
    `new flows/s now ${last.new_per_s.toFixed(1)} (highest ${maxRate.toFixed(1)})`;
  chart.setAttribute("aria-label", said);
  chart.append(svg("title", {}, said));
  return chart;
}

// A server's own chart: live flows against time (left scale), new flows/s
// (right scale), and its drain: a line where it began and one at its
// deadline, the time axis reaching the deadline so that what is left can
// be read against the time left.
function serverChart(points, server, nowMs) {
  const [w, h, left, right, top, bottom] = [720, 240, 48, 48, 12, 28];
  const chart = svg("svg", { class: "server-chart", viewBox: `0 0 ${w} ${h}`, role: "img" });
  const t0 = points.length ? points[0].at_ms : nowMs - 60000;
  const t1 = Math.max(nowMs, server.deadline_ms || 0);
  const x = (t) => left + ((t - t0) / Math.max(1, t1 - t0)) * (w - left - right);
  const y = (f) => h - bottom - f * (h - top - bottom);
  const maxFlows = Math.max(1, ...points.map((p) => p.flows));
  const maxRate = Math.max(1, ...points.map((p) => p.new_per_s));
  chart.append(svg("line", { class: "axis", x1: left, y1: y(0), x2: w - right, y2: y(0) }));
  for (const [f, label] of [[0, "0"], [1, count(maxFlows)]]) {
    chart.append(svg("text", { class: "flows-label", x: left - 6, y: y(f) + 4, "text-anchor": "end" }, label));
  }
  chart.append(svg("text", { class: "rate-label", x: w - right + 6, y: y(1) + 4 }, `${maxRate.toFixed(1)}/s`));
  chart.append(svg("text", { class: "time-label", x: left, y: h - 8 }, clock(t0)));
  chart.append(svg("text", { class: "time-label", x: w - right, y: h - 8, "text-anchor": "end" }, clock(t1)));
  if (points.length >= 2) {
    chart.append(
      svg("polyline", { class: "flows", points: pathOf(points, x, y, (p) => p.flows, maxFlows) }),
      svg("polyline", { class: "rate", points: pathOf(points, x, y, (p) => p.new_per_s, maxRate) }));
  }
  // A vertical mark with its label on a row of its own (they may be close
  // together); the deadline's label on its left, the chart's edge being there.
  const mark = (cls, at, label, row, before = false) => {
    if (at === null || at === undefined || at < t0) return;
    const text = { class: `${cls}-label`, x: x(at) + (before ? -4 : 4), y: top + 10 + 13 * row };
    if (before) text["text-anchor"] = "end";
    chart.append(svg("line", { class: cls, x1: x(at), y1: top, x2: x(at), y2: y(0) }), svg("text", text, label));
  };
  if (server.state !== "ENABLED") mark("since", server.since_ms, server.state === "DRAINING" ? "drain began" : "out", 0);
  mark("now", nowMs, "now", 1);
  if (server.deadline_ms) mark("deadline", server.deadline_ms, `deadline ${clock(server.deadline_ms)}`, 2, true);
  const label = `${server.name}: live flows (left scale) and new flows/s (right scale) since ${clock(t0)}` +
    (server.deadline_ms ? `; drain deadline at ${clock(server.deadline_ms)}` : "");
  chart.setAttribute("aria-label", label);
  chart.append(svg("title", {}, label));
  return chart;
}
