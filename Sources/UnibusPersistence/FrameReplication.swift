import UnibusMembership

/// Replication of persisted rooms between nodes: the binary `RDATA`
/// messages that carry stored frames, their storage confirmations and the
/// inventories of anti-entropy. Pure and bounded here (fuzzed by
/// `FuzzFrameReplication`); `FrameReplicator` in UnibusNode acts on them.
///
/// Membership replication frames are JSON objects (they start with `{`);
/// these start with "UF", so one `RDATA` stream carries both.
///
/// ```
/// "UF" | version (1) | type (1) | body
///   1 frames:    batch (8) | room length (1) | room | count (2) | count × (first stored ms (8) | length (4) | frame)
///   2 stored:    batch (8) | count (2)
///   3 inventory: room length (1) | room | horizon ms (8) | last (1) | entry count (2) |
///                entry count × (sender (32) | stream length (1) | stream | range count (2) | range count × (from (8) | to (8)))
/// ```
/// All integers are big-endian. A batch id of 0 asks for no confirmation
/// (anti-entropy); any other id is answered with `stored` once the frames
/// are durable on the receiver.
public enum FrameReplication: Equatable, Sendable {
    /// Frames of one room with the time the first node stored each (which
    /// retention counts from on every node).
    case frames(batch: UInt64, room: String, frames: [CarriedFrame])
    /// The receiver made batch `batch` durable (`count` frames were new or known).
    case stored(batch: UInt64, count: Int)
    /// What the sender holds of `room` (index ranges per sender and stream),
    /// and the oldest first-stored time it keeps (`horizon`): the peer sends
    /// what is missing at or above that horizon, never below. A long
    /// inventory comes in parts; the peer answers once, after the `last`.
    case inventory(room: String, horizon: UInt64, last: Bool, streams: [StreamRanges])

    public static let magic: [UInt8] = [0x55, 0x46]   // "UF"
    public static let version: UInt8 = 1
    public static let maximumFrames = 1000
    public static let maximumBatchBytes = 8 * 1024 * 1024
    public static let maximumStreams = 2000
    public static let maximumRanges = 4096
    /// Ranges in one inventory message over all its entries (16 bytes each:
    /// about 3 MiB, far below a route's largest data frame).
    public static let maximumRangesPerMessage = 200_000

    public struct CarriedFrame: Equatable, Sendable {
        public let firstStored: UInt64
        public let bytes: [UInt8]
        public init(firstStored: UInt64, bytes: [UInt8]) {
            self.firstStored = firstStored
            self.bytes = bytes
        }
    }

    public struct StreamRanges: Equatable, Sendable {
        /// Whose frames (the envelope's sender): a copy re-wrapped by another
        /// member is another entry, so it can never stand in for the real one.
        public let sender: [UInt8]
        public let stream: [UInt8]
        /// Closed ranges of indices held, ascending and disjoint.
        public let ranges: [ClosedRange<UInt64>]
        public init(sender: [UInt8], stream: [UInt8], ranges: [ClosedRange<UInt64>]) {
            self.sender = sender
            self.stream = stream
            self.ranges = ranges
        }

        /// The key of this entry (sender, then stream).
        public var key: [UInt8] { sender + stream }

        /// This entry and `other` (same sender and stream) as one, ranges merged.
        public func merged(with other: StreamRanges) -> StreamRanges {
            var all = (ranges + other.ranges).sorted { $0.lowerBound < $1.lowerBound }
            var result: [ClosedRange<UInt64>] = []
            for range in all {
                if let last = result.last, range.lowerBound <= last.upperBound || (last.upperBound < .max && range.lowerBound == last.upperBound + 1) {
                    result[result.count - 1] = last.lowerBound...max(last.upperBound, range.upperBound)
                } else {
                    result.append(range)
                }
            }
            all = []
            return StreamRanges(sender: sender, stream: stream, ranges: result)
        }

        public func contains(_ index: UInt64) -> Bool {
            var low = 0, high = ranges.count
            while low < high {
                let middle = (low + high) / 2
                if ranges[middle].upperBound < index { low = middle + 1 } else { high = middle }
            }
            return low < ranges.count && ranges[low].contains(index)
        }

        /// Ranges of `indices` (any order, duplicates allowed).
        public static func ranges(of indices: [UInt64]) -> [ClosedRange<UInt64>] {
            var result: [ClosedRange<UInt64>] = []
            for index in indices.sorted() {
                if let last = result.last, last.upperBound == index || (last.upperBound < .max && last.upperBound + 1 == index) {
                    result[result.count - 1] = last.lowerBound...index
                } else {
                    result.append(index...index)
                }
            }
            return result
        }
    }

    /// Whether `bytes` is one of these messages (not a JSON membership frame).
    public static func isFrameReplication(_ bytes: some Collection<UInt8>) -> Bool {
        var iterator = bytes.makeIterator()
        return iterator.next() == magic[0] && iterator.next() == magic[1]
    }

    public var encoded: [UInt8] {
        var out = Self.magic + [Self.version]
        switch self {
        case .frames(let batch, let room, let frames):
            out.append(1)
            Self.put(batch, into: &out)
            Self.putShort(room.utf8, into: &out)
            Self.put(UInt16(clamping: frames.count), into: &out)
            for frame in frames.prefix(Int(UInt16.max)) {
                Self.put(frame.firstStored, into: &out)
                Self.put(UInt32(clamping: frame.bytes.count), into: &out)
                out += frame.bytes
            }
        case .stored(let batch, let count):
            out.append(2)
            Self.put(batch, into: &out)
            Self.put(UInt16(clamping: count), into: &out)
        case .inventory(let room, let horizon, let last, let streams):
            out.append(3)
            Self.putShort(room.utf8, into: &out)
            Self.put(horizon, into: &out)
            out.append(last ? 1 : 0)
            Self.put(UInt16(clamping: streams.count), into: &out)
            for stream in streams.prefix(Int(UInt16.max)) {
                out += stream.sender.count == 32 ? stream.sender : [UInt8](repeating: 0, count: 32)
                Self.putShort(stream.stream, into: &out)
                Self.put(UInt16(clamping: stream.ranges.count), into: &out)
                for range in stream.ranges.prefix(Int(UInt16.max)) {
                    Self.put(range.lowerBound, into: &out)
                    Self.put(range.upperBound, into: &out)
                }
            }
        }
        return out
    }

    /// Decodes and validates one message; the error names what is wrong.
    public init(decoding input: some Collection<UInt8>) throws(FrameReplicationError) {
        var reader = Reader(bytes: Array(input))
        guard try reader.bytes(2) == Self.magic else { throw .malformed("not a frame replication message") }
        let version = try reader.byte()
        guard version == Self.version else { throw .unsupportedVersion(version) }
        let type = try reader.byte()
        switch type {
        case 1:
            let batch = try reader.uint64()
            let room = try reader.room()
            let count = Int(try reader.uint16())
            guard count <= Self.maximumFrames else { throw .malformed("more than \(Self.maximumFrames) frames in one batch") }
            var frames: [CarriedFrame] = []
            frames.reserveCapacity(count)
            var total = 0
            for _ in 0..<count {
                let stored = try reader.uint64()
                let length = Int(try reader.uint32())
                guard length > 0, length <= FrameVerifier.maximumFrame else { throw .malformed("a frame of \(length) bytes") }
                total += length
                guard total <= Self.maximumBatchBytes else { throw .malformed("a batch over \(Self.maximumBatchBytes) bytes") }
                frames.append(CarriedFrame(firstStored: stored, bytes: try reader.bytes(length)))
            }
            self = .frames(batch: batch, room: room, frames: frames)
        case 2:
            self = .stored(batch: try reader.uint64(), count: Int(try reader.uint16()))
        case 3:
            let room = try reader.room()
            let horizon = try reader.uint64()
            let lastByte = try reader.byte()
            guard lastByte <= 1 else { throw .malformed("an inventory's last flag must be 0 or 1") }
            let count = Int(try reader.uint16())
            guard count <= Self.maximumStreams else { throw .malformed("more than \(Self.maximumStreams) streams in one inventory") }
            var streams: [StreamRanges] = []
            var total = 0
            for _ in 0..<count {
                let sender = try reader.bytes(32)
                let length = Int(try reader.byte())
                guard length == 16 || length == 32 else { throw .malformed("a stream id of \(length) bytes") }
                let stream = try reader.bytes(length)
                let rangeCount = Int(try reader.uint16())
                guard rangeCount <= Self.maximumRanges else { throw .malformed("more than \(Self.maximumRanges) ranges for one stream") }
                total += rangeCount
                guard total <= Self.maximumRangesPerMessage else {
                    throw .malformed("more than \(Self.maximumRangesPerMessage) ranges in one inventory")
                }
                var ranges: [ClosedRange<UInt64>] = []
                for _ in 0..<rangeCount {
                    let from = try reader.uint64(), to = try reader.uint64()
                    guard from <= to, ranges.last.map({ $0.upperBound < from }) ?? true else {
                        throw .malformed("inventory ranges must be ascending and disjoint")
                    }
                    ranges.append(from...to)
                }
                streams.append(StreamRanges(sender: sender, stream: stream, ranges: ranges))
            }
            self = .inventory(room: room, horizon: horizon, last: lastByte == 1, streams: streams)
        default:
            throw .malformed("unknown frame replication type \(type)")
        }
        guard reader.isAtEnd else { throw .malformed("trailing bytes") }
    }

    private static func put<T: FixedWidthInteger>(_ value: T, into out: inout [UInt8]) {
        withUnsafeBytes(of: value.bigEndian) { out.append(contentsOf: $0) }
    }

    private static func putShort(_ bytes: some Collection<UInt8>, into out: inout [UInt8]) {
        let prefix = bytes.prefix(255)
        out.append(UInt8(prefix.count))
        out.append(contentsOf: prefix)
    }

    private struct Reader {
        let bytes: [UInt8]
        var offset = 0

        var isAtEnd: Bool { offset == bytes.count }

        mutating func bytes(_ count: Int) throws(FrameReplicationError) -> [UInt8] {
            guard count >= 0, bytes.count - offset >= count else { throw .malformed("truncated") }
            defer { offset += count }
            return Array(bytes[offset..<(offset + count)])
        }

        mutating func byte() throws(FrameReplicationError) -> UInt8 { try bytes(1)[0] }

        mutating func integer<T: FixedWidthInteger>(_ type: T.Type) throws(FrameReplicationError) -> T {
            var value: T = 0
            for byte in try bytes(MemoryLayout<T>.size) { value = value << 8 | T(byte) }
            return value
        }

        mutating func uint16() throws(FrameReplicationError) -> UInt16 { try integer(UInt16.self) }
        mutating func uint32() throws(FrameReplicationError) -> UInt32 { try integer(UInt32.self) }
        mutating func uint64() throws(FrameReplicationError) -> UInt64 { try integer(UInt64.self) }

        mutating func room() throws(FrameReplicationError) -> String {
            let length = Int(try byte())
            guard let room = String(validating: try bytes(length), as: UTF8.self), MembershipState.isValidRoomID(room) else {
                throw .malformed("a room id must be 1 to 64 of [A-Za-z0-9_-]")
            }
            return room
        }
    }
}

public enum FrameReplicationError: Error, Equatable, Sendable, CustomStringConvertible {
    case malformed(String)
    case unsupportedVersion(UInt8)

    public var description: String {
        switch self {
        case .malformed(let why): return "malformed frame replication message: \(why)"
        case .unsupportedVersion(let version):
            return "frame replication version \(version) from the peer; this node speaks version \(FrameReplication.version)"
        }
    }
}
