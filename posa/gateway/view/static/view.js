// posa live view: a snapshot, then live updates over Server-Sent Events (../events).
// Plain JavaScript, no library; text goes into the page as text, never as HTML.
"use strict";
(function () {
  const names = new Map(), services = new Map(), channels = new Map(), queues = new Map();
  let log = [];
  let serverNow = 0, clientAtSnapshot = 0;   // the server's clock, for "x s ago"
  const fresh = new Map();                    // key -> time it last changed
  const FRESH_MS = 2500;

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }
  function mark(key) { fresh.set(key, performance.now()); }
  function isFresh(key) { const t = fresh.get(key); return t !== undefined && performance.now() - t < FRESH_MS; }
  function number(n, digits) {
    if (typeof n !== "number") return "–";
    return digits ? n.toFixed(digits) : n.toLocaleString("en");
  }
  function leaseLeft(entry) {
    return Math.max(0, entry.lease_left - (performance.now() - entry.received) / 1000);
  }
  function serverTime() { return serverNow + (performance.now() - clientAtSnapshot) / 1000; }

  function apply(update) {
    switch (update.type) {
      case "snapshot":
        names.clear(); services.clear(); channels.clear(); queues.clear();
        serverNow = update.now; clientAtSnapshot = performance.now();
        for (const e of update.names) names.set(e.name, Object.assign(e, {received: performance.now()}));
        for (const s of update.services) services.set(s.service, s.servers);
        for (const c of update.channels) channels.set(c.name, c);
        for (const q of update.queues) queues.set(q.name, q);
        log = update.log.slice();
        break;
      case "name": {
        const old = names.get(update.name), now = update.entry;
        if (now) names.set(update.name, Object.assign(now, {received: performance.now()}));
        else names.delete(update.name);
        if (!old || !now || old.epoch !== now.epoch || old.address !== now.address) mark("name:" + update.name);
        break;    // a renewed lease is no news
      }
      case "service":
        if (update.servers.length) services.set(update.service, update.servers);
        else services.delete(update.service);
        mark("service:" + update.service);
        break;
      case "channel": {
        const old = channels.get(update.name);
        if (!old || old.dropped !== update.dropped) mark("channel:" + update.name);
        channels.set(update.name, update); break;
      }
      case "queue": queues.set(update.name, update); break;
      case "log":
        log.push(update.event); if (log.length > 500) log.shift();
        mark("log:" + update.event.seq);
        break;
      case "reset": break;   // the stream ends; EventSource reconnects for a snapshot
    }
  }

  function rows(table, keys, build) {
    const body = document.querySelector(table + " tbody");
    const frag = document.createDocumentFragment();
    for (const key of keys) frag.appendChild(build(key));
    body.replaceChildren(frag);
    document.querySelector(table + "-empty").classList.toggle("hidden", keys.length > 0);
  }

  function renderNames() {
    const filter = document.getElementById("filter").value.trim();
    const internal = document.getElementById("internal").checked;
    const keys = [...names.keys()].sort().filter(n => (internal || !n.startsWith("_posa/"))
                                                   && (!filter || n.includes(filter)));
    rows("#names", keys, name => {
      const e = names.get(name), tr = el("tr");
      tr.dataset.name = name; tr.dataset.epoch = e.epoch; tr.dataset.transport = e.transport;
      if (isFresh("name:" + name)) tr.className = "fresh";
      const who = el("td", name, "mono"); who.title = name; tr.appendChild(who);
      const t = el("td"); t.appendChild(el("span", e.transport, "tag " + e.transport)); tr.appendChild(t);
      const where = el("td", e.address, "mono");
      where.title = e.addresses.join("\n"); tr.appendChild(where);
      if (e.addresses.length > 1) where.textContent += "  +" + (e.addresses.length - 1);
      tr.appendChild(el("td", e.epoch, "num"));
      const left = leaseLeft(e);
      tr.appendChild(el("td", left.toFixed(1) + " s", "num lease" + (left < e.lease / 4 ? " low" : "")));
      const service = el("td", e.service || ""); service.title = e.service || ""; tr.appendChild(service);
      return tr;
    });
  }

  function renderTables() {
    rows("#services", [...services.keys()].sort(), s => {
      const tr = el("tr"), servers = services.get(s);
      tr.dataset.service = s;
      if (isFresh("service:" + s)) tr.className = "fresh";
      const all = el("td", servers.join(", "), "mono"); all.title = servers.join("\n");
      tr.append(el("td", s, "mono"), el("td", servers.length, "num"), all);
      return tr;
    });
    rows("#channels", [...channels.keys()].sort(), c => {
      const x = channels.get(c), tr = el("tr");
      tr.dataset.channel = c; tr.dataset.dropped = x.dropped;
      if (isFresh("channel:" + c)) tr.className = "fresh";
      tr.append(el("td", c, "mono"), el("td", number(x.rate, 1), "num"), el("td", number(x.published), "num"),
                el("td", x.subscribers, "num"), el("td", number(x.buffered), "num"),
                el("td", number(x.dropped) + (x.drop_rate > 0 ? "  (" + number(x.drop_rate, 1) + "/s)" : ""),
                   "num" + (x.dropped > 0 ? " bad" : "")));
      return tr;
    });
    rows("#queues", [...queues.keys()].sort(), q => {
      const x = queues.get(q), tr = el("tr");
      tr.dataset.queue = q; tr.dataset.depth = x.depth;
      tr.append(el("td", q, "mono"), el("td", number(x.depth), "num"), el("td", number(x.in_flight), "num"),
                el("td", x.depth ? x.age.toFixed(0) + " s" : "–", "num"), el("td", number(x.rate, 1), "num"),
                el("td", number(x.dead), "num" + (x.dead > 0 ? " bad" : "")), el("td", x.workers, "num"));
      return tr;
    });
  }

  function renderLog() {
    const list = document.getElementById("log"), frag = document.createDocumentFragment();
    const now = serverTime();
    const internal = document.getElementById("internal").checked;
    for (let i = log.length - 1; i >= 0; i--) {
      const e = log[i], li = el("li");
      if (!internal && e.name.startsWith("_posa/")) continue;
      li.dataset.kind = e.kind; li.dataset.name = e.name;
      if (isFresh("log:" + e.seq)) li.className = "fresh";
      li.append(el("span", ago(now - e.at), "when"), el("span", e.kind, "kind " + e.kind),
                el("span", e.text, "text mono"));
      frag.appendChild(li);
    }
    list.replaceChildren(frag);
  }
  function ago(s) {
    if (s < 60) return Math.max(0, s).toFixed(0) + " s ago";
    if (s < 3600) return (s / 60).toFixed(0) + " min ago";
    return (s / 3600).toFixed(1) + " h ago";
  }

  function renderCounts() {
    const c = document.getElementById("counts");
    c.replaceChildren();
    const internal = document.getElementById("internal").checked;
    const shown = [...names.keys()].filter(n => internal || !n.startsWith("_posa/")).length;
    const parts = [[shown, "names"], [services.size, "services"], [channels.size, "channels"],
                   [queues.size, "queues"]];
    parts.forEach(([n, what], i) => {
      c.append(el("b", n), " " + what + (i < parts.length - 1 ? " · " : ""));
    });
  }

  let pending = false;
  function render() {
    if (pending) return;
    pending = true;
    setTimeout(() => {        // at most 20 renders a second, also in a hidden tab
      pending = false;
      renderNames(); renderTables(); renderLog(); renderCounts();
      document.body.dataset.updated = String(Date.now());
    }, 50);
  }

  function connect() {
    const status = document.getElementById("status");
    const source = new EventSource("events");
    source.onopen = () => { status.textContent = "live"; status.className = "status live"; };
    source.onerror = () => { status.textContent = "reconnecting…"; status.className = "status connecting"; };
    source.onmessage = message => {
      const update = JSON.parse(message.data);
      apply(update);
      if (update.type === "snapshot") document.body.dataset.snapshots = String((+document.body.dataset.snapshots || 0) + 1);
      render();
    };
  }

  document.getElementById("filter").addEventListener("input", render);
  document.getElementById("internal").addEventListener("change", render);
  setInterval(render, 1000);      // lease left counts down; "x s ago" moves on
  connect();
})();
