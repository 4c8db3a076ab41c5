import UnibusCrypto

/// Arbitrary bytes as an identity file: a verdict or a valid identity that
/// re-encodes to a file that decodes to the same keys.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzIdentityFile(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    if let identity = try? IdentityFile.decode(bytes) {
        guard let again = try? IdentityFile.decode(IdentityFile.encode(identity)),
              again.userNKey == identity.userNKey,
              again.keyExchange.publicKey == identity.keyExchange.publicKey else {
            fatalError("identity did not survive re-encoding")
        }
    }
    if let state = try? MegolmOutboundSessionState(file: bytes) {
        _ = state.encodedFile()
    }
    return 0
}
