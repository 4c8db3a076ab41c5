/// NATS nkeys: Ed25519 keys as base32 text with a type prefix and a CRC16.
///
/// A public key is `base32(prefix | key(32) | crc16-le)` (56 characters); a
/// seed is `base32(seedPrefix | type | seed(32) | crc16-le)` (58 characters,
/// starting "S" + the type's letter). Byte-compatible with nats-io's nkeys
/// libraries (Go, Python).
public enum NKeyType: UInt8, Sendable, CaseIterable {
    case account = 0        // 'A'
    case cluster = 16       // 'C'
    case `operator` = 112   // 'O'
    case server = 104       // 'N', used for Unibus nodes
    case user = 160         // 'U'

    static let seedPrefix: UInt8 = 144      // 'S'

    /// The letter public keys of this type start with.
    public var letter: Character {
        switch self {
        case .account: return "A"
        case .cluster: return "C"
        case .operator: return "O"
        case .server: return "N"
        case .user: return "U"
        }
    }
}

public enum NKey {
    /// The public nkey of `key` as `type` (e.g. "U…" for users).
    public static func encodePublicKey(_ key: Ed25519PublicKey, type: NKeyType) -> String {
        encodeWithChecksum([type.rawValue] + key.bytes)
    }

    /// Decodes a public nkey; with `expecting`, other types are rejected.
    public static func decodePublicKey(_ text: some StringProtocol, expecting: NKeyType? = nil) throws(EncodingError) -> (NKeyType, Ed25519PublicKey) {
        let raw = try decodeWithChecksum(text)
        guard raw.count == 33 else { throw .invalidNKey("a public nkey holds 32 key bytes, this one \(raw.count - 1)") }
        guard let type = NKeyType(rawValue: raw[0]) else { throw .invalidNKey("unknown public key prefix") }
        if let expecting, expecting != type {
            throw .invalidNKey("expected a '\(expecting.letter)' key, got a '\(type.letter)' key")
        }
        return (type, Ed25519PublicKey(bytes: Array(raw[1...]))!)
    }

    /// The seed nkey ("SU…" for users) of a 32-byte Ed25519 seed.
    public static func encodeSeed(_ seed: [UInt8], type: NKeyType) -> String {
        precondition(seed.count == Ed25519KeyPair.seedLength)
        let b1 = NKeyType.seedPrefix | (type.rawValue >> 5)
        let b2 = (type.rawValue & 31) << 3
        return encodeWithChecksum([b1, b2] + seed)
    }

    /// Decodes a seed nkey into its type and 32-byte seed.
    public static func decodeSeed(_ text: some StringProtocol) throws(EncodingError) -> (NKeyType, [UInt8]) {
        let raw = try decodeWithChecksum(text)
        guard raw.count == 34 else { throw .invalidNKey("a seed holds 32 bytes, this one \(max(raw.count - 2, 0))") }
        guard raw[0] & 0xF8 == NKeyType.seedPrefix else { throw .invalidNKey("not a seed (does not start with 'S')") }
        let typeByte = (raw[0] & 0x07) << 5 | (raw[1] & 0xF8) >> 3
        guard raw[1] & 0x07 == 0, let type = NKeyType(rawValue: typeByte) else { throw .invalidNKey("unknown seed type") }
        return (type, Array(raw[2...]))
    }

    private static func encodeWithChecksum(_ raw: [UInt8]) -> String {
        let crc = CRC16.xmodem(raw)
        return Base32.encode(raw + [UInt8(crc & 0xFF), UInt8(crc >> 8)])
    }

    private static func decodeWithChecksum(_ text: some StringProtocol) throws(EncodingError) -> [UInt8] {
        let raw: [UInt8]
        do { raw = try Base32.decode(text) } catch { throw .invalidNKey("not base32") }
        guard raw.count >= 4 else { throw .invalidNKey("too short") }
        let body = Array(raw.dropLast(2))
        let crc = UInt16(raw[raw.count - 2]) | UInt16(raw[raw.count - 1]) << 8
        guard CRC16.xmodem(body) == crc else { throw .invalidNKey("checksum mismatch") }
        return body
    }
}

/// RFC 4648 base32, upper case, no padding (as nkeys uses it).
enum Base32 {
    private static let alphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567".utf8)

    static func encode(_ bytes: [UInt8]) -> String {
        var out = [UInt8]()
        out.reserveCapacity((bytes.count * 8 + 4) / 5)
        var buffer: UInt32 = 0
        var bits = 0
        for byte in bytes {
            buffer = (buffer << 8) | UInt32(byte)
            bits += 8
            while bits >= 5 {
                bits -= 5
                out.append(alphabet[Int((buffer >> UInt32(bits)) & 31)])
            }
        }
        if bits > 0 {
            out.append(alphabet[Int((buffer << UInt32(5 - bits)) & 31)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func decode(_ text: some StringProtocol) throws(EncodingError) -> [UInt8] {
        var out = [UInt8]()
        var buffer: UInt32 = 0
        var bits = 0
        for char in text.utf8 {
            let value: UInt8
            switch char {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): value = char - UInt8(ascii: "A")
            case UInt8(ascii: "2")...UInt8(ascii: "7"): value = char - UInt8(ascii: "2") + 26
            default: throw .invalidBase32
            }
            buffer = (buffer << 5) | UInt32(value)
            bits += 5
            if bits >= 8 {
                bits -= 8
                out.append(UInt8(truncatingIfNeeded: buffer >> UInt32(bits)))
            }
        }
        // Leftover bits must be zero and fewer than a whole character.
        if bits >= 5 || (buffer & ((1 << UInt32(bits)) - 1)) != 0 { throw .invalidBase32 }
        return out
    }
}

/// CRC-16/XMODEM (polynomial 0x1021, initial value 0), as nkeys uses it.
enum CRC16 {
    private static let table: [UInt16] = (0..<256).map { index -> UInt16 in
        var crc = UInt16(index) << 8
        for _ in 0..<8 {
            crc = crc & 0x8000 != 0 ? (crc << 1) ^ 0x1021 : crc << 1
        }
        return crc
    }

    static func xmodem(_ bytes: [UInt8]) -> UInt16 {
        var crc: UInt16 = 0
        for byte in bytes {
            crc = (crc << 8) ^ table[Int((crc >> 8) ^ UInt16(byte))]
        }
        return crc
    }
}
