// The live bus dashboard.  Message data goes into the page with textContent
// only, never parsed as HTML: a message carrying markup shows as text.
"use strict";

(function () {
  var MAX_ITEMS = 500;        // messages kept in the page
  var KEEP_ON_RELOAD = 200;   // messages remembered across a reload
  var STORE_KEY = "fedmsg-dashboard";
  var WINDOW = 3600, BUCKETS = 60;

  var list = document.getElementById("messages");
  var statusEl = document.getElementById("status");
  var topicInput = document.getElementById("filter-topic");
  var textInput = document.getElementById("filter-text");
  var shownEl = document.getElementById("shown");
  var gapEl = document.getElementById("gap");

  var items = [];          // oldest first: {seq, data, el}
  var seen = new Set();
  var lastSeq = null;
  var stats = {counts: {}, series: [], start: 0, bucket: WINDOW / BUCKETS, total: 0};

  function text(tag, cls, value) {
    var el = document.createElement(tag);
    if (cls) el.className = cls;
    el.textContent = value == null ? "" : String(value);
    return el;
  }

  function safeLink(link) {
    // Only web links become anchors: no javascript: or data: URLs.
    return typeof link === "string" && /^https?:\/\//i.test(link) ? link : null;
  }

  function render(d) {
    var li = document.createElement("li");
    li.className = "msg";
    li.dataset.seq = String(d.seq_id);
    li.dataset.topic = String(d.topic || "");
    var line = document.createElement("div");
    line.appendChild(text("span", "title", d.title));
    line.appendChild(text("span", "subtitle", d.subtitle));
    li.appendChild(line);
    var meta = document.createElement("div");
    meta.className = "meta";
    var when = d.timestamp || d.received;
    meta.appendChild(text("time", "when", when ? new Date(when * 1000).toLocaleTimeString() : ""));
    meta.appendChild(text("span", "topic", d.topic));
    var who = d.agent || d.username;
    if (who) meta.appendChild(text("span", "user", who));
    var link = safeLink(d.link);
    if (link) {
      var a = text("a", "link", link);
      a.href = link;
      a.rel = "noopener noreferrer";
      a.target = "_blank";
      meta.appendChild(a);
    }
    li.appendChild(meta);
    return li;
  }

  function matches(d) {
    var prefix = topicInput.value.trim();
    if (prefix) {
      var t = String(d.topic || "");
      var parts = t.split(".");
      var short = parts.length > 3 ? parts.slice(3).join(".") : t;
      var p = prefix.replace(/\.$/, "");
      if (!(t === p || t.indexOf(p + ".") === 0 || short === p || short.indexOf(p + ".") === 0)) return false;
    }
    var words = textInput.value.trim().toLowerCase();
    if (words) {
      var hay = [d.title, d.subtitle, d.topic, d.agent, d.username, d.link].join(" ").toLowerCase();
      var all = words.split(/\s+/);
      for (var i = 0; i < all.length; i++) if (hay.indexOf(all[i]) < 0) return false;
    }
    return true;
  }

  function applyFilters() {
    var shown = 0;
    items.forEach(function (it) {
      var ok = matches(it.data);
      it.el.classList.toggle("hidden", !ok);
      if (ok) shown++;
    });
    shownEl.textContent = shown + " of " + items.length + " shown";
  }

  function add(d, live) {
    if (seen.has(d.seq_id)) return;
    seen.add(d.seq_id);
    var el = render(d);
    if (!matches(d)) el.classList.add("hidden");
    // Newest on top; replays arrive oldest first, so insert in seq order.
    var i = items.length;
    while (i > 0 && items[i - 1].seq > d.seq_id) i--;
    var before = i < items.length ? items[i].el : null;
    list.insertBefore(el, before ? before.nextSibling : list.firstChild);
    items.splice(i, 0, {seq: d.seq_id, data: d, el: el});
    while (items.length > MAX_ITEMS) {
      var old = items.shift();
      seen.delete(old.seq);
      old.el.remove();
    }
    if (lastSeq === null || d.seq_id > lastSeq) lastSeq = d.seq_id;
    if (live) count(d);
  }

  function remember() {
    try {
      sessionStorage.setItem(STORE_KEY, JSON.stringify({
        last: lastSeq,
        items: items.slice(-KEEP_ON_RELOAD).map(function (it) { return it.data; })
      }));
    } catch (e) { /* storage full or disabled: a reload shows the backlog instead */ }
  }

  function restore() {
    try {
      var saved = JSON.parse(sessionStorage.getItem(STORE_KEY) || "null");
      if (saved && Array.isArray(saved.items)) {
        saved.items.forEach(function (d) { if (d && typeof d.seq_id === "number") add(d, false); });
        if (typeof saved.last === "number") lastSeq = saved.last;
      }
    } catch (e) { /* a damaged entry: start afresh */ }
  }

  // -- statistics -------------------------------------------------------------

  function count(d) {
    var key = d.category || "(none)";
    stats.counts[key] = (stats.counts[key] || 0) + 1;
    stats.total++;
    var now = Date.now() / 1000;
    var b = Math.floor((now - stats.start) / stats.bucket);
    while (b >= BUCKETS && stats.series.length) {  // slide the window
      stats.series.shift(); stats.series.push(0);
      stats.start += stats.bucket; b--;
    }
    if (b >= 0 && b < stats.series.length) stats.series[b]++;
    drawStats();
  }

  function drawStats() {
    document.getElementById("total").textContent = String(stats.total);
    var body = document.querySelector("#counts tbody");
    while (body.firstChild) body.removeChild(body.firstChild);
    Object.keys(stats.counts).sort(function (a, b) {
      return stats.counts[b] - stats.counts[a] || (a < b ? -1 : 1);
    }).slice(0, 20).forEach(function (k) {
      var tr = document.createElement("tr");
      tr.appendChild(text("td", "service", k));
      tr.appendChild(text("td", "count", stats.counts[k]));
      body.appendChild(tr);
    });
    var svg = document.getElementById("chart");
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var max = Math.max.apply(null, [1].concat(stats.series));
    var w = 300 / BUCKETS;
    stats.series.forEach(function (n, i) {
      if (!n) return;
      var h = Math.max(1, 78 * n / max);
      var r = document.createElementNS("http://www.w3.org/2000/svg", "rect");
      r.setAttribute("x", String(i * w + 0.5));
      r.setAttribute("width", String(Math.max(w - 1, 1)));
      r.setAttribute("y", String(80 - h));
      r.setAttribute("height", String(h));
      var title = document.createElementNS("http://www.w3.org/2000/svg", "title");
      title.textContent = n + " messages";
      r.appendChild(title);
      svg.appendChild(r);
    });
    document.getElementById("peak").textContent = "peak " + max + "/" + Math.round(stats.bucket) + "s";
  }

  function loadStats() {
    fetch("/stats?window=" + WINDOW + "&by=category&buckets=" + BUCKETS, {cache: "no-store"})
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(function (s) {
        var counts = {};
        s.counts.forEach(function (c) { counts[c.key == null ? "(none)" : c.key] = c.count; });
        stats = {counts: counts, series: s.series.slice(), start: s.start, bucket: s.bucket, total: s.total};
        drawStats();
      })
      .catch(function () { /* the next refresh tries again */ });
  }

  // -- the live stream -----------------------------------------------------------

  function connect() {
    // EventSource reconnects by itself and then sends Last-Event-ID, which
    // the server prefers to ?since=; so a network blip loses nothing.
    var url = "/events" + (lastSeq !== null ? "?since=" + lastSeq : "?backlog=50");
    var es = new EventSource(url);
    es.onopen = function () { statusEl.textContent = "live"; statusEl.className = "status live"; };
    es.onerror = function () {
      statusEl.textContent = es.readyState === EventSource.CLOSED ? "disconnected" : "reconnecting";
      statusEl.className = "status " + (es.readyState === EventSource.CLOSED ? "down" : "connecting");
      if (es.readyState === EventSource.CLOSED) setTimeout(connect, 5000);
    };
    es.onmessage = function (ev) {
      var d;
      try { d = JSON.parse(ev.data); } catch (e) { return; }
      if (typeof d.seq_id !== "number") return;
      add(d, true);
      applyFilters();
      remember();
    };
    es.addEventListener("gap", function (ev) {
      var g = JSON.parse(ev.data);
      gapEl.textContent = "Some messages after #" + g.after + " are not shown (more than " +
        g.max_replay + " were missed); query /raw for them.";
      gapEl.hidden = false;
    });
  }

  topicInput.addEventListener("input", applyFilters);
  textInput.addEventListener("input", applyFilters);
  document.getElementById("filters").addEventListener("submit", function (e) { e.preventDefault(); });

  restore();
  applyFilters();
  loadStats();
  setInterval(loadStats, 30000);
  connect();
})();
