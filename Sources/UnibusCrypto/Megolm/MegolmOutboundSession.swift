/// The sending side of a Megolm session (vodozemac's `GroupSession`).
///
/// A class, not a value: copying an outbound session and encrypting with
/// both copies would reuse message keys. Not `Sendable`; an owner that shares
/// it across tasks wraps it in an actor.
public final class MegolmOutboundSession {
    private var ratchet: MegolmRatchet
    private let signing: Ed25519KeyPair
    private var exhausted = false

    /// A new session with a random ratchet at index 0 and a new signing key.
    public init() {
        ratchet = MegolmRatchet()
        signing = Ed25519KeyPair()
    }

    /// Restores a session from its saved state (see `MegolmOutboundSessionState`).
    public init(state: MegolmOutboundSessionState) {
        ratchet = state.ratchet
        signing = state.signing
        exhausted = state.exhausted
    }

    /// Signs a statement about the session with its own Ed25519 key (Unibus
    /// binds a session to its creator this way). Refuses messages that start
    /// like a Megolm message (0x03) or session key (0x02), so no statement
    /// can ever be taken for either.
    public func signStatement(_ message: [UInt8]) -> [UInt8]? {
        guard let first = message.first, first != 0x02, first != 0x03 else { return nil }
        return signing.sign(message)
    }

    /// The session id: the signing public key in unpadded base64.
    public var sessionID: String { Base64.encode(signing.publicKey.bytes) }

    /// The index the next message will use.
    public var messageIndex: UInt32 { ratchet.index }

    public var signingKey: Ed25519PublicKey { signing.publicKey }

    /// The signed session key at the current index, to share with recipients.
    /// Whoever holds it can decrypt every message from this index on.
    public var sessionKey: MegolmSessionKey { MegolmSessionKey(ratchet: ratchet, signing: signing) }

    /// The state to persist so that a restored session never reuses an index.
    public var state: MegolmOutboundSessionState {
        MegolmOutboundSessionState(ratchet: ratchet, signing: signing, exhausted: exhausted)
    }

    /// Encrypts, MACs and signs `plaintext` at the current index, then advances.
    public func encrypt(_ plaintext: [UInt8]) throws(MegolmError) -> MegolmMessage {
        let result = plaintext.withUnsafeBytes { raw in Result { () throws(MegolmError) in try encrypt(raw) } }
        return try result.get()
    }

    /// The allocation-lean form: one allocation for the encoded message.
    public func encrypt(_ plaintext: UnsafeRawBufferPointer) throws(MegolmError) -> MegolmMessage {
        let (bytes, index, ciphertextRange) = try encrypt(plaintext, after: UnsafeRawBufferPointer(start: nil, count: 0))
        return MegolmMessage(encoded: bytes, index: index, ciphertextRange: ciphertextRange)
    }

    /// Encrypts like `encrypt(_:)`, but lays the message out after `prefix`
    /// in the same allocation (a frame envelope's header), so a caller that
    /// wraps the message does not copy it again. The MAC and signature cover
    /// the message only, exactly as in `encrypt(_:)`; the message is
    /// `bytes[prefix.count...]` and its ciphertext `bytes[ciphertextRange]`.
    public func encrypt(_ plaintext: UnsafeRawBufferPointer, after prefix: UnsafeRawBufferPointer) throws(MegolmError)
        -> (bytes: [UInt8], index: UInt32, ciphertextRange: Range<Int>) {
        guard !exhausted else { throw .sessionExhausted }
        let index = ratchet.index
        let ciphertextLength = AES256CBC.ciphertextLength(forPlaintext: plaintext.count)
        let headerLength = MegolmMessage.headerLength(index: index, ciphertextLength: ciphertextLength)
        let macOffset = headerLength + ciphertextLength
        let messageLength = macOffset + MegolmMessage.suffixLength
        let start = prefix.count
        let signing = self.signing
        let bytes = MegolmCipher.withKeys(for: ratchet) { (aesKey, macKey, iv) -> [UInt8] in
            [UInt8](unsafeUninitializedCapacity: start + messageLength) { buffer, initialized in
                if let source = prefix.baseAddress { UnsafeMutableRawPointer(buffer.baseAddress!).copyMemory(from: source, byteCount: start) }
                let out = buffer.baseAddress! + start
                var cursor = 0
                out[cursor] = MegolmMessage.version; cursor += 1
                out[cursor] = MegolmMessage.indexTag; cursor += 1
                cursor += Varint.encode(UInt64(index), into: out + cursor)
                out[cursor] = MegolmMessage.ciphertextTag; cursor += 1
                cursor += Varint.encode(UInt64(ciphertextLength), into: out + cursor)
                let written = AES256CBC.encrypt(key: aesKey, iv: iv, plaintext: plaintext, into: out + cursor)
                precondition(written == ciphertextLength)
                MegolmCipher.truncatedMAC(macKey: macKey, data: UnsafeRawBufferPointer(start: out, count: macOffset), into: out + macOffset)
                let signedLength = macOffset + MegolmCipher.macLength
                signing.sign(UnsafeRawBufferPointer(start: out, count: signedLength),
                             into: UnsafeMutableRawBufferPointer(start: out + signedLength, count: Ed25519PublicKey.signatureLength))
                initialized = start + messageLength
            }
        }
        if index == UInt32.max {
            exhausted = true
        } else {
            ratchet.advance()
        }
        return (bytes, index, (start + headerLength)..<(start + macOffset))
    }
}

/// The saved state of an outbound session: its ratchet and signing key.
/// Secret; `MegolmOutboundSession` and its state are the only holders.
public struct MegolmOutboundSessionState: Sendable {
    let ratchet: MegolmRatchet
    let signing: Ed25519KeyPair
    let exhausted: Bool

    init(ratchet: MegolmRatchet, signing: Ed25519KeyPair, exhausted: Bool) {
        self.ratchet = ratchet
        self.signing = signing
        self.exhausted = exhausted
    }

    /// Rebuilds a state from its parts (as stored in a session file).
    public init?(ratchet: [UInt8], index: UInt32, signingSeed: [UInt8], exhausted: Bool = false) {
        guard ratchet.count == MegolmRatchet.length, let signing = Ed25519KeyPair(seed: signingSeed) else { return nil }
        self.ratchet = ratchet.withUnsafeBytes { MegolmRatchet(bytes: $0, index: index) }
        self.signing = signing
        self.exhausted = exhausted
    }

    public var ratchetBytes: [UInt8] { Array(ratchet.bytes) }
    public var index: UInt32 { ratchet.index }
    public var signingSeed: [UInt8] { signing.seed }
    public var isExhausted: Bool { exhausted }
}

import Foundation

extension MegolmOutboundSessionState {
    public static let fileFormat = "unibus-megolm-outbound/1"

    private struct FileContents: Codable {
        var format: String
        var session_id: String
        var index: UInt32
        var ratchet: String
        var signing_seed: String
        var exhausted: Bool
    }

    /// The JSON document a session file holds (secret: ratchet and signing seed).
    public func encodedFile() -> [UInt8] {
        var ratchet = ratchetBytes
        var seed = signingSeed
        defer {
            wipe(&ratchet)
            wipe(&seed)
        }
        let contents = FileContents(format: Self.fileFormat, session_id: Base64.encode(signing.publicKey.bytes),
                                    index: index, ratchet: Base64.encode(ratchet),
                                    signing_seed: Base64.encode(seed), exhausted: exhausted)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        guard let data = try? encoder.encode(contents) else { return [] }
        return [UInt8](data) + [UInt8(ascii: "\n")]
    }

    /// Parses a session file's JSON; `reason` in the error names the problem.
    public init(file bytes: [UInt8]) throws(CorruptDocument) {
        guard let contents = try? JSONDecoder().decode(FileContents.self, from: Data(bytes)) else {
            throw CorruptDocument("not a JSON Megolm session document")
        }
        guard contents.format == Self.fileFormat else {
            throw CorruptDocument("unknown format (expected \(Self.fileFormat))")
        }
        guard var ratchet = try? Base64.decode(contents.ratchet), var seed = try? Base64.decode(contents.signing_seed) else {
            throw CorruptDocument("ratchet or signing_seed is not unpadded base64")
        }
        defer {
            wipe(&ratchet)
            wipe(&seed)
        }
        guard let state = MegolmOutboundSessionState(ratchet: ratchet, index: contents.index, signingSeed: seed, exhausted: contents.exhausted) else {
            throw CorruptDocument("ratchet must be 128 bytes and signing_seed 32")
        }
        guard Base64.encode(state.signing.publicKey.bytes) == contents.session_id else {
            throw CorruptDocument("session_id does not match signing_seed")
        }
        self = state
    }
}
