/// A fleet message between nodes, as the payload of a route's `RDATA`:
/// `U` `B` kind payload, where payload is a signed document (`NodeBeat`,
/// `UpdateResult` or `ClusterCommand`). Membership frames are JSON (`{`) and
/// frame replication starts with `UF`, so the first bytes tell them apart.
public enum FleetFrame: Equatable, Sendable {
    /// The sending node's own beat (signed by it).
    case beat([UInt8])
    /// The sending node's own result (signed by it).
    case result([UInt8])
    /// An admin's command the sending node took from a client (signed by the admin).
    case command([UInt8])

    static let magic: [UInt8] = [UInt8(ascii: "U"), UInt8(ascii: "B")]

    public static func isFleetFrame(_ bytes: some Collection<UInt8>) -> Bool {
        bytes.count >= 3 && bytes.starts(with: magic)
    }

    public var encoded: [UInt8] {
        switch self {
        case .beat(let payload): return Self.magic + [1] + payload
        case .result(let payload): return Self.magic + [2] + payload
        case .command(let payload): return Self.magic + [3] + payload
        }
    }

    /// The frame's kind and payload (not yet verified: see each type's `open`).
    public init(decoding bytes: some Collection<UInt8>) throws(FleetMessageError) {
        let all = Array(bytes)
        guard Self.isFleetFrame(all) else { throw .malformed("not a fleet frame") }
        let payload = Array(all[3...])
        guard payload.count <= SignedDocument.maximumBytes else { throw .malformed("a fleet frame is over \(SignedDocument.maximumBytes) bytes") }
        switch all[2] {
        case 1: self = .beat(payload)
        case 2: self = .result(payload)
        case 3: self = .command(payload)
        default: throw .malformed("unknown fleet frame kind \(all[2])")
        }
    }
}
