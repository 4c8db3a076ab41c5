import CSodium

/// The exported form of a session (version 1, unsigned, 165 bytes):
///
/// ```text
/// 0x01 | index (u32 big-endian) | R(i,0..3) (128) | Ed25519 public key (32)
/// ```
///
/// It carries no signature: whoever hands it over vouches for it.
public struct MegolmExportedSessionKey: Sendable {
    public static let version: UInt8 = 1
    public static let length = 1 + 4 + MegolmRatchet.length + Ed25519PublicKey.length

    let ratchet: MegolmRatchet
    public let signingKey: Ed25519PublicKey
    public var index: UInt32 { ratchet.index }

    init(ratchet: MegolmRatchet, signingKey: Ed25519PublicKey) {
        self.ratchet = ratchet
        self.signingKey = signingKey
    }

    public init(bytes: [UInt8]) throws(MegolmError) {
        let (ratchet, key) = try MegolmKeyLayout.decode(bytes, version: Self.version, expectedLength: Self.length)
        self.init(ratchet: ratchet, signingKey: key)
    }

    public init(base64: some StringProtocol) throws(MegolmError) {
        var decoded: [UInt8]
        do { decoded = try Base64.decode(base64) } catch { throw .badBase64 }
        defer { wipe(&decoded) }
        try self.init(bytes: decoded)
    }

    /// The encoded bytes. They contain the ratchet: treat them as a secret.
    public var bytes: [UInt8] { MegolmKeyLayout.encode(version: Self.version, ratchet: ratchet, signingKey: signingKey) }
    public var base64: String {
        var raw = bytes
        defer { wipe(&raw) }
        return Base64.encode(raw)
    }
}

/// The session-sharing form (version 2, 229 bytes): the exported layout
/// with version 2, followed by an Ed25519 signature over all of it by the
/// session's own signing key, which proves the sender holds that key.
public struct MegolmSessionKey: Sendable {
    public static let version: UInt8 = 2
    public static let length = MegolmExportedSessionKey.length + Ed25519PublicKey.signatureLength

    let ratchet: MegolmRatchet
    public let signingKey: Ed25519PublicKey
    public let signature: [UInt8]
    public var index: UInt32 { ratchet.index }

    /// Signs a fresh session key for an outbound session.
    init(ratchet: MegolmRatchet, signing: Ed25519KeyPair) {
        var unsigned = MegolmKeyLayout.encode(version: Self.version, ratchet: ratchet, signingKey: signing.publicKey)
        defer { wipe(&unsigned) }
        self.ratchet = ratchet
        self.signingKey = signing.publicKey
        self.signature = signing.sign(unsigned)
    }

    /// Decodes and verifies the signature.
    public init(bytes: [UInt8]) throws(MegolmError) {
        let (ratchet, key) = try MegolmKeyLayout.decode(bytes, version: Self.version, expectedLength: Self.length)
        let signedLength = MegolmExportedSessionKey.length
        let signature = Array(bytes[signedLength...])
        let valid = bytes.withUnsafeBytes { raw in
            signature.withUnsafeBytes { sig in
                key.verify(signature: sig, message: UnsafeRawBufferPointer(rebasing: raw[..<signedLength]))
            }
        }
        guard valid else { throw .badSignature }
        self.ratchet = ratchet
        self.signingKey = key
        self.signature = signature
    }

    public init(base64: some StringProtocol) throws(MegolmError) {
        var decoded: [UInt8]
        do { decoded = try Base64.decode(base64) } catch { throw .badBase64 }
        defer { wipe(&decoded) }
        try self.init(bytes: decoded)
    }

    public var bytes: [UInt8] {
        MegolmKeyLayout.encode(version: Self.version, ratchet: ratchet, signingKey: signingKey) + signature
    }

    public var base64: String {
        var raw = bytes
        defer { wipe(&raw) }
        return Base64.encode(raw)
    }

    /// The session id this key belongs to.
    public var sessionID: String { Base64.encode(signingKey.bytes) }
}

/// The byte layout the two key formats share.
enum MegolmKeyLayout {
    static func encode(version: UInt8, ratchet: MegolmRatchet, signingKey: Ed25519PublicKey) -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(MegolmSessionKey.length)
        out.append(version)
        let index = ratchet.index
        out.append(UInt8(truncatingIfNeeded: index >> 24))
        out.append(UInt8(truncatingIfNeeded: index >> 16))
        out.append(UInt8(truncatingIfNeeded: index >> 8))
        out.append(UInt8(truncatingIfNeeded: index))
        out.append(contentsOf: ratchet.bytes)
        out.append(contentsOf: signingKey.bytes)
        return out
    }

    /// Checks version and exact length, then decodes index, ratchet and
    /// public key from the first 165 bytes.
    static func decode(_ bytes: [UInt8], version: UInt8, expectedLength expected: Int) throws(MegolmError) -> (MegolmRatchet, Ed25519PublicKey) {
        guard let first = bytes.first else { throw .badVersion(expected: version, got: nil) }
        guard first == version else { throw .badVersion(expected: version, got: first) }
        let total = bytes.count
        guard total == expected else {
            throw .badFormat(total < expected ? "too short (\(total) bytes, expected \(expected))"
                                              : "\(total - expected) unexpected bytes at the end")
        }
        let index = UInt32(bytes[1]) << 24 | UInt32(bytes[2]) << 16 | UInt32(bytes[3]) << 8 | UInt32(bytes[4])
        let keyBytes = Array(bytes[(5 + MegolmRatchet.length)..<(5 + MegolmRatchet.length + Ed25519PublicKey.length)])
        Sodium.ensureInitialized()
        let valid = keyBytes.withUnsafeBufferPointer { crypto_core_ed25519_is_valid_point($0.baseAddress!) == 1 }
        guard valid, let key = Ed25519PublicKey(bytes: keyBytes) else {
            throw .badFormat("the signing key is not a valid Ed25519 public key")
        }
        let ratchet = bytes.withUnsafeBytes { raw in
            MegolmRatchet(bytes: UnsafeRawBufferPointer(rebasing: raw[5..<(5 + MegolmRatchet.length)]), index: index)
        }
        return (ratchet, key)
    }
}
