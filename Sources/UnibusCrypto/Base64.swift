/// Errors from decoding text encodings of keys and messages.
public enum EncodingError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The text is not canonical unpadded base64 of the expected alphabet.
    case invalidBase64
    /// The text is not valid RFC 4648 base32.
    case invalidBase32
    /// An nkey whose checksum, prefix or length is wrong.
    case invalidNKey(String)
    /// Hex text with an odd length or a non-hex character.
    case invalidHex

    public var description: String {
        switch self {
        case .invalidBase64: return "invalid base64 (expected unpadded, canonical base64)"
        case .invalidBase32: return "invalid base32"
        case .invalidNKey(let why): return "invalid nkey: \(why)"
        case .invalidHex: return "invalid hex"
        }
    }
}

/// Strict base64 as vodozemac uses it: no padding, no whitespace, and the
/// unused low bits of the last character must be zero (one encoding per value).
public enum Base64 {
    public enum Alphabet: Sendable {
        /// RFC 4648 §4 (`+`, `/`): Megolm keys and messages.
        case standard
        /// RFC 4648 §5 (`-`, `_`): NATS nonce signatures.
        case url
    }

    private static let standardTable: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    private static let urlTable: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
    private static let standardReverse: [UInt8] = reverse(standardTable)
    private static let urlReverse: [UInt8] = reverse(urlTable)

    private static func reverse(_ table: [UInt8]) -> [UInt8] {
        var result = [UInt8](repeating: 0xFF, count: 256)
        for (index, char) in table.enumerated() { result[Int(char)] = UInt8(index) }
        return result
    }

    /// Encodes without padding.
    public static func encode<C: Collection>(_ bytes: C, alphabet: Alphabet = .standard) -> String where C.Element == UInt8 {
        let table = alphabet == .standard ? standardTable : urlTable
        var out = [UInt8]()
        out.reserveCapacity((bytes.count * 4 + 2) / 3)
        var iterator = bytes.makeIterator()
        while let b0 = iterator.next() {
            let b1 = iterator.next()
            let b2 = iterator.next()
            out.append(table[Int(b0 >> 2)])
            out.append(table[Int(((b0 & 0x03) << 4) | ((b1 ?? 0) >> 4))])
            if let b1 {
                out.append(table[Int(((b1 & 0x0F) << 2) | ((b2 ?? 0) >> 6))])
            }
            if let b2 {
                out.append(table[Int(b2 & 0x3F)])
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Decodes canonical unpadded base64; anything else is `invalidBase64`.
    public static func decode(_ text: some StringProtocol, alphabet: Alphabet = .standard) throws(EncodingError) -> [UInt8] {
        let reverse = alphabet == .standard ? standardReverse : urlReverse
        let utf8 = Array(text.utf8)
        if utf8.count % 4 == 1 { throw .invalidBase64 }
        var out = [UInt8]()
        out.reserveCapacity(utf8.count * 3 / 4)
        var accumulator: UInt32 = 0
        var bits = 0
        for char in utf8 {
            let value = reverse[Int(char)]
            if value == 0xFF { throw .invalidBase64 }
            accumulator = (accumulator << 6) | UInt32(value)
            bits += 6
            if bits >= 8 {
                bits -= 8
                out.append(UInt8(truncatingIfNeeded: accumulator >> UInt32(bits)))
            }
        }
        // Leftover bits must be zero, or two texts would decode to one value.
        if bits > 0 && (accumulator & ((1 << UInt32(bits)) - 1)) != 0 { throw .invalidBase64 }
        return out
    }
}

/// Lower-case hexadecimal.
public enum Hex {
    public static func encode<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(bytes.count * 2)
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    public static func decode(_ text: some StringProtocol) throws(EncodingError) -> [UInt8] {
        let utf8 = Array(text.utf8)
        guard utf8.count % 2 == 0 else { throw .invalidHex }
        var out = [UInt8]()
        out.reserveCapacity(utf8.count / 2)
        var index = 0
        while index < utf8.count {
            guard let high = nibble(utf8[index]), let low = nibble(utf8[index + 1]) else { throw .invalidHex }
            out.append(high << 4 | low)
            index += 2
        }
        return out
    }

    private static func nibble(_ char: UInt8) -> UInt8? {
        switch char {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return char - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return char - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return char - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}
