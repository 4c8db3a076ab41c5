/// A decrypted Megolm message.
public struct MegolmDecrypted: Sendable, Equatable {
    public let plaintext: [UInt8]
    public let index: UInt32
}

/// The receiving side of a Megolm session (vodozemac's `InboundGroupSession`).
///
/// It keeps the ratchet at the first index it was given (so it can still
/// decrypt any later message, in any order) and a second ratchet at the
/// latest index it decrypted (so in-order messages cost one hash step).
public struct MegolmInboundSession: Sendable {
    private var initialRatchet: MegolmRatchet
    private var latestRatchet: MegolmRatchet
    public let signingKey: Ed25519PublicKey
    /// True when created from a signed session key, false from an export.
    public let signingKeyVerified: Bool

    /// From a signed session key (its signature was checked when decoded).
    public init(sessionKey: MegolmSessionKey) {
        initialRatchet = sessionKey.ratchet
        latestRatchet = sessionKey.ratchet
        signingKey = sessionKey.signingKey
        signingKeyVerified = true
    }

    /// From an unsigned export.
    public init(exportedSessionKey: MegolmExportedSessionKey) {
        initialRatchet = exportedSessionKey.ratchet
        latestRatchet = exportedSessionKey.ratchet
        signingKey = exportedSessionKey.signingKey
        signingKeyVerified = false
    }

    public var sessionID: String { Base64.encode(signingKey.bytes) }
    public var firstKnownIndex: UInt32 { initialRatchet.index }

    /// Verifies the signature, finds the ratchet for the message's index,
    /// checks the MAC and decrypts, in that order (as vodozemac does).
    public mutating func decrypt(_ message: MegolmMessage) throws(MegolmError) -> MegolmDecrypted {
        let bytes = message.bytes
        let signatureOffset = bytes.count - Ed25519PublicKey.signatureLength
        let macOffset = signatureOffset - MegolmCipher.macLength
        let signatureValid = bytes.withUnsafeBytes { raw in
            signingKey.verify(signature: UnsafeRawBufferPointer(rebasing: raw[signatureOffset...]),
                              message: UnsafeRawBufferPointer(rebasing: raw[..<signatureOffset]))
        }
        guard signatureValid else { throw .badSignature }
        guard let ratchet = findRatchet(for: message.index) else {
            throw .unknownIndex(firstKnown: initialRatchet.index, got: message.index)
        }
        let result = MegolmCipher.withKeys(for: ratchet) { (aesKey, macKey, iv) -> Result<[UInt8], MegolmError> in
            bytes.withUnsafeBytes { raw in
                let macMatches = withUnsafeTemporaryAllocation(of: UInt8.self, capacity: MegolmCipher.macLength) { mac in
                    MegolmCipher.truncatedMAC(macKey: macKey, data: UnsafeRawBufferPointer(rebasing: raw[..<macOffset]), into: mac.baseAddress!)
                    return Sodium.constantTimeEqual(UnsafeRawBufferPointer(mac), UnsafeRawBufferPointer(rebasing: raw[macOffset..<signatureOffset]))
                }
                guard macMatches else { return .failure(.badMAC) }
                let ciphertext = UnsafeRawBufferPointer(rebasing: raw[message.ciphertextRange])
                guard let plaintext = AES256CBC.decrypt(key: aesKey, iv: iv, ciphertext: ciphertext) else {
                    return .failure(.badPadding)
                }
                return .success(plaintext)
            }
        }
        let plaintext = try result.get()
        return MegolmDecrypted(plaintext: plaintext, index: message.index)
    }

    /// The ratchet at `index`, or nil when the index is before the first known one.
    private mutating func findRatchet(for index: UInt32) -> MegolmRatchet? {
        if initialRatchet.index == index { return initialRatchet }
        if latestRatchet.index == index { return latestRatchet }
        if latestRatchet.index < index {
            latestRatchet.advance(to: index)
            return latestRatchet
        }
        if initialRatchet.index < index {
            latestRatchet = initialRatchet
            latestRatchet.advance(to: index)
            return latestRatchet
        }
        return nil
    }

    /// An unsigned export from `index` on, or nil if `index` is before the first known index.
    public mutating func export(at index: UInt32) -> MegolmExportedSessionKey? {
        guard let ratchet = findRatchet(for: index) else { return nil }
        return MegolmExportedSessionKey(ratchet: ratchet, signingKey: signingKey)
    }

    /// Forgets everything before `index` (forward secrecy for a member who
    /// must not read earlier messages). Returns false if already past it.
    @discardableResult
    public mutating func advance(to index: UInt32) -> Bool {
        guard initialRatchet.index < index else { return false }
        initialRatchet.advance(to: index)
        if latestRatchet.index < index { latestRatchet = initialRatchet }
        return true
    }
}
