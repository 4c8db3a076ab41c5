import UnibusCrypto

/// Arbitrary bytes as a signed session key and as an export, raw and as
/// base64; whatever imports must be usable without crashing.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzMegolmSessionKey(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let text = String(decoding: bytes, as: UTF8.self)
    var sessions: [MegolmInboundSession] = []
    if let key = try? MegolmSessionKey(bytes: bytes) { sessions.append(MegolmInboundSession(sessionKey: key)) }
    if let key = try? MegolmSessionKey(base64: text) { sessions.append(MegolmInboundSession(sessionKey: key)) }
    if let key = try? MegolmExportedSessionKey(bytes: bytes) {
        guard key.bytes == bytes else { fatalError("export re-encoding differs") }
        sessions.append(MegolmInboundSession(exportedSessionKey: key))
    }
    if let key = try? MegolmExportedSessionKey(base64: text) { sessions.append(MegolmInboundSession(exportedSessionKey: key)) }
    for var session in sessions {
        // Bounded work: at most one jump of the fast ratchet advance.
        _ = session.export(at: session.firstKnownIndex &+ 1_000)
        _ = session.sessionID
    }
    return 0
}
