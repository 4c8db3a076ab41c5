import FuzzSupport
import UnibusWire

/// Arbitrary bytes through the server-side protocol parser, whole and split:
/// same operations, same verdict, no crash, hang or unbounded allocation.
/// The bytes are also read as an `-ERR` text (`ServerError`), which a
/// client acts on (a refused SUB is retried).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzServerProtocol(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = UnsafeBufferPointer(start: data, count: size)
    checkSplitConsistency(ServerProtocolParser(maxControlLine: 512, maxPayload: 4096), bytes)
    let text = String(decoding: bytes, as: UTF8.self)   // invalid bytes become U+FFFD, as the client reads them
    switch ServerError(text: text) {
    case .subscriptionRefused(let subject), .publishRefused(let subject):
        precondition(text.contains(subject) && subject.utf8.count < text.utf8.count, "a subject that is not part of the text")
    case .other:
        break
    }
    return 0
}
