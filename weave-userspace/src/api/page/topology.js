// The live topology page: polls GET /report (the JSON the CLI's `report` prints) and draws
// the mesh as this router sees it. Every text from the report goes in through textContent,
// never as markup: a nickname is whatever a peer chose to call itself.
"use strict";

const POLL_MS = 2000;
const SVG_NS = "http://www.w3.org/2000/svg";
// Peers seen while this page (or an earlier one on this browser) was open: those no longer
// in the mesh are shown as gone.
let seen = {};
let storageKey = null;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

function row(cells, cls) {
  const tr = el("tr", null, cls);
  for (const c of cells) tr.appendChild(c instanceof Node ? c : el("td", c));
  return tr;
}

function fill(tableId, rows) {
  const body = document.querySelector("#" + tableId + " tbody");
  body.replaceChildren(...rows);
}

function bytes(n) {
  if (n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function loadSeen(local) {
  storageKey = "weave-router-seen:" + local;
  try { seen = JSON.parse(localStorage.getItem(storageKey)) || {}; } catch (_) { seen = {}; }
}

function saveSeen() {
  try { localStorage.setItem(storageKey, JSON.stringify(seen)); } catch (_) { /* private mode */ }
}

// Peers known now, and those gone: seen earlier, owning address space or DNS names,
// but no longer in the mesh.
function peersOf(report) {
  const r = report.Router;
  const now = new Map();
  for (const p of r.Peers) now.set(p.name, { name: p.name, nickname: p.nickname, shortId: p.short_id, gone: false });
  for (const p of now.values()) seen[p.name] = p.nickname;
  const gone = new Map();
  const mark = (name, nickname) => {
    if (!name || now.has(name) || gone.has(name)) return;
    gone.set(name, { name, nickname: nickname || seen[name] || "", shortId: null, gone: true });
  };
  for (const [name, nickname] of Object.entries(seen)) mark(name, nickname);
  if (report.IPAM) for (const e of report.IPAM.Entries) if (!e.IsKnownPeer) mark(e.Peer, e.Nickname);
  if (report.DNS) for (const e of report.DNS.Entries) if (!e.Tombstone) mark(e.Origin, "");
  saveSeen();
  return { now, gone };
}

function drawMesh(report, now, gone) {
  const area = document.getElementById("mesh");
  const all = [...now.values(), ...gone.values()];
  const cx = 200, cy = 150, radius = all.length > 1 ? 105 : 0;
  const at = new Map();
  all.forEach((p, i) => {
    const a = (2 * Math.PI * i) / all.length - Math.PI / 2;
    at.set(p.name, { x: cx + radius * Math.cos(a), y: cy + radius * Math.sin(a) });
  });
  const shapes = [];
  const drawn = new Set();
  for (const p of report.Router.Peers) {
    for (const c of p.connections) {
      const key = [p.name, c.remote].sort().join(" ");
      const a = at.get(p.name), b = at.get(c.remote);
      if (!a || !b || drawn.has(key)) continue;
      drawn.add(key);
      const line = svg("line", { x1: a.x, y1: a.y, x2: b.x, y2: b.y, class: c.established ? "established" : "pending" });
      const title = svg("title", {});
      title.textContent = p.name + " — " + c.remote + (c.established ? " established" : " pending");
      line.appendChild(title);
      shapes.push(line);
    }
  }
  for (const p of all) {
    const { x, y } = at.get(p.name);
    const g = svg("g", { class: "peer", "data-peer": p.name });
    const cls = p.gone ? "gone" : p.name === report.Router.Name ? "self" : "";
    g.appendChild(svg("circle", { cx: x, cy: y, r: 14, class: cls }));
    const label = svg("text", { x, y: y + 28 });
    label.textContent = (p.nickname || p.name) + (p.gone ? " (gone)" : "");
    g.appendChild(label);
    const title = svg("title", {});
    title.textContent = p.name;
    g.appendChild(title);
    shapes.push(g);
  }
  area.replaceChildren(...shapes);
}

function render(report) {
  const r = report.Router;
  if (storageKey === null) loadSeen(r.Name);
  document.getElementById("local").textContent = r.Name + " (" + r.NickName + ")";
  document.title = "weave-router " + r.NickName;
  const { now, gone } = peersOf(report);

  fill("peers", [...now.values(), ...gone.values()].map((p) => {
    const state = p.gone ? "gone" : "up";
    const tr = row([p.name, p.nickname, p.shortId === null ? "" : p.shortId.toString(16).padStart(3, "0"), el("td", state, "state-" + state)], "peer" + (p.gone ? " gone" : ""));
    tr.dataset.peer = p.name;
    return tr;
  }));

  const traffic = new Map((report.Datapath.Traffic || []).map((t) => [t.ShortID, t]));
  fill("connections", r.Connections.map((c) => {
    const peer = c.Peer ? c.Peer.Name + "(" + c.Peer.NickName + ")" : "";
    const t = c.Peer ? traffic.get(c.Peer.ShortID) : undefined;
    const up = c.State === "established" || c.State === "pending";
    const mtu = up ? c.Mtu + (c.MtuVerified ? "" : " (unverified)") : "";
    const tr = row([
      c.Outbound ? "→" : "←",
      c.Address,
      el("td", c.State, "state-" + c.State),
      peer,
      up ? c.Overlay : c.Info,
      up ? (c.Encrypted ? "encrypted" : "unencrypted") : "",
      mtu,
      t ? bytes(t.SentBytes) + " / " + t.SentPackets + " pkts" : "",
      t ? bytes(t.ReceivedBytes) + " / " + t.ReceivedPackets + " pkts" : "",
    ], "connection");
    if (c.Peer) tr.dataset.peer = c.Peer.Name;
    tr.dataset.state = c.State;
    return tr;
  }));

  fill("containers", report.Datapath.Containers.map((c) =>
    row([c.ID, c.Names.join(", "), c.MAC, c.Addresses.join(", ")], "container")));

  drawMesh(report, now, gone);
  const when = new Date().toLocaleTimeString();
  document.getElementById("banner").textContent =
    now.size + " peers, " + r.Connections.length + " connections" +
    (gone.size ? ", " + gone.size + " gone" : "") +
    ", encryption " + (r.Encryption ? "on" : "off") + " — updated " + when;
  document.body.dataset.state = "live";
}

async function poll() {
  try {
    const response = await fetch("report", { cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status + ": " + (await response.text()).trim());
    render(await response.json());
  } catch (e) {
    // The router stopped or is restarting: keep the last picture, say so, try again.
    document.body.dataset.state = "unreachable";
    document.getElementById("banner").textContent =
      "router unreachable (" + e.message + "), last seen as shown — retrying";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
