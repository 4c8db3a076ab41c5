import ArgumentParser
import Foundation
import UnibusClient
import UnibusControlClient
import UnibusCrypto
import UnibusFleet
import UnibusMembership

/// Options of the commands that watch and steer nodes over the bus.
struct FleetOptions: ParsableArguments {
    @OptionGroup var node: NodeOptions

    @Option(name: .long, help: "The node's client address for the bus (nats://HOST:PORT or tls://HOST:PORT). Default: --node's host and the client port the node reports.")
    var server: String?
}

/// The fleet as the caller verifies it: every beat's signature checked here.
struct VerifiedFleet {
    var beats: [NodeBeat]
    var view: FleetView
    /// Beats the node served that did not verify (a node that lies shows here).
    var refused: Int
}

extension FleetOptions {
    /// The bus address: --server, or --node's host with the node's client port.
    func busAddress(_ session: NodeSession) async throws -> String {
        if let server { return server }
        let info = try await session.get("/v1/node", as: ControlAPI.NodeInfo.self)
        guard let url = URLComponents(string: node.node), let host = url.host else { throw CLIError("--node is not a URL: \(node.node)") }
        let bracketed = host.contains(":") ? "[\(host)]" : host
        return "\(url.scheme == "https" ? "tls" : "nats")://\(bracketed):\(info.clientPort)"
    }

    /// An admin's connection to the bus.
    func connect(_ session: NodeSession) async throws -> NATSConnection {
        let identity = try loadIdentity(node.identity)
        var options = NATSConnection.Options(seeds: [try Endpoint(parsing: try await busAddress(session))], identity: identity, caPath: node.ca)
        if let cert = node.cert, let key = node.key { options.clientCertificate = ClientCertificate(certificatePath: cert, keyPath: key) }
        options.name = "unibus-node"
        let connection = try NATSConnection(options: options)
        do { try await connection.connect() } catch { throw CLIError("cannot connect to the bus: \(error)") }
        return connection
    }

    /// The fleet from `GET /v1/fleet`, every beat verified here.
    func fleet(_ session: NodeSession) async throws -> VerifiedFleet {
        let response = try await session.get("/v1/fleet", as: ControlAPI.FleetResponse.self)
        var beats: [NodeBeat] = []
        var refused = 0
        for encoded in response.beats {
            guard let bytes = try? Base64.decode(encoded), let beat = try? NodeBeat.open(bytes) else {
                refused += 1
                continue
            }
            beats.append(beat)
        }
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        let view = FleetView.build(beats: beats, agents: response.agents, nowMs: now, disagreeingSince: response.disagreeingSince, observer: "")
        return VerifiedFleet(beats: beats, view: view, refused: refused)
    }
}

/// Prints the fleet as a table.
func printFleet(_ view: FleetView, refused: Int = 0) {
    func pad(_ text: String, _ width: Int) -> String { text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count) }
    let counts = ["nodes", "agents"] + FleetView.Status.allCases.map(\.rawValue)
    print(counts.map { "\($0) \(view.counts[$0] ?? 0)" }.joined(separator: "  "))
    print(pad("NAME", 16) + pad("STATUS", 10) + pad("ID", 14) + pad("VERSION", 10) + pad("BEAT", 8) + pad("CONNS", 7)
          + pad("ROUTES", 7) + pad("ROOMS", 6) + pad("LOG", 10) + "REASON")
    for row in view.nodes {
        print(pad(row.name, 16) + pad(row.status.rawValue, 10) + pad(String(row.id.prefix(12)) + "…", 14) + pad(row.version, 10)
              + pad("\(row.lastBeatAgeMs / 1000)s", 8) + pad(String(row.connections), 7) + pad(String(row.routes), 7)
              + pad(String(row.rooms), 6) + pad(row.log, 10) + row.reason)
    }
    if !view.agents.isEmpty {
        print("")
        print(pad("AGENT", 20) + pad("STATUS", 10) + pad("NODE ID", 38) + pad("PROFILE", 14) + pad("BEAT", 8) + "REASON")
        for agent in view.agents {
            print(pad(agent.hostname, 20) + pad(agent.status.rawValue, 10) + pad(agent.nodeID, 38) + pad(agent.osProfile, 14)
                  + pad("\(agent.lastHeartbeatAgeMs / 1000)s", 8) + agent.reason)
        }
    }
    if refused > 0 { print("warning: \(refused) beat(s) served by the node did not verify and were left out") }
}

struct NodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "node",
        abstract: "Watch and steer the cluster's nodes: signed heartbeats, and admin-signed settings, drain and killswitch commands.",
        subcommands: [List.self, Watch.self, Set.self, Drain.self, Kill.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The fleet: every node's latest signed beat (verified here) and the node's VaultMesh agents.")
        @OptionGroup var options: FleetOptions

        func run() async throws {
            let session = try await NodeSession.open(options.node)
            let fleet = try await options.fleet(session)
            if options.node.json { try printJSON(fleet.view) } else { printFleet(fleet.view, refused: fleet.refused) }
        }
    }

    struct Watch: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Follow beats and command results live on the bus (unibus.node.>), verifying each.",
            discussion: "On a terminal the fleet table is redrawn at each beat; otherwise (or with --json) one line per beat or result.")
        @OptionGroup var options: FleetOptions
        @Option(name: .long, help: "Stop after this many beats and results (default: run until interrupted).") var count: Int?
        @Option(name: .long, help: "Stop after this many seconds.") var seconds: Double?

        func run() async throws {
            let session = try await NodeSession.open(options.node)
            var fleet = try await options.fleet(session)
            let connection = try await options.connect(session)
            let messages = try connection.subscribe(ReservedNamespace.nodeWildcard)
            try await connection.flush()
            let live = isatty(1) == 1 && !options.node.json
            if live { redraw(fleet.view, results: []) }
            var seen = 0
            var results: [UpdateResult] = []
            let deadline = seconds.map { Date().addingTimeInterval($0) }
            let stopper = Task {
                if let seconds { try? await Task.sleep(for: .milliseconds(Int(seconds * 1000))) } else { return }
                _ = await connection.close()
            }
            defer { stopper.cancel() }
            for await message in messages {
                if let deadline, Date() > deadline { break }
                if message.subject.hasSuffix(".beat") {
                    guard let beat = try? NodeBeat.open(message.payload), message.subject == ReservedNamespace.beatSubject(for: beat.node) else {
                        FileHandle.standardError.write(Data("warning: a beat on \(message.subject) did not verify\n".utf8))
                        continue
                    }
                    fleet.beats.removeAll { $0.node == beat.node }
                    fleet.beats.append(beat)
                    let now = Int64(Date().timeIntervalSince1970 * 1000)
                    fleet.view = FleetView.build(beats: fleet.beats, agents: fleet.view.agents, nowMs: now, disagreeingSince: [:], observer: "")
                    if options.node.json {
                        print(String(decoding: SignedDocument.encode(WatchLine(beat: beat, result: nil)), as: UTF8.self))
                    } else if live {
                        redraw(fleet.view, results: results)
                    } else {
                        print("beat \(beat.name) \(beat.node.prefix(12))… \(beat.status.rawValue) connections=\(beat.connections) routes=\(beat.routes) seq=\(beat.sequence)")
                    }
                } else if message.subject.hasSuffix(".update_result") {
                    guard let result = try? UpdateResult.open(message.payload), message.subject == ReservedNamespace.resultSubject(for: result.node) else {
                        FileHandle.standardError.write(Data("warning: a result on \(message.subject) did not verify\n".utf8))
                        continue
                    }
                    results.append(result)
                    if options.node.json {
                        print(String(decoding: SignedDocument.encode(WatchLine(beat: nil, result: result)), as: UTF8.self))
                    } else if live {
                        redraw(fleet.view, results: results)
                    } else {
                        print(describe(result))
                    }
                } else {
                    continue
                }
                fflush(nil)
                seen += 1
                if let count, seen >= count { break }
            }
            _ = await connection.close()
        }

        struct WatchLine: Encodable {
            var beat: NodeBeat?
            var result: UpdateResult?
        }

        func redraw(_ view: FleetView, results: [UpdateResult]) {
            print("\u{1B}[H\u{1B}[2J", terminator: "")
            print("unibus node watch · \(OperationTime.now())\n")
            printFleet(view)
            if !results.isEmpty {
                print("\nresults:")
                for result in results.suffix(10) { print("  " + describe(result)) }
            }
            fflush(nil)
        }
    }

    struct Set: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Change runtime settings on one node or all (admins), live, and wait for each node's signed result.",
            discussion: "Settings: " + RuntimeSetting.allCases.map { "\($0.rawValue) (\($0.summary))" }.joined(separator: "; ")
                + ". Changed settings persist in the node's data directory and sit above its flags.")
        @OptionGroup var options: FleetOptions
        @OptionGroup var target: CommandTarget
        @Argument(help: "NAME=VALUE, one or more.") var assignments: [String]

        func run() async throws {
            var settings: [String: SettingValue] = [:]
            for assignment in assignments {
                let parts = assignment.split(separator: "=", maxSplits: 1).map(String.init)
                guard parts.count == 2, !parts[0].isEmpty else { throw CLIError("\(assignment) is not NAME=VALUE") }
                let value = SettingValue.parse(parts[1])
                if let problem = RuntimeSetting.problem(name: parts[0], value: value) { throw CLIError(problem) }
                settings[parts[0]] = value
            }
            guard !settings.isEmpty else { throw CLIError("give at least one NAME=VALUE") }
            try await send(.settings, settings: settings, options: options, target: target)
        }
    }

    struct Drain: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Put one node in lame-duck mode (admins): it stops taking clients, tells them to move, closes them gradually, then stops.")
        @OptionGroup var options: FleetOptions
        @OptionGroup var target: CommandTarget

        func run() async throws {
            guard !target.all else { throw CLIError("drain one node at a time (--target NODE): draining all would stop the cluster") }
            try await send(.drain, options: options, target: target)
        }
    }

    struct Kill: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Engage (or --lift) a killswitch on one node or all (admins).",
            discussion: "Features: " + Killswitch.allCases.map { "\($0.rawValue): \($0.summary)" }.joined(separator: "; ")
                + ". Commands always reach a node (over its routes and admins' connections), so a later command can lift any switch.")
        @OptionGroup var options: FleetOptions
        @OptionGroup var target: CommandTarget
        @Option(name: .long, help: "The feature to switch off (or on again with --lift).") var feature: String
        @Flag(name: .long, help: "Lift the switch instead of engaging it.") var lift = false

        func run() async throws {
            guard let switchFeature = Killswitch(rawValue: feature) else {
                throw CLIError("--feature must be one of \(Killswitch.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            try await send(.killswitch, killswitch: .init(feature: switchFeature, engaged: !lift), options: options, target: target)
        }
    }
}

/// Which node a command is for.
struct CommandTarget: ParsableArguments {
    @Option(name: .long, help: "The node's id (N…, see `unibus node list`) or name.") var target: String?
    @Flag(name: .long, help: "Every node.") var all = false
    @Option(name: .long, help: "Seconds to wait for the nodes' results.") var timeout: Double = 10
    @Option(name: .long, help: "Also write the signed command to FILE (an audit record).") var saveCommand: String?
}

/// Signs a command, publishes it on `unibus.control`, and waits for the
/// signed result of every targeted node (exit status 1 unless all are ok).
func send(_ action: UnibusFleet.ClusterCommand.Action, settings: [String: SettingValue]? = nil,
          killswitch: UnibusFleet.ClusterCommand.SwitchChange? = nil, options: FleetOptions, target: CommandTarget) async throws {
    guard target.all != (target.target != nil) else { throw CLIError("give --target NODE or --all") }
    let identity = try loadIdentity(options.node.identity)
    let session = try await NodeSession.open(options.node)
    let fleet = try await options.fleet(session)
    let live = fleet.view.nodes.filter { $0.status != .stale && $0.status != .stopped }
    let targetID: String
    let expected: [String]
    if target.all {
        targetID = UnibusFleet.ClusterCommand.everyNode
        expected = live.map(\.id)
    } else {
        let wanted = target.target ?? ""
        guard let row = fleet.view.nodes.first(where: { $0.id == wanted || $0.name == wanted }) else {
            throw CLIError("no node \(wanted) in the fleet (see `unibus node list`)")
        }
        targetID = row.id
        expected = [row.id]
    }
    // Above every version any node applied for this target, and the clock:
    // admins with no shared counter still move forward.
    let known = fleet.beats.compactMap { $0.controlVersions[targetID] }.max() ?? 0
    let nowMs = Int64(Date().timeIntervalSince1970 * 1000)
    let command = UnibusFleet.ClusterCommand(admin: identity.userNKey, target: targetID, action: action, settings: settings, killswitch: killswitch,
                                             nonce: UnibusFleet.ClusterCommand.makeNonce(), timestampMs: nowMs,
                                             version: max(UInt64(nowMs), known &+ 1))
    let payload = command.sealed(by: identity)
    if let path = target.saveCommand {
        do { try SecretFile.write(payload, to: path, overwrite: true) } catch { throw CLIError("cannot write \(path): \(error)") }
    }
    let connection = try await options.connect(session)
    let results = try connection.subscribe(ReservedNamespace.nodePrefix + "*.update_result")
    try await connection.flush()
    try connection.publish(ReservedNamespace.controlSubject, payload: payload)
    try await connection.flush()
    var answered: [String: UpdateResult] = [:]
    let closer = Task {
        try? await Task.sleep(for: .milliseconds(Int(target.timeout * 1000)))
        _ = await connection.close()
    }
    for await message in results {
        guard let result = try? UpdateResult.open(message.payload), result.command == command.nonce, expected.contains(result.node) else { continue }
        answered[result.node] = result
        if options.node.json { print(String(decoding: SignedDocument.encode(result), as: UTF8.self)) } else { print(describe(result)) }
        if answered.count == expected.count { break }
    }
    closer.cancel()
    _ = await connection.close()
    let missing = expected.filter { answered[$0] == nil }
    for node in missing {
        let name = fleet.view.nodes.first { $0.id == node }?.name ?? ""
        FileHandle.standardError.write(Data("no result from \(name) \(node) within \(target.timeout) s\n".utf8))
    }
    if !missing.isEmpty || answered.values.contains(where: { $0.status != .ok }) { throw ExitCode(1) }
}

func describe(_ result: UpdateResult) -> String {
    "\(result.node.prefix(12))… \(result.action) \(result.status.rawValue)" + (result.error.map { ": \($0)" } ?? (result.detail.isEmpty ? "" : ": \(result.detail)"))
}

struct CommandCenterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "cc", abstract: "The Command Center page.", subcommands: [Open.self])

    struct Open: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print a URL to the node's Command Center with a single-use code (admins; valid for a minute).",
            discussion: "The code is in the URL's fragment, which a browser never sends to a server; the page trades it for a session cookie.")
        @OptionGroup var options: NodeOptions

        func run() async throws {
            let session = try await NodeSession.open(options)
            let code: ControlAPI.CommandCenterCode
            do { code = try await session.session.call("POST", "/v1/cc/codes", expecting: ControlAPI.CommandCenterCode.self) } catch {
                throw CLIError("\(error)")
            }
            let base = options.node.hasSuffix("/") ? String(options.node.dropLast()) : options.node
            if options.json { try printJSON(["url": base + code.path, "expires_in_seconds": String(code.expiresInSeconds)]) } else {
                print(base + code.path)
            }
        }
    }
}
