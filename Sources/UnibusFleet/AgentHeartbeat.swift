import Foundation

/// A VaultMesh node agent's heartbeat, exactly as the Node Agent Contract
/// defines it (`POST /api/agent/heartbeat`, ../shared/seeds/
/// vaultmesh-node-agent-contract.md): every field required, each of its
/// JSON type; `node_id` a UUID v4; `timestamp` RFC 3339.
public struct AgentHeartbeat: Codable, Equatable, Sendable {
    public var nodeID: String
    public var hostname: String
    public var osProfile: String
    public var cloudflareOK: Bool
    public var servicesOK: Bool
    public var vaultmeshRoot: String
    public var timestamp: String

    public init(nodeID: String, hostname: String, osProfile: String, cloudflareOK: Bool, servicesOK: Bool,
                vaultmeshRoot: String, timestamp: String) {
        self.nodeID = nodeID
        self.hostname = hostname
        self.osProfile = osProfile
        self.cloudflareOK = cloudflareOK
        self.servicesOK = servicesOK
        self.vaultmeshRoot = vaultmeshRoot
        self.timestamp = timestamp
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case nodeID = "node_id", hostname, osProfile = "os_profile", cloudflareOK = "cloudflare_ok"
        case servicesOK = "services_ok", vaultmeshRoot = "vaultmesh_root", timestamp
    }

    /// The contract's body is small; more is refused before it is parsed.
    public static let maximumBody = 8 * 1024
    /// Longest text field (a path may be long; a hostname is at most 253).
    public static let maximumField = 1024

    /// Parses and validates a request body; the error names the field.
    public static func parse(_ body: some Collection<UInt8>) throws(FleetMessageError) -> AgentHeartbeat {
        guard body.count <= maximumBody else { throw .invalid("the body is over \(maximumBody) bytes") }
        let object: [String: JSONValue]
        do { object = try JSONDecoder().decode([String: JSONValue].self, from: Data(body)) } catch {
            throw .invalid("the body must be a JSON object")
        }
        func text(_ key: CodingKeys) throws(FleetMessageError) -> String {
            guard let value = object[key.rawValue] else { throw .invalid("\(key.rawValue) is missing") }
            guard case .string(let string) = value else { throw .invalid("\(key.rawValue) must be a string") }
            guard string.utf8.count <= maximumField else { throw .invalid("\(key.rawValue) is over \(maximumField) bytes") }
            guard !string.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
                throw .invalid("\(key.rawValue) must not hold control characters")
            }
            return string
        }
        func flag(_ key: CodingKeys) throws(FleetMessageError) -> Bool {
            guard let value = object[key.rawValue] else { throw .invalid("\(key.rawValue) is missing") }
            guard case .bool(let bool) = value else { throw .invalid("\(key.rawValue) must be a boolean") }
            return bool
        }
        let heartbeat = AgentHeartbeat(nodeID: try text(.nodeID), hostname: try text(.hostname), osProfile: try text(.osProfile),
                                       cloudflareOK: try flag(.cloudflareOK), servicesOK: try flag(.servicesOK),
                                       vaultmeshRoot: try text(.vaultmeshRoot), timestamp: try text(.timestamp))
        guard isUUIDv4(heartbeat.nodeID) else { throw .invalid("node_id must be a UUID v4 (xxxxxxxx-xxxx-4xxx-[89ab]xxx-xxxxxxxxxxxx)") }
        guard !heartbeat.hostname.isEmpty, heartbeat.hostname.utf8.count <= 253 else { throw .invalid("hostname must be 1 to 253 bytes") }
        guard rfc3339Millis(heartbeat.timestamp) != nil else { throw .invalid("timestamp must be RFC 3339 (e.g. 2026-12-01T10:00:00Z)") }
        return heartbeat
    }

    /// A UUID of version 4 and the RFC 4122 variant, in its 36-character form.
    public static func isUUIDv4(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        guard bytes.count == 36 else { return false }
        for (index, byte) in bytes.enumerated() {
            if [8, 13, 18, 23].contains(index) {
                guard byte == UInt8(ascii: "-") else { return false }
            } else {
                guard (byte >= 48 && byte <= 57) || (byte >= 97 && byte <= 102) || (byte >= 65 && byte <= 70) else { return false }
            }
        }
        return bytes[14] == UInt8(ascii: "4") && [UInt8(ascii: "8"), UInt8(ascii: "9"), UInt8(ascii: "a"), UInt8(ascii: "b"),
                                                  UInt8(ascii: "A"), UInt8(ascii: "B")].contains(bytes[19])
    }

    /// Milliseconds since the epoch of an RFC 3339 date-time (any offset,
    /// optional fraction), or nil.
    public static func rfc3339Millis(_ text: String) -> Int64? {
        guard (20...40).contains(text.utf8.count) else { return nil }
        let formatter = ISO8601DateFormatter()
        for options: ISO8601DateFormatter.Options in [[.withInternetDateTime, .withFractionalSeconds], [.withInternetDateTime]] {
            formatter.formatOptions = options
            if let date = formatter.date(from: text) {
                let millis = date.timeIntervalSince1970 * 1000
                return millis.isFinite && millis.magnitude < 1e15 ? Int64(millis) : nil
            }
        }
        return nil
    }

    /// The contract's success body.
    public static let okBody = Array(#"{"status":"ok"}"#.utf8)
}

/// A JSON value, for checking a document field by field with errors that
/// name the field (Codable alone reports types, not contracts).
public enum JSONValue: Codable, Equatable, Sendable {
    case string(String)
    case bool(Bool)
    case number(Double)
    case null
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() { self = .null; return }
        if let bool = try? container.decode(Bool.self) { self = .bool(bool); return }
        if let number = try? container.decode(Double.self) { self = .number(number); return }
        if let string = try? container.decode(String.self) { self = .string(string); return }
        if let array = try? container.decode([JSONValue].self) { self = .array(array); return }
        self = .object(try container.decode([String: JSONValue].self))
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .string(let value): try container.encode(value)
        case .bool(let value): try container.encode(value)
        case .number(let value): try container.encode(value)
        case .null: try container.encodeNil()
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        }
    }
}
