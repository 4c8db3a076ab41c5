import UnibusWire

/// Arbitrary bytes through the frame envelope and inner-frame decoders: no
/// crash, and whatever decodes re-encodes to exactly the input (one
/// canonical encoding, so a frame cannot be re-shaped without breaking its
/// signature or MAC).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzFrameEnvelope(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    if let envelope = try? FrameEnvelope(decoding: bytes) {
        let again: [UInt8]
        switch envelope.body {
        case .megolm(let session, let message):
            again = FrameEnvelope.encodeMegolm(sender: envelope.sender, sessionKey: session, message: Array(message))
        case .signed(let stream, let sequence, let inner, let signature, let signedRange):
            again = FrameEnvelope.encodeSignedUnsigned(sender: envelope.sender, stream: stream, sequence: sequence, inner: Array(inner)) + signature
            precondition(signedRange == 0..<(bytes.count - FrameEnvelope.signatureLength), "signature must cover everything before it")
        case .plain(let inner):
            again = FrameEnvelope.encodePlain(sender: envelope.sender, inner: Array(inner))
        }
        precondition(again == bytes, "envelope did not re-encode to its input")
    }
    if let inner = try? InnerFrame(decoding: bytes) {
        precondition(inner.encoded() == bytes, "inner frame did not re-encode to its input")
    }
    return 0
}
