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
    switch ServerError(text: String(decoding: bytes, as: UTF8.self)) {
    case .subscriptionRefused(let subject), .publishRefused(let subject):
        precondition(subject.utf8.count <= size, "a subject longer than the text it came from")
    case .other:
        break
    }
    return 0
}
