// Live status for the supervisor admin (see apps/supervisor/live.py).
// Elements opt in with data attributes:
//   [data-deployment=ID]   an app's badge on one environment (.app-status + .app-step)
//   [data-env-state=NAME]  an environment's liveness badge
//   [data-heartbeat=NAME]  an environment's last beat, shown as an age that ticks
// The socket sends {type: "update", items: [...]}; on (re)connect the page asks for the
// current state of everything it shows, so nothing is missed while it was away.
(function () {
  "use strict";
  var deployments = {}, environments = {}, socket = null, retry = 1, everOpen = false;

  function collect() {
    document.querySelectorAll("[data-deployment]").forEach(function (el) {
      var id = parseInt(el.dataset.deployment, 10);
      (deployments[id] = deployments[id] || []).push(el);
    });
    document.querySelectorAll("[data-env-state],[data-heartbeat]").forEach(function (el) {
      var name = el.dataset.envState || el.dataset.heartbeat;
      (environments[name] = environments[name] || []).push(el);
    });
  }

  function banner(text, kind) {
    var el = document.getElementById("live-status-banner");
    if (!el) {
      el = document.createElement("div");
      el.id = "live-status-banner";
      el.setAttribute("role", "status");
      var content = document.getElementById("content") || document.body;
      content.insertBefore(el, content.firstChild);
    }
    el.className = "live-" + kind;
    el.textContent = text;
  }

  function setBadge(el, status) {
    el.className = "app-status app-status-" + status;
    el.textContent = status;
  }

  function age(iso) {
    if (!iso) return "never";
    var s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
    if (s < 120) return s + " s ago";
    if (s < 7200) return Math.round(s / 60) + " min ago";
    return Math.round(s / 3600) + " h ago";
  }

  // The same rule as statuses.environment_liveness, so a stale environment turns stale on
  // screen even when nothing is pushed (nothing happens when an environment stops beating).
  function liveness(item) {
    if (item.stored === "offline") return "offline";
    if (!item.interval || !item.last_heartbeat_at) return item.stored;
    var s = (Date.now() - Date.parse(item.last_heartbeat_at)) / 1000;
    if (s > 2 * item.interval + item.grace) return "offline";
    if (s > item.interval + item.grace) return "stale";
    return "online";
  }

  var versions = {};  // newest read applied per item: two processes may publish out of order

  function apply(item) {
    var key = (item.kind === "deployment" ? "d" : "e") + (item.id || item.name);
    if (item.v && versions[key] && item.v < versions[key]) return;
    if (item.v) versions[key] = item.v;
    if (item.kind === "deployment") {
      (deployments[item.id] || []).forEach(function (el) {
        var badge = el.querySelector(".app-status");
        if (badge) setBadge(badge, item.status);
        var step = el.querySelector(".app-step");
        if (step) {
          step.textContent = item.error ? item.error + " (" + item.at + ")" : item.step || "";
          step.className = "app-step" + (item.error ? " app-step-error" : "");
        }
        el.dataset.status = item.status;
      });
    } else if (item.kind === "environment") {
      (environments[item.name] || []).forEach(function (el) {
        if (item.gone) { el.textContent = "purged"; return; }
        el.dataset.item = JSON.stringify(item);
        paintEnvironment(el, item);
      });
    }
  }

  function paintEnvironment(el, item) {
    if (el.dataset.envState) setBadge(el, liveness(item));
    if (el.dataset.heartbeat) {
      el.textContent = age(item.last_heartbeat_at);
      el.title = item.last_heartbeat_at || "";
    }
  }

  function tick() {
    Object.keys(environments).forEach(function (name) {
      environments[name].forEach(function (el) {
        if (el.dataset.item) paintEnvironment(el, JSON.parse(el.dataset.item));
      });
    });
  }

  function connect() {
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + location.host + "/admin/live/");
    socket.onopen = function () {
      retry = 1;
      everOpen = true;
      banner("Live", "ok");
      socket.send(JSON.stringify({
        type: "subscribe",
        deployments: Object.keys(deployments).map(Number),
        environments: Object.keys(environments)
      }));
    };
    socket.onmessage = function (event) {
      var data = JSON.parse(event.data);
      if (data.type === "update") data.items.forEach(apply);
    };
    socket.onclose = function (event) {
      if (event.code === 4403) {
        banner("Live updates need a staff login; reload the page after logging in.", "down");
        return;
      }
      banner((everOpen ? "Live updates disconnected" : "Live updates unavailable") +
             ": reconnecting in " + retry + " s…", "down");
      setTimeout(connect, retry * 1000);
      retry = Math.min(retry * 2, 30);
    };
  }

  document.addEventListener("DOMContentLoaded", function () {
    collect();
    if (!Object.keys(deployments).length && !Object.keys(environments).length) return;
    document.querySelectorAll("[data-env-state],[data-heartbeat]").forEach(function (el) {
      if (el.dataset.stored) {
        var name = el.dataset.envState || el.dataset.heartbeat;
        var item = {kind: "environment", name: name, stored: el.dataset.stored,
                    last_heartbeat_at: el.dataset.at, interval: Number(el.dataset.interval) || null,
                    grace: Number(el.dataset.grace) || 0};
        el.dataset.item = JSON.stringify(item);
      }
    });
    connect();
    setInterval(tick, 1000);
  });
})();
