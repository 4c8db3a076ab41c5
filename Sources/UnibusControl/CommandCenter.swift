import Atomics
import Foundation
import NIOConcurrencyHelpers
import UnibusCrypto

/// Access to the Command Center page (`/cc`): an admin's signed request
/// (`unibus cc open`) gets a single-use code valid for a minute; the page
/// takes it from the URL's fragment (never sent to a server, so never in a
/// log or a Referer), trades it for a session cookie (HttpOnly,
/// SameSite=Strict, Path=/cc, Secure under TLS) and removes it from the
/// address bar. Codes and sessions are kept as SHA-256 digests, bounded in
/// number, and a session ends when its admin is no longer an active admin.
public final class CommandCenter: Sendable {
    public static let codeLifetimeMs: Int64 = 60_000
    public static let sessionLifetimeMs: Int64 = 8 * 3_600_000
    static let maximumCodes = 64
    static let maximumSessions = 128
    /// Live event streams (each an open connection).
    static let maximumStreams = 32
    public static let cookieName = "unibus_cc"

    private struct Grant { let admin: String; let expiresMs: Int64 }
    private let codes = NIOLockedValueBox<[[UInt8]: Grant]>([:])
    private let sessions = NIOLockedValueBox<[[UInt8]: Grant]>([:])
    let streams = ManagedAtomic<Int>(0)

    public init() {}

    static func nowMs() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

    static func randomToken() -> String { Base64.encode(Sodium.randomNonce(count: 32), alphabet: .url) }

    /// A new single-use code for `admin`, or nil when too many are outstanding.
    func issueCode(for admin: String) -> String? {
        let code = Self.randomToken()
        let now = Self.nowMs()
        let stored: Bool = codes.withLockedValue { table in
            table = table.filter { $0.value.expiresMs > now }
            guard table.count < Self.maximumCodes else { return false }
            table[Digest.sha256(Array(code.utf8))] = Grant(admin: admin, expiresMs: now + Self.codeLifetimeMs)
            return true
        }
        return stored ? code : nil
    }

    /// Spends a code; returns a session token and its admin, or nil.
    func redeem(_ code: String) -> (token: String, admin: String)? {
        guard (16...128).contains(code.utf8.count) else { return nil }
        let now = Self.nowMs()
        guard let grant = codes.withLockedValue({ $0.removeValue(forKey: Digest.sha256(Array(code.utf8))) }), grant.expiresMs > now else {
            return nil
        }
        let token = Self.randomToken()
        sessions.withLockedValue { table in
            table = table.filter { $0.value.expiresMs > now }
            // Full: the oldest session ends (admins are few; a new login wins).
            if table.count >= Self.maximumSessions, let oldest = table.min(by: { $0.value.expiresMs < $1.value.expiresMs })?.key {
                table[oldest] = nil
            }
            table[Digest.sha256(Array(token.utf8))] = Grant(admin: grant.admin, expiresMs: now + Self.sessionLifetimeMs)
        }
        return (token, grant.admin)
    }

    /// The admin of the session a Cookie header names, or nil.
    func admin(cookie: String?) -> String? {
        guard let token = Self.token(in: cookie) else { return nil }
        let now = Self.nowMs()
        return sessions.withLockedValue { table in
            guard let grant = table[Digest.sha256(Array(token.utf8))], grant.expiresMs > now else { return nil }
            return grant.admin
        }
    }

    func endSession(cookie: String?) {
        guard let token = Self.token(in: cookie) else { return }
        _ = sessions.withLockedValue { $0.removeValue(forKey: Digest.sha256(Array(token.utf8))) }
    }

    /// The session token in a Cookie header (`a=b; unibus_cc=…`).
    static func token(in cookie: String?) -> String? {
        guard let cookie, cookie.utf8.count <= 8192 else { return nil }
        for part in cookie.split(separator: ";").prefix(64) {
            let pair = part.trimmingCharacters(in: .whitespaces)
            if pair.hasPrefix(cookieName + "=") {
                let value = String(pair.dropFirst(cookieName.count + 1))
                return (16...128).contains(value.utf8.count) ? value : nil
            }
        }
        return nil
    }

    /// The Set-Cookie value for a new session.
    static func setCookie(_ token: String, secure: Bool) -> String {
        "\(cookieName)=\(token); Path=/cc; HttpOnly; SameSite=Strict; Max-Age=\(sessionLifetimeMs / 1000)" + (secure ? "; Secure" : "")
    }

    static func clearCookie(secure: Bool) -> String {
        "\(cookieName)=; Path=/cc; HttpOnly; SameSite=Strict; Max-Age=0" + (secure ? "; Secure" : "")
    }

    /// Headers every Command Center response carries: nothing but this
    /// origin's own files may load or run, nothing may frame the page.
    static let securityHeaders: [(String, String)] = [
        ("content-security-policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
            + "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("cache-control", "no-store"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
    ]
}

/// The page's files, served from memory (no CDN: it works offline). Agent
/// and node strings reach the page only as JSON and are inserted with
/// `textContent`, never as HTML.
enum CommandCenterAssets {
    static let html = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Unibus Command Center</title>
<link rel="stylesheet" href="/cc/app.css">
</head>
<body>
<header>
  <h1>Unibus Command Center</h1>
  <span id="connection" class="connection">connecting…</span>
</header>
<main>
  <p id="login" class="notice" hidden>This page needs a code: run <code>unibus cc open</code> and open the URL it prints.</p>
  <section id="counts" class="counts" aria-label="Fleet counts"></section>
  <h2>Bus nodes</h2>
  <table id="nodes" class="fleet">
    <thead><tr><th>Name</th><th>Id</th><th>Version</th><th>Status</th><th>Last beat</th><th>Connections</th><th>Routes</th><th>Rooms</th><th>Log</th></tr></thead>
    <tbody></tbody>
  </table>
  <h2>VaultMesh agents</h2>
  <table id="agents" class="fleet">
    <thead><tr><th>Hostname</th><th>Node id</th><th>Profile</th><th>Status</th><th>Last heartbeat</th><th>cloudflared</th><th>Services</th><th>Root</th></tr></thead>
    <tbody></tbody>
  </table>
  <h2>Command results</h2>
  <ul id="results" class="results"></ul>
</main>
<script src="/cc/app.js"></script>
</body>
</html>
"""#

    static let css = #"""
:root { color-scheme: light dark; --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e; --muted: #6e7781; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 1rem; padding: 0.75rem 1.25rem; border-bottom: 1px solid #8884; }
h1 { font-size: 1.3rem; margin: 0; }
h2 { font-size: 1.05rem; margin: 1.5rem 0 0.5rem; }
main { padding: 0 1.25rem 2rem; max-width: 1400px; }
.connection { color: var(--muted); font-size: 0.9rem; }
.notice { padding: 0.75rem; border: 1px solid var(--warn); border-radius: 6px; }
.counts { display: flex; flex-wrap: wrap; gap: 0.5rem; margin-top: 1rem; }
.count { border: 1px solid #8884; border-radius: 6px; padding: 0.4rem 0.8rem; min-width: 6.5rem; }
.count b { display: block; font-size: 1.4rem; }
table.fleet { border-collapse: collapse; width: 100%; }
table.fleet th, table.fleet td { text-align: left; padding: 0.35rem 0.6rem; border-bottom: 1px solid #8883; vertical-align: top; }
table.fleet td.id { font-family: ui-monospace, monospace; font-size: 0.8rem; word-break: break-all; max-width: 16rem; }
.status { font-weight: 600; }
.status-healthy { color: var(--ok); }
.status-attention, .status-draining, .status-starting { color: var(--warn); }
.status-stale, .status-stopped { color: var(--bad); }
.results { padding-left: 1.2rem; font-size: 0.9rem; }
.results li { margin: 0.2rem 0; word-break: break-word; }
@media (max-width: 700px) {
  table.fleet thead { display: none; }
  table.fleet, table.fleet tbody, table.fleet tr, table.fleet td { display: block; width: 100%; }
  table.fleet tr { border: 1px solid #8884; border-radius: 6px; margin-bottom: 0.6rem; padding: 0.3rem 0; }
  table.fleet td { border: 0; padding: 0.15rem 0.6rem; max-width: none; }
  table.fleet td::before { content: attr(data-label) ": "; color: var(--muted); font-weight: 400; }
}
"""#

    static let javascript = #"""
'use strict';
(function () {
  const STATUSES = ['healthy', 'attention', 'stale', 'draining', 'starting', 'stopped'];
  const connection = document.getElementById('connection');

  function age(ms) {
    const s = Math.floor(Math.max(0, ms) / 1000);
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    return Math.floor(s / 3600) + ' h ago';
  }

  function cell(row, label, text, className) {
    const td = document.createElement('td');
    td.textContent = String(text);
    td.dataset.label = label;
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function statusCell(row, status, reason) {
    const known = STATUSES.includes(status) ? status : 'attention';
    const td = cell(row, 'Status', known, 'status status-' + known);
    if (reason) td.title = String(reason);
  }

  function render(update) {
    const view = update.view;
    const counts = document.getElementById('counts');
    counts.replaceChildren();
    for (const key of ['nodes', 'agents'].concat(STATUSES)) {
      const box = document.createElement('div');
      box.className = 'count';
      box.dataset.count = key;
      const number = document.createElement('b');
      number.textContent = String((view.counts && view.counts[key]) || 0);
      box.appendChild(number);
      box.appendChild(document.createTextNode(key));
      counts.appendChild(box);
    }
    const nodes = document.querySelector('#nodes tbody');
    nodes.replaceChildren();
    for (const node of view.nodes || []) {
      const row = document.createElement('tr');
      row.dataset.id = String(node.id);
      row.dataset.status = STATUSES.includes(node.status) ? node.status : 'attention';
      cell(row, 'Name', node.name);
      cell(row, 'Id', node.id, 'id');
      cell(row, 'Version', node.version);
      statusCell(row, node.status, node.reason);
      cell(row, 'Last beat', age(node.last_beat_age_ms));
      cell(row, 'Connections', node.connections);
      cell(row, 'Routes', node.routes);
      cell(row, 'Rooms', node.rooms);
      cell(row, 'Log', node.log + ' (' + node.log_operations + ' operations)');
      nodes.appendChild(row);
    }
    const agents = document.querySelector('#agents tbody');
    agents.replaceChildren();
    for (const agent of view.agents || []) {
      const row = document.createElement('tr');
      row.dataset.id = String(agent.node_id);
      row.dataset.status = STATUSES.includes(agent.status) ? agent.status : 'attention';
      cell(row, 'Hostname', agent.hostname);
      cell(row, 'Node id', agent.node_id, 'id');
      cell(row, 'Profile', agent.os_profile);
      statusCell(row, agent.status, agent.reason);
      cell(row, 'Last heartbeat', age(agent.last_heartbeat_age_ms));
      cell(row, 'cloudflared', agent.cloudflare_ok ? 'active' : 'inactive');
      cell(row, 'Services', agent.services_ok ? 'ok' : 'missing root');
      cell(row, 'Root', agent.vaultmesh_root);
      agents.appendChild(row);
    }
    const results = document.getElementById('results');
    results.replaceChildren();
    for (const result of (update.results || []).slice().reverse()) {
      const item = document.createElement('li');
      item.textContent = result.timestamp + ' ' + result.node.slice(0, 12) + '… ' + result.action + ': ' + result.status
        + (result.error ? ' (' + result.error + ')' : (result.detail ? ' (' + result.detail + ')' : ''));
      results.appendChild(item);
    }
    connection.textContent = 'live · updated ' + new Date(view.generated_ms).toLocaleTimeString();
    document.body.dataset.ready = 'true';
  }

  async function start() {
    const match = location.hash.match(/^#code=([A-Za-z0-9_-]{16,128})$/);
    if (match) {
      history.replaceState(null, '', '/cc');
      const response = await fetch('/cc/session', {
        method: 'POST', credentials: 'same-origin',
        headers: { 'content-type': 'application/json' }, body: JSON.stringify({ code: match[1] })
      });
      if (!response.ok) {
        document.getElementById('login').hidden = false;
        connection.textContent = 'the code was refused (used, expired or unknown)';
        return;
      }
    }
    const first = await fetch('/cc/fleet', { credentials: 'same-origin' });
    if (first.status === 401) {
      document.getElementById('login').hidden = false;
      connection.textContent = 'not signed in';
      return;
    }
    if (first.ok) render(await first.json());
    const events = new EventSource('/cc/events');
    events.addEventListener('fleet', function (event) { render(JSON.parse(event.data)); });
    events.onerror = function () { connection.textContent = 'disconnected: reconnecting…'; };
  }

  start().catch(function (error) { connection.textContent = 'error: ' + error; });
})();
"""#
}
