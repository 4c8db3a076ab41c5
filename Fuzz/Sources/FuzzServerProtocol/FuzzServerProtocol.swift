import FuzzSupport
import UnibusWire

/// Arbitrary bytes through the server-side protocol parser, whole and split:
/// same operations, same verdict, no crash, hang or unbounded allocation.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzServerProtocol(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    checkSplitConsistency(ServerProtocolParser(maxControlLine: 512, maxPayload: 4096), UnsafeBufferPointer(start: data, count: size))
    return 0
}
