import NIOCore
import UnibusWire

/// Arbitrary bytes through the client-protocol parser, whole and split in
/// two at a point the input chooses: both must give the same operations and
/// the same verdict (incremental parsing may not change the outcome), and
/// neither may crash, hang or allocate without bound.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzClientProtocol(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = UnsafeBufferPointer(start: data, count: size)
    let parser = ClientProtocolParser(maxControlLine: 512, maxPayload: 4096)
    func run(_ chunks: [ArraySlice<UInt8>]) -> (ops: [String], error: ProtocolViolation?) {
        var buffer = ByteBuffer()
        var ops: [String] = []
        for chunk in chunks {
            buffer.writeBytes(chunk)
            do {
                while let op = try parser.next(&buffer) { ops.append("\(op)") }
            } catch {
                return (ops, error)
            }
        }
        return (ops, nil)
    }
    let whole = run([ArraySlice(bytes)])
    let cut = size == 0 ? 0 : Int(bytes[0]) % (size + 1)
    let split = run([ArraySlice(bytes[0..<cut]), ArraySlice(bytes[cut...])])
    // A violation found while bytes were still missing may be reported with
    // fewer operations before it only if the whole input reports one too.
    if whole.error == nil && split.error == nil && whole.ops != split.ops {
        fatalError("split parsing differs: \(whole.ops) vs \(split.ops)")
    }
    if (whole.error == nil) != (split.error == nil) {
        fatalError("split parsing changes the verdict: \(String(describing: whole.error)) vs \(String(describing: split.error))")
    }
    return 0
}
