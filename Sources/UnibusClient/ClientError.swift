/// What the client library reports. Each message says what to do.
public enum ClientError: Error, Equatable, Sendable, CustomStringConvertible {
    case invalidURL(String, String)
    case noSeeds
    /// Every seed was tried; each failure is listed.
    case unreachable([String])
    case tlsRequiredWithoutCA(String)
    case plaintextRefused(String)
    case authenticationFailed(String)
    case closed
    /// The connection is down and the reconnect buffer is full.
    case publishBufferFull(messages: Int, bytes: Int)
    case payloadTooLarge(Int, limit: Int)
    case timeout(String)
    case controlPlane(String)
    case notAMember(String)
    case seal(SealError)
    case invalid(String)
    /// A node served membership data that does not verify; nothing of it was used.
    case untrustedNode(node: String, reason: String)
    /// No root admin was pinned in the configuration.
    case missingRoot
    /// The client's local store cannot be used.
    case localStore(String)
    /// A node refused to store a frame of a persisted room (the reason names why).
    case notStored(room: String, reason: String)
    /// Frames of persisted rooms were not acknowledged in time (they are
    /// still kept and sent again; nothing was dropped).
    case notAcknowledged(count: Int, after: Duration)
    /// Too many frames wait for a node's acknowledgement.
    case tooManyUnacknowledged(Int)
    /// A frame waited (offline, in the spool) longer than its room's window
    /// and was given up: receivers would refuse it.
    case spoolExpired(room: String, ageSeconds: Int)

    public var description: String {
        switch self {
        case .invalidURL(let url, let why): return "invalid URL \(url): \(why)"
        case .noSeeds: return "no seed URLs: give at least one data-plane URL (nats://HOST:PORT) and one control-plane URL"
        case .unreachable(let failures): return "no node could be reached: \(failures.joined(separator: "; "))"
        case .tlsRequiredWithoutCA(let url):
            return "\(url) requires TLS but no CA was given: pass the node's CA certificate (--ca) so its identity is pinned"
        case .plaintextRefused(let url):
            return "\(url) does not offer TLS; refusing to send credentials or frames in plaintext to a non-loopback node"
        case .authenticationFailed(let why): return "the node refused this identity: \(why) (is the user added and active?)"
        case .closed: return "the client was closed"
        case .publishBufferFull(let messages, let bytes):
            return "disconnected and the reconnect buffer is full (\(messages) messages, \(bytes) bytes); the message was not sent, retry later"
        case .payloadTooLarge(let size, let limit): return "a \(size)-byte message exceeds the node's maximum payload of \(limit) bytes"
        case .timeout(let what): return "timed out: \(what)"
        case .controlPlane(let why): return "control plane: \(why)"
        case .notAMember(let room): return "not a member of room \(room): ask its owner to add you (unibus room add-member)"
        case .seal(let error): return "\(error)"
        case .invalid(let why): return why
        case .untrustedNode(let node, let reason):
            return "the node at \(node) served membership data that does not verify (\(reason)); nothing of it was used. "
                + "Try another node and tell the cluster's operator"
        case .missingRoot:
            return "no root admin is pinned: give the cluster's root admin nkey (--root U…, from the admin who ran unibusd init); "
                + "the client never learns it from a node"
        case .localStore(let why): return "the client's local store cannot be used: \(why)"
        case .notStored(let room, let reason): return "the node did not store the frame in room \(room): \(reason)"
        case .notAcknowledged(let count, let after):
            return "\(count) frame(s) of persisted rooms were not acknowledged as stored after \(after) (they are kept and sent again on the next connection)"
        case .spoolExpired(let room, let age):
            return "a frame for room \(room) waited \(age) s without reaching a node, longer than the room's frame window; it was given up "
                + "(send it again: it will be sealed anew)"
        case .tooManyUnacknowledged(let count):
            return "\(count) frames (or the byte limit) already wait for a node to store them; wait for acknowledgements (waitForStorage) before sending more"
        }
    }
}
