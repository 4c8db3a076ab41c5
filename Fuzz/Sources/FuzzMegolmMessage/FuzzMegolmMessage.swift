import UnibusCrypto

/// One fixed session: decoding arbitrary bytes as a message and decrypting
/// it must end in a verdict, never a crash, hang or runaway allocation.
/// Both sides are made together: Swift globals initialise lazily, and an
/// inbound session made after the first encryption would miss index 0.
final class Harness {
    let outbound = MegolmOutboundSession()
    var inbound: MegolmInboundSession
    init() { inbound = MegolmInboundSession(sessionKey: outbound.sessionKey) }
}
nonisolated(unsafe) let harness = Harness()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzMegolmMessage(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let outbound = harness.outbound
    // The raw bytes as a message.
    if let message = try? MegolmMessage(bytes: bytes) {
        _ = try? harness.inbound.decrypt(message)
        _ = message.base64
    }
    // The bytes as base64 text.
    _ = try? MegolmMessage(base64: String(decoding: bytes, as: UTF8.self))
    // The bytes as a plaintext: the round trip must be exact.
    if size < 4096, let encrypted = try? outbound.encrypt(bytes) {
        guard let decrypted = try? harness.inbound.decrypt(MegolmMessage(bytes: encrypted.bytes)),
              decrypted.plaintext == bytes else {
            fatalError("Megolm round trip failed for \(size) bytes")
        }
    }
    return 0
}
