/// An encrypted Megolm message (`m.megolm.v1.aes-sha2`, version 3):
///
/// ```text
/// 0x03 | 0x08 varint(index) | 0x12 varint(len) ciphertext | MAC (8) | Ed25519 signature (64)
/// ```
///
/// The MAC covers everything before it; the signature covers everything
/// before it, MAC included. Decoding accepts only this canonical layout:
/// fields in this order, each once, minimal varints, a non-empty ciphertext
/// of whole AES blocks, nothing after the signature. libolm tolerates some
/// of these deviations; vodozemac and Unibus do not.
public struct MegolmMessage: Sendable, Equatable {
    public static let version: UInt8 = 3
    static let indexTag: UInt8 = 0x08
    static let ciphertextTag: UInt8 = 0x12
    static let suffixLength = MegolmCipher.macLength + Ed25519PublicKey.signatureLength

    /// The encoded message.
    public let bytes: [UInt8]
    /// The ratchet index the message was encrypted at.
    public let index: UInt32
    let ciphertextRange: Range<Int>

    /// Decodes and validates the layout (not the signature or MAC).
    public init(bytes: [UInt8]) throws(MegolmError) {
        guard let version = bytes.first else { throw .badVersion(expected: Self.version, got: nil) }
        guard version == Self.version else { throw .badVersion(expected: Self.version, got: version) }
        // version, two tags, two one-byte varints, one AES block, MAC, signature
        guard bytes.count >= 1 + 4 + AES256CBC.blockSize + Self.suffixLength else {
            throw .badFormat("message too short (\(bytes.count) bytes)")
        }
        let bodyEnd = bytes.count - Self.suffixLength
        var cursor = 1
        guard bytes[cursor] == Self.indexTag else { throw .badFormat("expected the message-index field first") }
        cursor += 1
        guard let index = Varint.decodeUInt32(bytes, at: &cursor, end: bodyEnd) else {
            throw .badFormat("message index is not a minimal 32-bit varint")
        }
        guard cursor < bodyEnd, bytes[cursor] == Self.ciphertextTag else {
            throw .badFormat("expected the ciphertext field after the index")
        }
        cursor += 1
        guard let length = Varint.decodeUInt32(bytes, at: &cursor, end: bodyEnd) else {
            throw .badFormat("ciphertext length is not a minimal varint")
        }
        guard Int(length) == bodyEnd - cursor else {
            throw .badFormat("ciphertext length \(length) does not match the \(bodyEnd - cursor) bytes present")
        }
        guard length > 0, Int(length) % AES256CBC.blockSize == 0 else {
            throw .badFormat("ciphertext of \(length) bytes is not a whole number of AES blocks")
        }
        self.bytes = bytes
        self.index = index
        self.ciphertextRange = cursor..<bodyEnd
    }

    /// Decodes unpadded standard base64, then the message.
    public init(base64: some StringProtocol) throws(MegolmError) {
        let decoded: [UInt8]
        do { decoded = try Base64.decode(base64) } catch { throw .badBase64 }
        try self.init(bytes: decoded)
    }

    /// Wraps bytes this module just encoded.
    init(encoded bytes: [UInt8], index: UInt32, ciphertextRange: Range<Int>) {
        self.bytes = bytes
        self.index = index
        self.ciphertextRange = ciphertextRange
    }

    public var base64: String { Base64.encode(bytes) }
    public var ciphertext: ArraySlice<UInt8> { bytes[ciphertextRange] }
    public var mac: ArraySlice<UInt8> { bytes[ciphertextRange.upperBound..<(ciphertextRange.upperBound + MegolmCipher.macLength)] }
    public var signature: ArraySlice<UInt8> { bytes[(bytes.count - Ed25519PublicKey.signatureLength)...] }

    /// The length of the header (version, tags, varints) for a given index and ciphertext length.
    static func headerLength(index: UInt32, ciphertextLength: Int) -> Int {
        1 + 1 + Varint.length(UInt64(index)) + 1 + Varint.length(UInt64(ciphertextLength))
    }
}

/// Protocol Buffers base-128 varints, minimal encodings only.
enum Varint {
    static func length(_ value: UInt64) -> Int {
        var value = value
        var count = 1
        while value >= 0x80 {
            value >>= 7
            count += 1
        }
        return count
    }

    /// Writes `value` at `out` and returns the number of bytes written.
    @discardableResult
    static func encode(_ value: UInt64, into out: UnsafeMutablePointer<UInt8>) -> Int {
        var value = value
        var count = 0
        while value >= 0x80 {
            out[count] = UInt8(truncatingIfNeeded: value) | 0x80
            value >>= 7
            count += 1
        }
        out[count] = UInt8(value)
        return count + 1
    }

    static func encode(_ value: UInt64) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: length(value))
        out.withUnsafeMutableBufferPointer { _ = encode(value, into: $0.baseAddress!) }
        return out
    }

    /// Decodes a minimal varint of at most 32 bits from `bytes[cursor..<end]`.
    /// Returns nil for a truncated, overlong (trailing zero group) or too large value.
    static func decodeUInt32(_ bytes: [UInt8], at cursor: inout Int, end: Int) -> UInt32? {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        var position = cursor
        while position < end {
            let byte = bytes[position]
            position += 1
            value |= UInt64(byte & 0x7F) << shift
            if byte & 0x80 == 0 {
                // A final group of zero after other groups is a non-minimal encoding.
                if byte == 0 && position - cursor > 1 { return nil }
                guard value <= UInt64(UInt32.max) else { return nil }
                cursor = position
                return UInt32(value)
            }
            shift += 7
            if shift > 28 { return nil }
        }
        return nil
    }
}
