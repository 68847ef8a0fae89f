// netagents --web: the network drawn in SVG by this script, kept live by
// Server-Sent Events (/netagents/events). Plain JavaScript, no library.
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const W = 900, H = 500, R = 26;
  let routers = [], links = new Map(), agents = new Map(), routes = {}, alerts = [];
  let selected = null, clock = {server: 0, client: 0}, outcome = null;
  const fresh = new Map();

  function svg(tag, attrs, parent) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  }
  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }
  function mark(key) { fresh.set(key, performance.now()); }
  function isFresh(key, ms) { const t = fresh.get(key); return t !== undefined && performance.now() - t < (ms || 2500); }
  function transportClass(t) { return t === "zmq+tcp" || t === "zmq" ? "zmq" : t; }

  // where each router sits: one square per site, sites side by side
  function positions() {
    const sites = [...new Set(routers.map(r => r.split("/")[0]))].sort();
    const place = {};
    sites.forEach((site, s) => {
      const mine = routers.filter(r => r.startsWith(site + "/")).sort();
      const cx = W * (s + 0.5) / sites.length, cy = H / 2 - 10, radius = Math.min(150, W / sites.length / 3);
      mine.forEach((r, i) => {
        const angle = -3 * Math.PI / 4 + i * 2 * Math.PI / mine.length;
        place[r] = [cx + radius * Math.cos(angle), cy + radius * Math.sin(angle)];
      });
      place["site:" + site] = [cx, cy, radius];
    });
    return {sites, place};
  }

  // the links that the selected router's traffic takes: walk every router's next hops
  function routeLinks() {
    const used = new Set();
    if (!selected) return used;
    for (const dest of routers) {
      let at = selected;
      for (let i = 0; i < routers.length && at !== dest; i++) {
        const hop = (routes[at] || {})[dest];
        if (!hop) break;
        used.add([at, hop[0]].sort().join("|"));
        at = hop[0];
      }
    }
    return used;
  }

  // the control point of a curve between (x1, y1) and (x2, y2) that keeps its middle
  // farthest from every router
  function bendAway(x1, y1, x2, y2, place) {
    const len = Math.hypot(x2 - x1, y2 - y1) || 1, nx = (y1 - y2) / len, ny = (x2 - x1) / len;
    let best = null, room = -1;
    for (const bend of [0.22 * len, -0.22 * len, 0.4 * len, -0.4 * len]) {
      const cx = (x1 + x2) / 2 + nx * bend, cy = (y1 + y2) / 2 + ny * bend;
      const mx = (x1 + 2 * cx + x2) / 4, my = (y1 + 2 * cy + y2) / 4;
      const near = Math.min(...routers.map(r => Math.hypot(place[r][0] - mx, place[r][1] - my)));
      if (near > room + 20) { best = [cx, cy]; room = near; }
    }
    return best;
  }

  function drawGraph() {
    const graph = document.getElementById("graph");
    graph.replaceChildren();
    const {sites, place} = positions();
    for (const site of sites) {
      const [cx, cy, radius] = place["site:" + site];
      svg("rect", {class: "site", x: cx - radius - 70, y: cy - radius - 70, width: 2 * radius + 140,
                   height: 2 * radius + 150, rx: 18}, graph);
      svg("text", {class: "site-label", x: cx - radius - 56, y: cy - radius - 46}, graph).textContent = site;
    }
    const onRoute = routeLinks();
    for (const [key, link] of links) {
      const [x1, y1] = place[link.a], [x2, y2] = place[link.b];
      const cls = "link" + (link.up ? "" : " down") + (onRoute.has(key) ? " route" : "") +
                  (isFresh("link:" + key, 2400) ? " changed" : "");
      // links between sites bend away from the routers they would cross
      const across = link.a.split("/")[0] !== link.b.split("/")[0];
      const [cx, cy] = across ? bendAway(x1, y1, x2, y2, place) : [(x1 + x2) / 2, (y1 + y2) / 2];
      const line = svg("path", {class: cls, d: `M${x1},${y1} Q${cx},${cy} ${x2},${y2}`}, graph);
      line.dataset.link = key;
      const w = svg("g", {class: "weight" + (link.up ? "" : " down")}, graph);
      const mx = (x1 + 2 * cx + x2) / 4, my = (y1 + 2 * cy + y2) / 4;
      svg("circle", {cx: mx, cy: my, r: 12}, w);
      svg("text", {x: mx, y: my}, w).textContent = link.up ? link.weight : "✕";
    }
    for (const router of routers) {
      const [x, y] = place[router], agent = agents.get(router);
      const g = svg("g", {class: "router " + (agent ? transportClass(agent.transport) + (agent.live ? "" : " gone") : "gone") +
                         (agent && agent.migrated ? " migrated" : "") + (router === selected ? " selected" : "")}, graph);
      g.dataset.router = router;
      if (agent) { g.dataset.transport = agent.transport; g.dataset.epoch = agent.epoch; }
      svg("circle", {class: "halo", cx: x, cy: y, r: R + 6}, g);
      svg("circle", {class: "body", cx: x, cy: y, r: R}, g);
      svg("text", {class: "name", x, y}, g).textContent = router.split("/")[1];
      const below = y + R + 18;
      svg("text", {class: "where", x, y: below}, g).textContent =
        agent ? agent.transport + " · epoch " + agent.epoch + (agent.live ? "" : " · stopped") : "starting";
      if (agent && agent.migrated) svg("text", {class: "moved", x, y: below + 15}, g).textContent = "migrated";
      const title = svg("title", {}, g);
      title.textContent = router + (agent ? "\n" + agent.address : "");
      g.addEventListener("click", () => { selected = router; render(); });
    }
  }

  function drawRoutes() {
    document.getElementById("selected").textContent = selected || "—";
    const body = document.querySelector("#routes tbody"), table = routes[selected] || {};
    body.replaceChildren(...Object.keys(table).sort().map(dest => {
      const tr = el("tr");
      if (isFresh("route:" + selected + ">" + dest)) tr.className = "fresh";
      tr.dataset.dest = dest;
      tr.append(el("td", dest), el("td", table[dest][0]), el("td", table[dest][1], "num"));
      return tr;
    }));
  }

  function drawAlerts() {
    const list = document.getElementById("alerts");
    list.replaceChildren(...alerts.slice(-150).reverse().map(a => {
      const li = el("li", undefined, (a.topic === "admin" ? "admin" : "") + (isFresh("alert:" + a.n) ? " fresh" : ""));
      li.dataset.topic = a.topic;
      li.append(el("span", a.at.toFixed(1) + " s", "when"), el("span", a.topic, "topic " + a.topic.replace("/", "-")),
                el("span", a.text, "text"));
      return li;
    }));
  }

  function drawOutcome() {
    const box = document.getElementById("outcome");
    if (!outcome) { box.hidden = true; return; }
    box.hidden = false;
    const m = outcome.messages || {}, mig = outcome.migration || {};
    box.className = outcome.ok ? "ok" : "failed";
    box.textContent = (outcome.ok ? "OK" : "FAILED") + ": every routing table equals Dijkstra's · " +
      (m.sent || 0) + " messages sent by name, " + (m.lost || 0) + " lost · " +
      (mig.router ? mig.router + " migrated " + (mig.from || "") + " → " + (mig.to || "") : "");
    document.body.dataset.finished = outcome.ok ? "ok" : "failed";
  }

  let alertNo = 0;
  function addAlert(a) { a.n = ++alertNo; alerts.push(a); if (alerts.length > 400) alerts.shift(); mark("alert:" + a.n); }

  function apply(u) {
    switch (u.type) {
      case "snapshot":
        routers = u.routers; links = new Map(u.links.map(l => [l.a + "|" + l.b, l]));
        agents = new Map(u.agents.map(a => [a.router, a])); routes = u.routes; alerts = []; outcome = u.outcome;
        for (const a of u.alerts) addAlert(a);
        if (!selected || !routers.includes(selected)) selected = routers[0];
        break;
      case "link": links.set(u.key, u); mark("link:" + u.key); break;
      case "agent": agents.set(u.router, u); break;
      case "routes": {
        const old = routes[u.router] || {};
        for (const [dest, hop] of Object.entries(u.routes))
          if (!old[dest] || old[dest][0] !== hop[0] || old[dest][1] !== hop[1]) mark("route:" + u.router + ">" + dest);
        routes[u.router] = u.routes; break;
      }
      case "alert": addAlert(u); break;
      case "say":
        document.getElementById("step").textContent = u.text;
        if (u.text.startsWith("admin: ")) addAlert({at: u.at, topic: "admin", text: u.text.slice(7)});
        break;
      case "finished": outcome = u; break;
    }
  }

  let pending = false;
  function render() {
    if (pending) return;
    pending = true;
    setTimeout(() => { pending = false; drawGraph(); drawRoutes(); drawAlerts(); drawOutcome(); }, 40);
  }

  function connect() {
    const status = document.getElementById("status");
    const source = new EventSource("/netagents/events");
    source.onopen = () => { status.textContent = "live"; status.className = "status live"; };
    source.onerror = () => { status.textContent = "reconnecting…"; status.className = "status connecting"; };
    source.onmessage = m => { apply(JSON.parse(m.data)); render(); };
  }
  setInterval(render, 1000);   // let highlights fade
  connect();
})();
