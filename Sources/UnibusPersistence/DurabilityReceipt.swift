import Foundation
import UnibusCrypto

/// What a node tells a publisher about its frames of a persisted room, on
/// the publisher's receipt subject (`ReservedNamespace.receiptSubject`),
/// once per storage batch. Shared by the node that sends it and the client
/// library that waits for it.
///
/// A receipt is a node's word: clients trust nodes to keep ciphertext (a
/// node that lies about durability loses the frames it lied about, nothing
/// more; it learns nothing). Only nodes can publish on receipt subjects.
public struct DurabilityReceipt: Codable, Sendable, Equatable {
    public enum Durability: String, Codable, Sendable {
        /// Made durable on the sending node and on at least one peer.
        case peer
        /// Made durable on the sending node, which had no peer linked.
        case local
    }

    public struct Entry: Codable, Sendable, Equatable, Hashable {
        /// The frame's stream (Megolm session id or signed stream), base64.
        public var s: String
        /// Its index in the stream.
        public var i: UInt64

        public init(_ id: FrameID) {
            s = Base64.encode(id.stream)
            i = id.index
        }

        public var frameID: FrameID? {
            guard let stream = try? Base64.decode(s), stream.count == 16 || stream.count == 32 else { return nil }
            return FrameID(stream: stream, index: i)
        }
    }

    public struct Refusal: Codable, Sendable, Equatable {
        public var s: String
        public var i: UInt64
        /// A short code (`quota`, `member`, `signature`, …) and the node's words.
        public var code: String
        public var reason: String

        public init(_ id: FrameID, error: FrameStorageError) {
            s = Base64.encode(id.stream)
            i = id.index
            code = error.code
            reason = error.description
        }

        public var frameID: FrameID? { Entry(s: s, i: i).frameID }
    }

    public var room: String
    /// The node that stored the frames (its server id, "N…").
    public var node: String
    public var durability: Durability
    /// The peer that confirmed them (with `.peer`).
    public var peer: String?
    public var stored: [Entry]
    public var refused: [Refusal]

    public init(room: String, node: String, durability: Durability, peer: String?, stored: [Entry], refused: [Refusal]) {
        self.room = room
        self.node = node
        self.durability = durability
        self.peer = peer
        self.stored = stored
        self.refused = refused
    }

    public var encoded: [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? [UInt8](encoder.encode(self))) ?? []
    }

    public init?(decoding bytes: [UInt8]) {
        guard bytes.count <= 4 * 1024 * 1024, let receipt = try? JSONDecoder().decode(Self.self, from: Data(bytes)) else { return nil }
        self = receipt
    }
}

extension DurabilityReceipt.Entry {
    init(s: String, i: UInt64) {
        self.s = s
        self.i = i
    }
}
