import Foundation
import UnibusCrypto

/// An admin-signed command to one node or all, published on
/// `unibus.control` by an admin's connection and carried to every node over
/// the route links. Each node checks it itself: the signature, that the
/// admin is an active admin in its membership log, the time window, the
/// nonce (remembered for twice the window) and the desired-state version
/// (higher than the last applied for the same target, persisted), so a
/// replayed or reordered older command cannot undo a newer one.
public struct ClusterCommand: Codable, Equatable, Sendable {
    public enum Action: String, Codable, Sendable, CaseIterable {
        /// Change runtime settings (`RuntimeSetting`), merged one level.
        case settings
        /// Lame-duck mode: stop accepting clients, tell them to move, close
        /// them gradually, then stop once a peer holds this node's frames.
        case drain
        /// Engage or lift a killswitch (`Killswitch`).
        case killswitch
    }

    /// Engages or lifts one switch.
    public struct SwitchChange: Codable, Equatable, Sendable {
        public var feature: Killswitch
        public var engaged: Bool
        public init(feature: Killswitch, engaged: Bool) {
            self.feature = feature
            self.engaged = engaged
        }
    }

    public static let context = "unibus-cluster-command/1"
    /// The command's time may be this far from a node's clock (ms).
    public static let window: Int64 = 60_000
    /// The target meaning every node.
    public static let everyNode = "all"
    public static let maximumSettings = 32

    public var type = "command"
    /// The admin's user nkey ("U…"): the key that signs.
    public var admin: String
    /// "all" or a node's nkey ("N…").
    public var target: String
    public var action: Action
    public var settings: [String: SettingValue]?
    public var killswitch: SwitchChange?
    /// 16 to 64 base64url characters, fresh per command.
    public var nonce: String
    public var timestampMs: Int64
    /// The desired-state version for `target`: higher than every earlier one.
    public var version: UInt64

    public init(admin: String, target: String, action: Action, settings: [String: SettingValue]? = nil,
                killswitch: SwitchChange? = nil, nonce: String, timestampMs: Int64, version: UInt64) {
        self.admin = admin
        self.target = target
        self.action = action
        self.settings = settings
        self.killswitch = killswitch
        self.nonce = nonce
        self.timestampMs = timestampMs
        self.version = version
    }

    enum CodingKeys: String, CodingKey {
        case type, admin, target, action, settings, killswitch, nonce, version
        case timestampMs = "timestamp_ms"
    }

    /// A fresh nonce (16 random bytes, base64url).
    public static func makeNonce() -> String { Base64.encode(Sodium.randomNonce(count: 16), alphabet: .url) }

    public func sealed(by identity: Identity) -> [UInt8] { SignedDocument.seal(self, context: Self.context, key: identity.signing) }

    /// Verifies the signature and the command's form (not yet the admin's
    /// standing, the window, the nonce or the version: the node checks those).
    public static func open(_ payload: some Collection<UInt8>) throws(FleetMessageError) -> ClusterCommand {
        let command = try SignedDocument.open(payload, as: ClusterCommand.self, context: context, signerType: .user) { $0.admin }
        guard command.type == "command" else { throw .invalid("type must be command") }
        if let problem = command.problem { throw .invalid(problem) }
        return command
    }

    /// What is wrong with the command's form, or nil.
    public var problem: String? {
        guard target == Self.everyNode || (target.utf8.count <= 64 && (try? NKey.decodePublicKey(target, expecting: .server)) != nil) else {
            return "target must be \"all\" or a node id (N…)"
        }
        guard (16...64).contains(nonce.utf8.count), nonce.utf8.allSatisfy(Self.isNonceByte) else {
            return "nonce must be 16 to 64 base64url characters"
        }
        // Bounded by the command's own time: one huge version would otherwise
        // make every later command for the target "superseded", for good.
        guard version > 0, timestampMs > 0, version <= UInt64(timestampMs) &+ UInt64(Self.window) else {
            return "version must be positive and at most the command's timestamp_ms + \(Self.window)"
        }
        switch action {
        case .settings:
            guard let settings, !settings.isEmpty, killswitch == nil else { return "a settings command carries settings (and nothing else)" }
            guard settings.count <= Self.maximumSettings else { return "at most \(Self.maximumSettings) settings in one command" }
            for (name, value) in settings.sorted(by: { $0.key < $1.key }) {
                if let problem = RuntimeSetting.problem(name: name, value: value) { return problem }
            }
        case .drain:
            guard settings == nil, killswitch == nil else { return "a drain command carries no settings or switch" }
        case .killswitch:
            guard killswitch != nil, settings == nil else { return "a killswitch command carries a switch (and nothing else)" }
        }
        return nil
    }

    /// Whether `timestampMs` is within the window of `nowMs`.
    public func isFresh(nowMs: Int64) -> Bool {
        let (skew, overflow) = nowMs.subtractingReportingOverflow(timestampMs)
        return !overflow && skew.magnitude <= UInt64(Self.window)
    }

    static func isNonceByte(_ byte: UInt8) -> Bool {
        (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z")) || (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z"))
            || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")) || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_")
    }
}

/// A setting's value: a JSON number, string or boolean.
public enum SettingValue: Codable, Equatable, Sendable, CustomStringConvertible {
    case integer(Int64)
    case number(Double)
    case text(String)
    case flag(Bool)

    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let flag = try? container.decode(Bool.self) { self = .flag(flag); return }
        if let integer = try? container.decode(Int64.self) { self = .integer(integer); return }
        if let number = try? container.decode(Double.self) { self = .number(number); return }
        if let text = try? container.decode(String.self) { self = .text(text); return }
        throw DecodingError.typeMismatch(SettingValue.self, .init(codingPath: decoder.codingPath, debugDescription: "a number, string or boolean"))
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .integer(let value): try container.encode(value)
        case .number(let value): try container.encode(value)
        case .text(let value): try container.encode(value)
        case .flag(let value): try container.encode(value)
        }
    }

    /// Parses `text` from a command line: an integer, a number, true/false, or text.
    public static func parse(_ text: String) -> SettingValue {
        if let integer = Int64(text) { return .integer(integer) }
        if let number = Double(text), number.isFinite { return .number(number) }
        if text == "true" { return .flag(true) }
        if text == "false" { return .flag(false) }
        return .text(text)
    }

    public var integer: Int64? {
        switch self {
        case .integer(let value): return value
        case .number(let value) where value.isFinite && value == value.rounded() && value.magnitude < 1e15: return Int64(value)
        default: return nil
        }
    }

    public var number: Double? {
        switch self {
        case .integer(let value): return Double(value)
        case .number(let value) where value.isFinite: return value
        default: return nil
        }
    }

    public var description: String {
        switch self {
        case .integer(let value): return String(value)
        case .number(let value): return String(value)
        case .text(let value): return value
        case .flag(let value): return String(value)
        }
    }
}

/// The settings a node may change while it runs, with their bounds.
/// Anything else is refused by name (and the ones that need a restart say so).
public enum RuntimeSetting: String, CaseIterable, Sendable {
    case maxConnections = "max_connections"
    case maxSubscriptions = "max_subscriptions"
    case maxSubscriptionsPerUser = "max_subscriptions_per_user"
    case maxPayload = "max_payload"
    case beatInterval = "beat_interval"
    case logLevel = "log_level"
    case persistSenderMessagesPerMinute = "persist_sender_messages_per_minute"
    case persistSenderBytesPerMinute = "persist_sender_bytes_per_minute"
    case agentHeartbeatsPerMinute = "agent_heartbeats_per_minute"
    case maxAgents = "max_agents"

    /// Settings that exist but only change with a restart (flags of `unibusd run`).
    public static let restartOnly: Set<String> = [
        "listen", "tls_cert", "tls_key", "tls_client_ca", "allow_plaintext", "threads", "identity", "data_dir",
        "control_listen", "control_tls_cert", "control_tls_key", "cluster_listen", "routes", "cluster_name",
        "cluster_cert", "cluster_key", "cluster_ca", "cluster_allow_plaintext", "advertise", "advertise_control",
        "persist_sync", "max_control_line", "max_pre_auth_bytes", "max_route_interest", "ping_interval", "max_pings_out",
        "max_pending", "write_deadline", "route_ping_interval", "allowlist", "agent_heartbeats",
    ]

    public static let logLevels = ["debug", "info", "warning", "error"]

    /// What the setting means and takes (for errors and `--help`).
    public var summary: String {
        switch self {
        case .maxConnections: return "most client connections, 0 to 10000000 (0 = unlimited); applies to new connections"
        case .maxSubscriptions: return "most subscriptions per connection, 0 to 10000000; applies to the next SUB"
        case .maxSubscriptionsPerUser: return "most subscriptions per user, 0 to 100000000"
        case .maxPayload: return "largest payload in bytes, 1 to 67108864; applies to connections opened after it"
        case .beatInterval: return "seconds between heartbeats, 0.2 to 3600"
        case .logLevel: return "debug, info, warning or error"
        case .persistSenderMessagesPerMinute: return "frames one member may store in one room per minute, 1 to 100000000"
        case .persistSenderBytesPerMinute: return "bytes one member may store in one room per minute, 1024 to 1099511627776"
        case .agentHeartbeatsPerMinute: return "VaultMesh heartbeats one agent may send per minute, 1 to 600"
        case .maxAgents: return "most VaultMesh agents this node registers, 1 to 1000000"
        }
    }

    /// Checks a value; nil when `value` is acceptable for `self`.
    public func problem(_ value: SettingValue) -> String? {
        func integer(_ range: ClosedRange<Int64>) -> String? {
            guard let number = value.integer, range.contains(number) else { return "\(rawValue) must be an integer: \(summary)" }
            return nil
        }
        switch self {
        case .maxConnections, .maxSubscriptions: return integer(0...10_000_000)
        case .maxSubscriptionsPerUser: return integer(0...100_000_000)
        case .maxPayload: return integer(1...(64 << 20))
        case .beatInterval:
            guard let seconds = value.number, (0.2...3600).contains(seconds) else { return "beat_interval must be a number: \(summary)" }
            return nil
        case .logLevel:
            guard case .text(let level) = value, Self.logLevels.contains(level) else { return "log_level must be \(summary)" }
            return nil
        case .persistSenderMessagesPerMinute: return integer(1...100_000_000)
        case .persistSenderBytesPerMinute: return integer(1024...(1 << 40))
        case .agentHeartbeatsPerMinute: return integer(1...600)
        case .maxAgents: return integer(1...1_000_000)
        }
    }

    /// Why `name = value` cannot be set at runtime, or nil.
    public static func problem(name: String, value: SettingValue) -> String? {
        guard let setting = RuntimeSetting(rawValue: name) else {
            if restartOnly.contains(name) { return "\(name) cannot change while the node runs: change it in the node's configuration and restart it" }
            return "\(name.prefix(64)) is not a setting (runtime settings: \(allCases.map(\.rawValue).joined(separator: ", ")))"
        }
        return setting.problem(value)
    }
}

/// What a killswitch turns off. The node's own control path (commands from
/// the route links and from admins' connections) never is, so a later
/// command can lift any switch.
public enum Killswitch: String, Codable, Sendable, CaseIterable {
    /// New client connections (admins may still connect).
    case clientConnections = "client_connections"
    /// Control-plane writes: operations, checkpoints, key shares, acknowledgements.
    case controlWrites = "control_writes"
    /// VaultMesh agent heartbeats (`POST /api/agent/heartbeat`).
    case agentHeartbeats = "agent_heartbeats"
    /// Key-share uploads (`POST /v1/rooms/{id}/key-shares`).
    case keyShareUploads = "key_share_uploads"
    /// The whole node: every non-admin client is closed and refused, and
    /// every switch above is engaged; routes, beats and commands go on.
    case node

    public var summary: String {
        switch self {
        case .clientConnections: return "new client connections (admins may still connect)"
        case .controlWrites: return "control-plane writes (operations, checkpoints, key shares, acknowledgements)"
        case .agentHeartbeats: return "VaultMesh agent heartbeats"
        case .keyShareUploads: return "key-share uploads"
        case .node: return "the whole node (non-admin clients closed and refused, every switch engaged; routes and commands go on)"
        }
    }
}

/// What a node answers to every command it is a target of, signed by the
/// node, on `unibus.node.<node id>.update_result` (lex-node's UpdateResult:
/// action, status, detail, error, node, timestamp; plus the command's nonce
/// and version).
public struct UpdateResult: Codable, Equatable, Sendable {
    public enum Status: String, Codable, Sendable {
        /// Applied (or, for drain, begun).
        case ok
        /// Not applied: the error says why (replayed, superseded, expired, …).
        case refused
        /// Accepted but applying it failed.
        case failed
    }

    public static let context = "unibus-update-result/1"

    public var type = "update_result"
    public var action: String
    public var status: Status
    public var detail: String
    public var error: String?
    /// The node's nkey: the key that signs.
    public var node: String
    /// RFC 3339 UTC.
    public var timestamp: String
    /// The command's nonce and version ("" and 0 when it could not be read).
    public var command: String
    public var version: UInt64
    public var admin: String

    public init(action: String, status: Status, detail: String, error: String?, node: String, timestamp: String,
                command: String, version: UInt64, admin: String) {
        self.action = action
        self.status = status
        self.detail = detail
        self.error = error
        self.node = node
        self.timestamp = timestamp
        self.command = command
        self.version = version
        self.admin = admin
    }

    enum CodingKeys: String, CodingKey {
        case type, action, status, detail, error, node, timestamp, command, version, admin
    }

    /// `error` is always present (null when there is none), as in lex-node's UpdateResult.
    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(type, forKey: .type)
        try container.encode(action, forKey: .action)
        try container.encode(status, forKey: .status)
        try container.encode(detail, forKey: .detail)
        if let error { try container.encode(error, forKey: .error) } else { try container.encodeNil(forKey: .error) }
        try container.encode(node, forKey: .node)
        try container.encode(timestamp, forKey: .timestamp)
        try container.encode(command, forKey: .command)
        try container.encode(version, forKey: .version)
        try container.encode(admin, forKey: .admin)
    }

    public func sealed(by key: Ed25519KeyPair) -> [UInt8] { SignedDocument.seal(self, context: Self.context, key: key) }

    public static func open(_ payload: some Collection<UInt8>) throws(FleetMessageError) -> UpdateResult {
        let result = try SignedDocument.open(payload, as: UpdateResult.self, context: context, signerType: .server) { $0.node }
        guard result.type == "update_result" else { throw .invalid("type must be update_result") }
        for text in [result.action, result.detail, result.error ?? "", result.timestamp, result.command, result.admin] where text.utf8.count > 4096 {
            throw .invalid("a text field of the result is over 4096 bytes")
        }
        return result
    }
}
