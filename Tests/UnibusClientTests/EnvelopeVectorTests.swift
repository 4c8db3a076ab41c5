import Testing
import UnibusControlClient
import UnibusCrypto
import UnibusWire

/// The byte-level test vector of docs/protocol.md: a signed frame from a
/// fixed identity (Ed25519 signatures are deterministic), and the layout of
/// a Megolm frame around a given message.
@Suite("Frame envelope vectors")
struct EnvelopeVectorTests {
    static let seed = [UInt8](repeating: 0x01, count: 32)
    static let stream = [UInt8](0x10...0x1f)

    static let inner = InnerFrame(room: "ops", timestamp: 1_800_000_000_000, contentType: "text/plain", compressed: false,
                                  body: Array("hi".utf8))

    @Test func innerFrameVector() throws {
        let bytes = Self.inner.encoded()
        #expect(Hex.encode(bytes) == "036f7073000001a3185c5000" + "0a746578742f706c61696e" + "00" + "6869")
        #expect(try InnerFrame(decoding: bytes) == Self.inner)
        // The in-place encoding senders encrypt from is the same bytes.
        #expect(Self.inner.encodedLength == bytes.count)
        #expect(Self.inner.withEncoded { Array($0) } == bytes)
    }

    @Test func signedFrameVector() throws {
        let signing = try #require(Ed25519KeyPair(seed: Self.seed))
        var frame = FrameEnvelope.encodeSignedUnsigned(sender: signing.publicKey.bytes, stream: Self.stream, sequence: 7,
                                                       inner: Self.inner.encoded())
        frame += signing.sign(frame)
        let expected = "55420102" + Hex.encode(signing.publicKey.bytes)
            + "101112131415161718191a1b1c1d1e1f" + "0000000000000007"
            + "036f7073000001a3185c50000a746578742f706c61696e006869"
        #expect(Hex.encode(Array(frame.prefix(frame.count - 64))) == expected)
        #expect(Hex.encode(signing.publicKey.bytes) == "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c")
        #expect(Hex.encode(Array(frame.suffix(64))) == Self.signatureHex)
        let envelope = try FrameEnvelope(decoding: frame)
        guard case .signed(let stream, let sequence, let inner, _, _) = envelope.body else {
            Issue.record("not decoded as a signed frame")
            return
        }
        #expect(stream == Self.stream && sequence == 7 && envelope.sender == signing.publicKey.bytes)
        #expect(try InnerFrame(decoding: inner) == Self.inner)
    }

    /// Computed independently with PyNaCl (see docs/protocol.md).
    static let signatureHex = "9c430b37375c6f759564ca4f915a3d9d3a2ca59992f93f8194372b2508dfa9d968ae404d58bdeb5bbc0dcae877b737205d181ec295ec09b8b9ec40c7f9527509"

    @Test func megolmFrameLayout() throws {
        let sender = [UInt8](repeating: 0xaa, count: 32), session = [UInt8](repeating: 0xbb, count: 32)
        let message: [UInt8] = [0x03, 0x08, 0x00, 0x12, 0x10] + [UInt8](repeating: 0xcc, count: 16) + [UInt8](repeating: 0xdd, count: 72)
        let frame = FrameEnvelope.encodeMegolm(sender: sender, sessionKey: session, message: message)
        #expect(Array(frame.prefix(4)) == [0x55, 0x42, 0x01, 0x01])
        #expect(frame.count == 4 + 32 + 32 + message.count)
        let envelope = try FrameEnvelope(decoding: frame)
        guard case .megolm(let decodedSession, let decodedMessage) = envelope.body else {
            Issue.record("not decoded as a Megolm frame")
            return
        }
        #expect(envelope.sender == sender && decodedSession == session && Array(decodedMessage) == message)
    }

    @Test func malformedEnvelopesAreNamed() {
        #expect(throws: FrameFormatError.notAFrame) { try FrameEnvelope(decoding: [0x55]) }
        #expect(throws: FrameFormatError.unknownVersion(2)) { try FrameEnvelope(decoding: [0x55, 0x42, 0x02, 0x01]) }
        #expect(throws: FrameFormatError.unknownKind(7)) { try FrameEnvelope(decoding: [0x55, 0x42, 0x01, 0x07]) }
        #expect(throws: FrameFormatError.self) { try FrameEnvelope(decoding: [0x55, 0x42, 0x01, 0x01] + [UInt8](repeating: 0, count: 64)) }
        #expect(throws: FrameFormatError.self) { try InnerFrame(decoding: [0]) }
        // Found by FuzzFrameEnvelope: a room id over 64 bytes decoded, then could not be re-encoded.
        #expect(throws: FrameFormatError.malformed("room id longer than 64 bytes")) {
            try InnerFrame(decoding: [0x55] + [UInt8](repeating: 0x61, count: 0x55) + [UInt8](repeating: 0, count: 10))
        }
        #expect(throws: FrameFormatError.self) { try InnerFrame(decoding: [1, 0x61] + [UInt8](repeating: 0, count: 9) + [0x02]) }
        #expect(throws: FrameFormatError.self) { try InnerFrame(decoding: [1, 0xff] + [UInt8](repeating: 0, count: 10)) }
    }
}
