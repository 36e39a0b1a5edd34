// The Status panel and the readiness badge: engines (availability, breaker, reason, TTFB
// percentiles), readiness and the database, polled every few seconds while the tab is visible.
// Each poll publishes the engines' status for the Speak panel (engine list, fallback reasons).

import { $, el, formatMs, replaceChildren, say } from "./dom.js";
import { apiJson } from "./api.js";
import { publish } from "./bus.js";

export const POLL_MS = 3000;
const DASHBOARD_PORT = 8265; // Ray's default; `make run` serves it on loopback only

export function initStatus() {
  const link = $("#dashboard-link");
  link.href = `${location.protocol}//${location.hostname}:${DASHBOARD_PORT}/`;
  link.textContent = `Ray dashboard (${location.hostname}:${DASHBOARD_PORT})`;
  let timer = null;
  let polling = false; // one loop only, however often the tab is hidden and shown again
  const loop = async () => {
    if (polling) return;
    polling = true;
    clearTimeout(timer);
    try {
      await refresh();
    } finally {
      polling = false;
    }
    // A hidden tab does not poll: nobody is looking, and the service has better things to do.
    if (document.visibilityState === "visible") timer = setTimeout(loop, POLL_MS);
  };
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") loop();
  });
  return loop();
}

/** One poll. The three calls are independent: one failing (e.g. 401 without a key) leaves the rest. */
export async function refresh() {
  const [engines, ready, db, deployments] = await Promise.allSettled([
    apiJson("/v1/engines"),
    apiJson("/health/ready", {}, [503]),
    apiJson("/health/db", {}, [503]),
    apiJson("/v1/deployments"),
  ]);
  const problems = [];
  if (engines.status === "fulfilled") {
    publish("engines", engines.value);
    renderEngines(engines.value);
  } else problems.push(`Engines: ${engines.reason.message}`);
  if (ready.status === "fulfilled") renderReady(ready.value);
  else {
    renderReady(null);
    problems.push(`Readiness: ${ready.reason.message}`);
  }
  if (db.status === "fulfilled") renderDatabase(db.value);
  else problems.push(`Database: ${db.reason.message}`);
  if (deployments.status === "fulfilled") renderDeployments(deployments.value);
  else problems.push(`Deployments: ${deployments.reason.message}`);
  say($("#status-message"), problems.join(" · "), problems.length ? "error" : "info");
  $("#status-updated").textContent = new Date().toLocaleTimeString();
}

function renderReady(report) {
  const badge = $("#ready-badge");
  const status = report?.status ?? "unreachable";
  const labels = { ready: "Ready", not_ready: "Not ready", draining: "Draining", unreachable: "Unreachable" };
  badge.textContent = labels[status] ?? status;
  badge.dataset.kind = status === "ready" ? "ok" : status === "draining" ? "warn" : "error";
}

function yesNo(value) {
  return el("span", { className: "pill", dataset: { kind: value ? "ok" : "error" } }, value ? "yes" : "no");
}

function renderEngines(status) {
  $("#status-chain").textContent = (status.chain ?? []).join(" → ") || "–";
  const rows = (status.data ?? []).map((engine) =>
    el(
      "tr",
      { dataset: { engine: engine.name } },
      el("th", { scope: "row", title: engine.title ?? "" }, engine.name),
      el("td", {}, yesNo(engine.available)),
      el(
        "td",
        {},
        el("span", { className: "pill", dataset: { kind: breakerKind(engine.state) } }, engine.state ?? "–"),
        engine.strikes ? ` ${engine.strikes} strike(s)` : "",
        engine.cooldown_left_s ? ` · retry in ${engine.cooldown_left_s.toFixed(1)} s` : "",
      ),
      el("td", { className: "reason" }, engine.reason || engine.last_error || "–"),
      el("td", { className: "num" }, `${engine.in_flight ?? 0} / ${engine.concurrency_limit ?? "–"}`),
      el("td", { className: "num" }, String(engine.requests ?? 0)),
      el("td", { className: "num" }, String(engine.failures ?? 0)),
      el("td", { className: "num" }, formatMs(engine.ttfb_p50_ms)),
      el("td", { className: "num" }, formatMs(engine.ttfb_p95_ms)),
    ),
  );
  replaceChildren($("#engines-table tbody"), rows);
}

function renderDeployments(listing) {
  const rows = (listing.data ?? []).map((deployment) =>
    el(
      "tr",
      { dataset: { deployment: deployment.name } },
      el("th", { scope: "row" }, `${deployment.application}/${deployment.name}`),
      el("td", {}, deployment.status ?? "–"),
      el(
        "td",
        {},
        Object.entries(deployment.replicas ?? {})
          .map(([state, count]) => `${count} ${state.toLowerCase()}`)
          .join(", ") || "none",
      ),
    ),
  );
  if (!rows.length) rows.push(el("tr", {}, el("td", { colSpan: 3 }, listing.reason ?? "no deployments")));
  replaceChildren($("#deployments-table tbody"), rows);
}

function breakerKind(state) {
  return state === "closed" ? "ok" : state === "open" ? "error" : "warn";
}

function renderDatabase(report) {
  const pool = report.pool ?? {};
  const items = [
    ["Health", el("span", { className: "pill", dataset: { kind: report.ok ? "ok" : "error" } }, report.status ?? "–")],
    ["Backend", report.backend ?? "–"],
    ["Probe latency", formatMs(report.latency_ms)],
    ["Pool size", pool.size ?? "–"],
    ["Checked out", pool.checked_out ?? "–"],
    // SQLAlchemy counts overflow from -size (nothing opened yet); what matters is how much is in use.
    ["Overflow in use", pool.overflow === undefined ? "–" : `${Math.max(0, pool.overflow)} of ${pool.max_overflow ?? "–"}`],
    ["Breaker", report.breaker?.state ?? "–"],
  ];
  if (report.error || report.reason) items.push(["Error", report.error || report.reason]);
  replaceChildren(
    $("#db-stats"),
    items.map(([term, value]) => el("div", {}, el("dt", {}, term), el("dd", {}, value))),
  );
}
