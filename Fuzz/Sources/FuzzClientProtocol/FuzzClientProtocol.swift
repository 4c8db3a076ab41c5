import FuzzSupport
import UnibusWire

/// Arbitrary bytes through the client-side protocol parser, whole and split:
/// same operations, same verdict, no crash, hang or unbounded allocation.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzClientProtocol(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    checkSplitConsistency(ClientProtocolParser(maxControlLine: 512, maxPayload: 4096), UnsafeBufferPointer(start: data, count: size))
    return 0
}
