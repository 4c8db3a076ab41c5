import ArgumentParser
import Foundation
import UnibusControlClient
import UnibusCrypto
import UnibusFleet

/// `unibus agent`: a VaultMesh node agent (the contract's sending side).
/// Every `VAULTMESH_HEARTBEAT_SECS` it POSTs the contract's heartbeat to
/// `VAULTMESH_CC_URL/api/agent/heartbeat`; on any error it logs and tries
/// again on the next cycle (no backoff, as the contract says).
struct AgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent",
        abstract: "Run a VaultMesh node agent: heartbeats to a Command Center (unibusd's control plane, or any that speaks the contract).",
        discussion: """
            Reads the contract's variables from the environment and from --env-file (the environment wins): \
            VAULTMESH_NODE_ID (default: generated once and kept in --id-file), VAULTMESH_CC_URL (default http://127.0.0.1:8088), \
            VAULTMESH_OS_PROFILE (ArchVault), VAULTMESH_ROOT (/var/lib/vaultmesh), VAULTMESH_HEARTBEAT_SECS (30), \
            RUST_LOG (info: trace, debug, info, warn, error). With --identity each request is signed by an agent key an admin \
            registered (`unibus user add --role agent`), which unibusd requires by default. Plain http is refused off loopback.
            """)

    @Option(name: .long, help: "An env file of VAULTMESH_* lines (default /etc/vaultmesh/agent.env when it exists).") var envFile: String?
    @Option(name: .long, help: "Where a generated node id is kept (default $XDG_STATE_HOME/unibus/vaultmesh-node-id).") var idFile: String?
    @Option(name: .long, help: "The agent key's identity file: requests are signed (unibusd's default mode requires it).") var identity: String?
    @Option(name: .long, help: "The CA certificate of an https Command Center.") var ca: String?
    @Option(name: .long, help: "Send this many heartbeats, then exit (0 if the last was accepted). Default: run forever.") var count: Int?

    func run() async throws {
        let settings = try AgentSettings.load(envFile: envFile, environment: ProcessInfo.processInfo.environment, idFile: idFile)
        let signer = try identity.map(loadIdentity)
        let agentLog = AgentLog(level: settings.logLevel)
        let client: ControlClient
        do { client = try ControlClient(url: settings.ccURL, caPath: ca) } catch { throw CLIError("VAULTMESH_CC_URL: \(error)") }
        agentLog.info("agent started", ["node_id": settings.nodeID, "cc_url": settings.ccURL, "interval_seconds": String(settings.interval),
                                        "signed": signer == nil ? "no" : "yes"])
        var nodeID: String?
        var sent = 0
        var lastAccepted = false
        while count.map({ sent < $0 }) ?? true {
            if sent > 0 { try? await Task.sleep(for: .seconds(settings.interval)) }
            sent += 1
            let heartbeat = settings.heartbeat()
            let body = SignedDocument.encode(heartbeat)
            do {
                if signer != nil, nodeID == nil {
                    let info = try await client.request("GET", "/v1/node")
                    guard info.status == 200, let id = info.decode(ControlAPI.NodeInfo.self)?.nodeID else {
                        throw CLIError("\(settings.ccURL) is not a Unibus node, so it cannot take signed heartbeats (\(info.status)); run without --identity")
                    }
                    nodeID = id
                }
                let target = nodeID
                let response = try await withTimeout(seconds: 10) {
                    try await client.request("POST", "/api/agent/heartbeat", body: body, identity: signer, nodeID: target)
                }
                lastAccepted = (200..<300).contains(response.status)
                if lastAccepted {
                    agentLog.debug("heartbeat accepted", ["status": String(response.status)])
                } else {
                    agentLog.warn("heartbeat refused", ["status": String(response.status), "error": String(response.errorText.prefix(300))])
                }
            } catch {
                lastAccepted = false
                nodeID = nil
                agentLog.error("heartbeat failed; retrying next cycle", ["error": "\(error)"])
            }
        }
        if !lastAccepted { throw ExitCode(1) }
    }
}

/// `work`, or an error once `seconds` pass (a Command Center that accepts and
/// never answers must not stall the agent past its next cycle).
func withTimeout<T: Sendable>(seconds: Double, _ work: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T.self) { group in
        group.addTask { try await work() }
        group.addTask {
            try await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
            throw CLIError("no answer within \(Int(seconds)) s")
        }
        guard let first = try await group.next() else { throw CLIError("no answer") }
        group.cancelAll()
        return first
    }
}

/// The contract's configuration, resolved.
struct AgentSettings {
    var nodeID: String
    var ccURL: String
    var osProfile: String
    var root: String
    var interval: Int
    var logLevel: String

    static let defaultEnvFile = "/etc/vaultmesh/agent.env"

    static func load(envFile: String?, environment: [String: String], idFile: String?) throws -> AgentSettings {
        var values: [String: String] = [:]
        let file = envFile ?? (FileManager.default.fileExists(atPath: defaultEnvFile) ? defaultEnvFile : nil)
        if let file {
            guard let data = FileManager.default.contents(atPath: file), data.count <= 64 * 1024 else {
                throw CLIError("cannot read the env file \(file) (or it is over 64 KiB)")
            }
            values = parseEnvFile(String(decoding: data, as: UTF8.self))
        }
        for (key, value) in environment where key.hasPrefix("VAULTMESH_") || key == "RUST_LOG" { values[key] = value }
        let interval = values["VAULTMESH_HEARTBEAT_SECS"].map { Int($0) } ?? 30
        guard let interval, (1...86_400).contains(interval) else { throw CLIError("VAULTMESH_HEARTBEAT_SECS must be 1 to 86400 seconds") }
        let level = (values["RUST_LOG"] ?? "info").lowercased()
        guard AgentLog.levels.contains(level) else { throw CLIError("RUST_LOG must be trace, debug, info, warn or error") }
        var nodeID = values["VAULTMESH_NODE_ID"] ?? ""
        if nodeID.isEmpty {
            nodeID = try persistedNodeID(idFile ?? defaultIDFile(environment))
        }
        guard AgentHeartbeat.isUUIDv4(nodeID) else { throw CLIError("VAULTMESH_NODE_ID must be a UUID v4, got \(nodeID.prefix(40))") }
        return AgentSettings(nodeID: nodeID.lowercased(), ccURL: values["VAULTMESH_CC_URL"] ?? "http://127.0.0.1:8088",
                             osProfile: values["VAULTMESH_OS_PROFILE"] ?? "ArchVault", root: values["VAULTMESH_ROOT"] ?? "/var/lib/vaultmesh",
                             interval: interval, logLevel: level)
    }

    /// `KEY=VALUE` lines; `#` comments, blank lines, `export ` and quotes allowed.
    static func parseEnvFile(_ text: String) -> [String: String] {
        var values: [String: String] = [:]
        for raw in text.split(whereSeparator: \.isNewline) {
            var line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            if line.hasPrefix("export ") { line = String(line.dropFirst(7)) }
            let parts = line.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2 else { continue }
            var value = parts[1].trimmingCharacters(in: .whitespaces)
            if value.count >= 2, let first = value.first, first == "\"" || first == "'", value.last == first { value = String(value.dropFirst().dropLast()) }
            values[parts[0].trimmingCharacters(in: .whitespaces)] = value
        }
        return values
    }

    static func defaultIDFile(_ environment: [String: String]) -> String {
        let base = environment["XDG_STATE_HOME"] ?? ((environment["HOME"] ?? NSHomeDirectory()) + "/.local/state")
        return base + "/unibus/vaultmesh-node-id"
    }

    /// The node id kept in `path`, made (a UUID v4) and kept there the first time.
    static func persistedNodeID(_ path: String) throws -> String {
        if let data = FileManager.default.contents(atPath: path) {
            let text = String(decoding: data.prefix(100), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            guard AgentHeartbeat.isUUIDv4(text) else { throw CLIError("\(path) does not hold a UUID v4; remove it to generate a new node id") }
            return text
        }
        let id = UUID().uuidString.lowercased()
        let directory = (path as NSString).deletingLastPathComponent
        if !directory.isEmpty { try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) }
        do { try SecretFile.write(Array((id + "\n").utf8), to: path, overwrite: false) } catch {
            throw CLIError("cannot keep the generated node id in \(path): \(error) (set VAULTMESH_NODE_ID or --id-file)")
        }
        return id
    }

    /// This cycle's heartbeat: the checks run now.
    func heartbeat() -> AgentHeartbeat {
        var isDirectory: ObjCBool = false
        let servicesOK = FileManager.default.fileExists(atPath: root, isDirectory: &isDirectory) && isDirectory.boolValue
        return AgentHeartbeat(nodeID: nodeID, hostname: Self.hostname(), osProfile: osProfile, cloudflareOK: Self.cloudflaredActive(),
                              servicesOK: servicesOK, vaultmeshRoot: root, timestamp: Self.rfc3339Now())
    }

    static func rfc3339Now() -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.string(from: Date())
    }

    static func hostname() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        if gethostname(&buffer, buffer.count - 1) == 0 {
            let name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if !name.isEmpty { return name }
        }
        let etc = (try? String(contentsOfFile: "/etc/hostname", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        return etc?.isEmpty == false ? etc! : "localhost"
    }

    /// `systemctl is-active --quiet cloudflared` exits 0 (false when systemctl is missing or hangs).
    static func cloudflaredActive() -> Bool {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["systemctl", "is-active", "--quiet", "cloudflared"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        do { try process.run() } catch { return false }
        let deadline = Date().addingTimeInterval(5)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning {
            process.terminate()
            return false
        }
        return process.terminationStatus == 0
    }
}

/// The agent's log lines on standard error (JSON), filtered by RUST_LOG's level.
struct AgentLog {
    static let levels = ["trace", "debug", "info", "warn", "error"]
    let level: String

    private func write(_ severity: String, _ message: String, _ fields: [String: String]) {
        guard let mine = Self.levels.firstIndex(of: severity), let minimum = Self.levels.firstIndex(of: level), mine >= minimum else { return }
        var object = fields
        object["msg"] = message
        object["level"] = severity
        object["ts"] = AgentSettings.rfc3339Now()
        FileHandle.standardError.write(Data(SignedDocument.encode(object) + [UInt8(ascii: "\n")]))
    }

    func debug(_ message: String, _ fields: [String: String] = [:]) { write("debug", message, fields) }
    func info(_ message: String, _ fields: [String: String] = [:]) { write("info", message, fields) }
    func warn(_ message: String, _ fields: [String: String] = [:]) { write("warn", message, fields) }
    func error(_ message: String, _ fields: [String: String] = [:]) { write("error", message, fields) }
}
