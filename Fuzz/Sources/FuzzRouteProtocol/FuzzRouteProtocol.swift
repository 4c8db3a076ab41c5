import FuzzSupport
import UnibusWire

/// Arbitrary bytes through the route protocol parser (what a node reads from
/// a peer), whole and split: same operations, same verdict, no crash, hang
/// or unbounded allocation.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRouteProtocol(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    checkSplitConsistency(RouteProtocolParser(maxControlLine: 512, maxPayload: 4096, maxData: 4096), UnsafeBufferPointer(start: data, count: size))
    return 0
}
