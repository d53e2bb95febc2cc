/* dnas dashboard: the only script, written for this project (no library, nothing fetched from elsewhere).
   Sortable tables, a table filter, live run progress, the per-op ratio chart, small form helpers.
   Every page works without it; it adds live updates and interaction. */
(function () {
  "use strict";

  var SVG = "http://www.w3.org/2000/svg";

  function svg(name, attrs, parent) {
    var el = document.createElementNS(SVG, name);
    Object.keys(attrs || {}).forEach(function (k) { el.setAttribute(k, attrs[k]); });
    if (parent) parent.appendChild(el);
    return el;
  }

  /* ---- sortable tables: every header becomes a button; data-value cells sort as numbers ---- */
  function cellKey(row, index) {
    var cell = row.cells[index];
    if (!cell) return "";
    var v = cell.getAttribute("data-value");
    if (v !== null && v !== "" && !isNaN(Number(v))) return Number(v);
    var text = cell.textContent.trim();
    var n = parseFloat(text);
    return /^[-+]?[0-9]/.test(text) && !isNaN(n) ? n : text.toLowerCase();
  }

  function sortBy(table, index, th) {
    var body = table.tBodies[0];
    if (!body) return;
    var descending = th.getAttribute("aria-sort") === "ascending";
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellKey(a, index), y = cellKey(b, index);
      if (typeof x !== typeof y) { x = String(x); y = String(y); }
      var c = x < y ? -1 : x > y ? 1 : 0;
      return descending ? -c : c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", descending ? "descending" : "ascending");
  }

  function makeSortable(table) {
    if (!table.tHead) return;
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, index) {
      if (!th.textContent.trim()) return;
      var button = document.createElement("button");
      button.type = "button";
      button.className = "sort";
      while (th.firstChild) button.appendChild(th.firstChild);
      th.appendChild(button);
      button.addEventListener("click", function () { sortBy(table, index, th); });
    });
  }

  /* ---- filter a table's rows by text ---- */
  function makeFilter(input) {
    var table = document.getElementById(input.getAttribute("data-filter-table"));
    if (!table) return;
    input.addEventListener("input", function () {
      var q = input.value.trim().toLowerCase();
      Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
        row.classList.toggle("hidden", q !== "" && row.textContent.toLowerCase().indexOf(q) < 0);
      });
    });
  }

  /* ---- live run progress: poll the run's progress until it finishes; no reload ---- */
  function fmt(value, digits) {
    return value === null || value === undefined ? "-" : Number(value).toFixed(digits);
  }

  function setBar(root, p) {
    var total = p.total || 1;
    var widths = { done: 1000 * p.done / total, failed: 1000 * p.failed / total, measuring: 1000 * p.measuring / total };
    var x = 0;
    ["done", "failed", "measuring"].forEach(function (seg) {
      var rect = root.querySelector('[data-seg="' + seg + '"]');
      if (!rect) return;
      rect.setAttribute("x", x.toFixed(1));
      rect.setAttribute("width", widths[seg].toFixed(1));
      x += widths[seg];
    });
    var title = root.querySelector("svg.bar title");
    if (title) {
      title.textContent = p.done + " of " + p.total + " measured, " + p.failed + " failed, " + p.measuring +
        " being measured, " + p.queued + " queued";
    }
  }

  function showProgress(live, p) {
    setBar(live, p);
    live.querySelectorAll("[data-field]").forEach(function (dd) {
      var f = dd.getAttribute("data-field");
      if (f === "ops_per_s") dd.textContent = fmt(p.ops_per_s, 1);
      else if (f === "eta") dd.textContent = p.eta_s === null ? "-" : Math.round(p.eta_s) + " s";
      else dd.textContent = p[f];
    });
    var status = document.getElementById("run-status");
    if (status) { status.textContent = p.status; status.className = "badge st-" + p.status; }
    if (p.table_url) {
      document.getElementById("run-table-link").setAttribute("href", p.table_url);
      document.getElementById("run-table-version").textContent = p.table_version;
      document.getElementById("run-table").classList.remove("hidden");
    }
    var note = document.getElementById("run-note");
    if (note) {
      note.textContent = p.measuring && !p.done ? "An agent is measuring a batch of " + p.measuring +
        " ops together, in interleaved rounds: their results arrive when the rounds finish." : "";
    }
    if (p.reason || (p.errors && p.errors.length)) {
      document.getElementById("run-failure").classList.remove("hidden");
      document.getElementById("run-reason").textContent = p.reason || "";
      var list = document.getElementById("run-errors");
      list.textContent = "";
      p.errors.forEach(function (e) {
        var li = document.createElement("li"), code = document.createElement("code");
        code.textContent = e; li.appendChild(code); list.appendChild(li);
      });
    }
    var finishedAt = document.getElementById("run-finished");
    if (finishedAt && p.finished_at) finishedAt.textContent = p.finished_at.replace("T", " ").slice(0, 19) + " UTC";
    if (p.finished) {
      var cancel = document.getElementById("cancel-form");
      if (cancel) cancel.classList.add("hidden");
    }
  }

  function pollRun(live) {
    var url = live.getAttribute("data-progress-url");
    var updated = document.getElementById("run-updated");
    var failures = 0;
    function tick() {
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) {
          if (!r.ok || (r.headers.get("content-type") || "").indexOf("application/json") < 0) {
            throw new Error("HTTP " + r.status);
          }
          return r.json();
        })
        .then(function (p) {
          failures = 0;
          showProgress(live, p);
          live.setAttribute("data-finished", p.finished ? "true" : "false");
          if (updated) {
            updated.textContent = p.finished ? "Finished: " + p.status + "." : "Updated " + new Date().toLocaleTimeString() + ".";
          }
          if (!p.finished) window.setTimeout(tick, 1000);
        })
        .catch(function (err) {
          failures += 1;
          if (updated) updated.textContent = "Could not update (" + err.message + "); retrying. Reload to sign in again if your session ended.";
          window.setTimeout(tick, Math.min(30000, 1000 * Math.pow(2, failures)));
        });
    }
    if (live.getAttribute("data-finished") !== "true") window.setTimeout(tick, 1000);
  }

  /* ---- per-op ratio chart (compare page): log-scale bars around 1, sortable and filterable ---- */
  function kindOf(key) { return key.split("-")[0].replace(/_g\d+$/, ""); }

  function ratioChart(box) {
    var data = JSON.parse(document.getElementById("ratio-data").textContent || "[]");
    if (!data.length) return;
    var sortSel = document.getElementById("ratio-sort");
    var kindSel = document.getElementById("ratio-kind");
    var topSel = document.getElementById("ratio-top");
    var tip = document.getElementById("ratio-tip");
    var kinds = {};
    data.forEach(function (d) { kinds[kindOf(d.key)] = true; });
    Object.keys(kinds).sort().forEach(function (k) {
      var o = document.createElement("option"); o.value = k; o.textContent = k; kindSel.appendChild(o);
    });
    function describe(d) {
      return d.key + ": A " + d.a_us.toFixed(2) + " us, B " + d.b_us.toFixed(2) + " us, B/A " + d.ratio.toFixed(3);
    }
    function draw() {
      var rows = data.filter(function (d) { return !kindSel.value || kindOf(d.key) === kindSel.value; });
      var order = sortSel.value;
      rows = rows.slice().sort(function (a, b) {
        if (order === "asc") return a.ratio - b.ratio;
        if (order === "desc") return b.ratio - a.ratio;
        if (order === "key") return a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
        return Math.abs(Math.log(b.ratio)) - Math.abs(Math.log(a.ratio));
      });
      var top = Number(topSel.value);
      if (top) rows = rows.slice(0, top);
      var maxLog = 0.05;
      rows.forEach(function (d) { maxLog = Math.max(maxLog, Math.abs(Math.log2(d.ratio))); });
      var label = 300, width = 900, barH = 18, gap = 4, head = 24;
      var height = head + rows.length * (barH + gap) + 8;
      var mid = label + (width - label) / 2, half = (width - label) / 2 - 50;
      box.textContent = "";
      var root = svg("svg", { viewBox: "0 0 " + width + " " + height, role: "presentation" }, box);
      [-1, -0.5, 0.5, 1].forEach(function (f) {
        var x = mid + f * half;
        svg("line", { x1: x, y1: head - 6, x2: x, y2: height, "class": "gridline" }, root);
        svg("text", { x: x, y: head - 10, "text-anchor": "middle" }, root).textContent = "×" + Math.pow(2, f * maxLog).toFixed(2);
      });
      svg("line", { x1: mid, y1: head - 6, x2: mid, y2: height, "class": "zero" }, root);
      svg("text", { x: mid, y: head - 10, "text-anchor": "middle" }, root).textContent = "×1";
      rows.forEach(function (d, i) {
        var y = head + i * (barH + gap);
        var v = Math.log2(d.ratio) / maxLog * half;
        var g = svg("g", { "class": "op", tabindex: "0", "aria-label": describe(d) }, root);
        svg("title", {}, g).textContent = describe(d);
        svg("text", { x: label - 8, y: y + barH - 5, "text-anchor": "end" }, g).textContent = d.key.length > 40 ? d.key.slice(0, 39) + "…" : d.key;
        svg("rect", { x: v >= 0 ? mid : mid + v, y: y, width: Math.max(Math.abs(v), 1), height: barH,
          "class": v >= 0 ? "bar-up" : "bar-down" }, g);
        svg("text", { x: v >= 0 ? mid + v + 4 : mid + v - 4, y: y + barH - 5, "text-anchor": v >= 0 ? "start" : "end" }, g)
          .textContent = d.ratio.toFixed(2);
        function show() { tip.textContent = describe(d) + (d.ratio > 1 ? " (slower in B)" : " (faster in B)"); }
        g.addEventListener("mouseenter", show);
        g.addEventListener("focus", show);
      });
      box.setAttribute("data-bars", String(rows.length));
    }
    [sortSel, kindSel, topSel].forEach(function (s) { s.addEventListener("change", draw); });
    draw();
  }

  /* ---- small helpers ---- */
  function init() {
    document.querySelectorAll("table[data-sortable]").forEach(makeSortable);
    document.querySelectorAll("input[data-filter-table]").forEach(makeFilter);
    document.querySelectorAll("[data-autosubmit]").forEach(function (el) {
      el.addEventListener("change", function () { el.form.submit(); });
    });
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.getAttribute("data-confirm"))) event.preventDefault();
      });
    });
    document.querySelectorAll("[data-select-on-focus]").forEach(function (el) {
      el.addEventListener("focus", function () { el.select(); });
    });
    var live = document.getElementById("run-live");
    if (live) pollRun(live);
    var chart = document.getElementById("ratio-chart");
    if (chart) ratioChart(chart);
    window.dnasDashboard = { ready: true };
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
