/// Unibus's frame envelope, version 1: what travels as a room message's NATS
/// payload. Pure encoding and decoding, no cryptography (the client library
/// seals and opens frames); see `docs/protocol.md` for the byte layout and a
/// test vector.
///
/// ```
/// outer:  "UB" | version (1) | kind (1) | sender Ed25519 key (32) | kind-specific
///   kind 1 (megolm):  session id = the session's Ed25519 key (32) | Megolm v3 message
///                     (whose plaintext is the inner frame)
///   kind 2 (signed):  stream (16) | sequence (8, big-endian) | inner frame | Ed25519 signature (64)
///                     by the sender over every byte before it
///   kind 3 (plain):   inner frame, unauthenticated
/// inner:  room id length (1) | room id | timestamp ms (8, big-endian) |
///         content type length (1) | content type | flags (1, bit 0 = zstd) | body
/// ```
public enum FrameKind: UInt8, Sendable, CaseIterable {
    case megolm = 1
    case signed = 2
    case plain = 3
}

/// Why a byte string is not a frame. Kept apart from cryptographic verdicts:
/// these are decided before any key is touched.
public enum FrameFormatError: Error, Equatable, Sendable, CustomStringConvertible {
    /// Not a Unibus frame at all (too short or wrong magic).
    case notAFrame
    /// A frame from a newer (or unknown) envelope version.
    case unknownVersion(UInt8)
    case unknownKind(UInt8)
    case malformed(String)

    public var description: String {
        switch self {
        case .notAFrame: return "not a Unibus frame (missing \"UB\" magic or too short)"
        case .unknownVersion(let version): return "unknown envelope version \(version); this build reads version \(FrameEnvelope.version)"
        case .unknownKind(let kind): return "unknown frame kind \(kind)"
        case .malformed(let why): return "malformed frame: \(why)"
        }
    }
}

/// The outer envelope: who sent it and how to open it.
public struct FrameEnvelope: Equatable, Sendable {
    public static let magic: [UInt8] = [0x55, 0x42]   // "UB"
    public static let version: UInt8 = 1
    public static let keyLength = 32
    public static let streamLength = 16
    public static let signatureLength = 64
    /// Bytes before the kind-specific part: magic, version, kind, sender.
    public static let prefixLength = 4 + keyLength

    public enum Body: Equatable, Sendable {
        /// `message` is a Megolm version-3 message (validated by the crypto layer).
        case megolm(sessionKey: [UInt8], message: ArraySlice<UInt8>)
        /// `signedRange` is the part of the frame the signature covers.
        case signed(stream: [UInt8], sequence: UInt64, inner: ArraySlice<UInt8>, signature: ArraySlice<UInt8>, signedRange: Range<Int>)
        case plain(inner: ArraySlice<UInt8>)
    }

    public let sender: [UInt8]
    public let body: Body

    public var kind: FrameKind {
        switch body {
        case .megolm: return .megolm
        case .signed: return .signed
        case .plain: return .plain
        }
    }

    /// Decodes the outer envelope of `bytes` (which must be the whole frame).
    public init(decoding bytes: [UInt8]) throws(FrameFormatError) {
        guard bytes.count >= 4, bytes[0] == Self.magic[0], bytes[1] == Self.magic[1] else { throw .notAFrame }
        guard bytes[2] == Self.version else { throw .unknownVersion(bytes[2]) }
        guard let kind = FrameKind(rawValue: bytes[3]) else { throw .unknownKind(bytes[3]) }
        guard bytes.count >= Self.prefixLength else { throw .malformed("truncated sender key") }
        sender = Array(bytes[4..<Self.prefixLength])
        var offset = Self.prefixLength
        switch kind {
        case .megolm:
            guard bytes.count > offset + Self.keyLength else { throw .malformed("truncated Megolm session id or empty message") }
            let session = Array(bytes[offset..<(offset + Self.keyLength)])
            offset += Self.keyLength
            body = .megolm(sessionKey: session, message: bytes[offset...])
        case .signed:
            let fixed = Self.streamLength + 8
            guard bytes.count >= offset + fixed + InnerFrame.minimumLength + Self.signatureLength else { throw .malformed("truncated signed frame") }
            let stream = Array(bytes[offset..<(offset + Self.streamLength)])
            offset += Self.streamLength
            var sequence: UInt64 = 0
            for byte in bytes[offset..<(offset + 8)] { sequence = sequence << 8 | UInt64(byte) }
            offset += 8
            let signatureStart = bytes.count - Self.signatureLength
            body = .signed(stream: stream, sequence: sequence, inner: bytes[offset..<signatureStart],
                           signature: bytes[signatureStart...], signedRange: 0..<signatureStart)
        case .plain:
            body = .plain(inner: bytes[offset...])
        }
    }

    /// The common prefix of every frame kind.
    public static func encodePrefix(kind: FrameKind, sender: [UInt8], into bytes: inout [UInt8]) {
        precondition(sender.count == keyLength, "sender keys are 32-byte Ed25519 public keys")
        bytes.append(contentsOf: magic)
        bytes.append(version)
        bytes.append(kind.rawValue)
        bytes.append(contentsOf: sender)
    }

    /// Everything of a Megolm frame before its message: the prefix and the
    /// session id. Constant for a (sender, session) pair, so senders keep it.
    public static func megolmHeader(sender: [UInt8], sessionKey: [UInt8]) -> [UInt8] {
        precondition(sessionKey.count == keyLength, "Megolm session ids are 32-byte Ed25519 public keys")
        var bytes: [UInt8] = []
        bytes.reserveCapacity(prefixLength + keyLength)
        encodePrefix(kind: .megolm, sender: sender, into: &bytes)
        bytes.append(contentsOf: sessionKey)
        return bytes
    }

    /// A Megolm frame around an already encrypted Megolm message.
    public static func encodeMegolm(sender: [UInt8], sessionKey: [UInt8], message: [UInt8]) -> [UInt8] {
        precondition(sessionKey.count == keyLength, "Megolm session ids are 32-byte Ed25519 public keys")
        var bytes: [UInt8] = []
        bytes.reserveCapacity(prefixLength + keyLength + message.count)
        encodePrefix(kind: .megolm, sender: sender, into: &bytes)
        bytes.append(contentsOf: sessionKey)
        bytes.append(contentsOf: message)
        return bytes
    }

    /// The bytes a signed frame's signature covers; append the 64-byte signature to finish it.
    public static func encodeSignedUnsigned(sender: [UInt8], stream: [UInt8], sequence: UInt64, inner: [UInt8]) -> [UInt8] {
        precondition(stream.count == streamLength, "streams are 16 random bytes")
        var bytes: [UInt8] = []
        bytes.reserveCapacity(prefixLength + streamLength + 8 + inner.count + signatureLength)
        encodePrefix(kind: .signed, sender: sender, into: &bytes)
        bytes.append(contentsOf: stream)
        for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: sequence >> UInt64(shift))) }
        bytes.append(contentsOf: inner)
        return bytes
    }

    public static func encodePlain(sender: [UInt8], inner: [UInt8]) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(prefixLength + inner.count)
        encodePrefix(kind: .plain, sender: sender, into: &bytes)
        bytes.append(contentsOf: inner)
        return bytes
    }
}

/// The inner frame: what the sender asserts about the message. Inside a
/// Megolm frame it is encrypted, MACed and signed; inside a signed frame it
/// is signed. Receivers rely only on these fields, never on the NATS subject.
public struct InnerFrame: Equatable, Sendable {
    public static let maximumRoomLength = 64
    public static let maximumContentTypeLength = 255
    /// room length, an empty room is refused, timestamp, content type length, flags.
    static let minimumLength = 1 + 1 + 8 + 1 + 1
    public static let compressedFlag: UInt8 = 0x01

    public var room: String
    /// Milliseconds since the Unix epoch, by the sender's clock.
    public var timestamp: UInt64
    public var contentType: String
    /// Whether `body` is zstd-compressed.
    public var compressed: Bool
    public var body: [UInt8]

    public init(room: String, timestamp: UInt64, contentType: String, compressed: Bool, body: [UInt8]) {
        self.room = room
        self.timestamp = timestamp
        self.contentType = contentType
        self.compressed = compressed
        self.body = body
    }

    /// Encodes the frame; room and content type must fit their length bytes
    /// (the client checks them before it gets here).
    public func encoded() -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: encodedLength) { buffer, initialized in
            initialized = write(into: UnsafeMutableRawBufferPointer(buffer))
        }
    }

    /// The length of `encoded()`.
    @inlinable
    public var encodedLength: Int { Self.fixedLength + room.utf8.count + contentType.utf8.count + body.count }

    /// The bytes of every inner frame besides room, content type and body:
    /// room length, timestamp, content type length, flags.
    @usableFromInline
    static let fixedLength = 1 + 8 + 1 + 1

    /// Calls `body` with the encoded frame in a temporary buffer that is
    /// zeroed afterwards (the sender's plaintext, without a heap copy).
    @inlinable
    public func withEncoded<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withUnsafeTemporaryAllocation(byteCount: encodedLength, alignment: 1) { buffer in
            let count = write(into: buffer)
            defer { buffer.initializeMemory(as: UInt8.self, repeating: 0) }
            return try body(UnsafeRawBufferPointer(rebasing: buffer[..<count]))
        }
    }

    /// Writes the frame into `out` (at least `encodedLength` bytes); returns the count.
    @usableFromInline
    func write(into out: UnsafeMutableRawBufferPointer) -> Int {
        var room = self.room, type = self.contentType
        let roomCount = room.utf8.count, typeCount = type.utf8.count
        precondition(roomCount > 0 && roomCount <= Self.maximumRoomLength && typeCount <= Self.maximumContentTypeLength)
        var cursor = 0
        out[cursor] = UInt8(roomCount); cursor += 1
        room.withUTF8 { bytes in
            UnsafeMutableRawBufferPointer(rebasing: out[cursor..<(cursor + roomCount)]).copyMemory(from: UnsafeRawBufferPointer(bytes))
        }
        cursor += roomCount
        for shift in stride(from: 56, through: 0, by: -8) {
            out[cursor] = UInt8(truncatingIfNeeded: timestamp >> UInt64(shift))
            cursor += 1
        }
        out[cursor] = UInt8(typeCount); cursor += 1
        type.withUTF8 { bytes in
            UnsafeMutableRawBufferPointer(rebasing: out[cursor..<(cursor + typeCount)]).copyMemory(from: UnsafeRawBufferPointer(bytes))
        }
        cursor += typeCount
        out[cursor] = compressed ? Self.compressedFlag : 0; cursor += 1
        body.withUnsafeBytes { bytes in
            UnsafeMutableRawBufferPointer(rebasing: out[cursor..<(cursor + bytes.count)]).copyMemory(from: bytes)
        }
        cursor += body.count
        return cursor
    }

    public init(decoding bytes: some Collection<UInt8>) throws(FrameFormatError) {
        let bytes = Array(bytes)
        var offset = 0
        func take(_ count: Int, _ what: String) throws(FrameFormatError) -> ArraySlice<UInt8> {
            guard count >= 0, bytes.count - offset >= count else { throw .malformed("truncated \(what)") }
            defer { offset += count }
            return bytes[offset..<(offset + count)]
        }
        let roomLength = Int(try take(1, "room length").first ?? 0)
        guard roomLength > 0 else { throw .malformed("empty room id") }
        guard roomLength <= Self.maximumRoomLength else { throw .malformed("room id longer than \(Self.maximumRoomLength) bytes") }
        guard let room = String(validating: try take(roomLength, "room id"), as: UTF8.self) else { throw .malformed("room id is not UTF-8") }
        var timestamp: UInt64 = 0
        for byte in try take(8, "timestamp") { timestamp = timestamp << 8 | UInt64(byte) }
        let typeLength = Int(try take(1, "content type length").first ?? 0)
        guard let type = String(validating: try take(typeLength, "content type"), as: UTF8.self) else { throw .malformed("content type is not UTF-8") }
        let flags = try take(1, "flags").first ?? 0
        guard flags & ~Self.compressedFlag == 0 else { throw .malformed("unknown flags 0x\(String(flags, radix: 16))") }
        self.room = room
        self.timestamp = timestamp
        self.contentType = type
        self.compressed = flags & Self.compressedFlag != 0
        self.body = Array(bytes[offset...])
    }
}
