import NIOCore
import UnibusWire

/// Feeds `bytes` to `parser` whole and split in two at a point the input
/// chooses (its first byte): both must give the same operations and the same
/// verdict, since incremental parsing may not change the outcome.
public func checkSplitConsistency<Parser: ProtocolParser>(_ parser: Parser, _ bytes: UnsafeBufferPointer<UInt8>) {
    func run(_ chunks: [ArraySlice<UInt8>]) -> (ops: [Parser.Operation], error: ProtocolViolation?) {
        var buffer = ByteBuffer()
        var ops: [Parser.Operation] = []
        for chunk in chunks {
            buffer.writeBytes(chunk)
            do {
                while let op = try parser.next(&buffer) { ops.append(op) }
            } catch {
                return (ops, error)
            }
        }
        return (ops, nil)
    }
    let whole = run([ArraySlice(bytes)])
    let cut = bytes.isEmpty ? 0 : Int(bytes[0]) % (bytes.count + 1)
    let split = run([ArraySlice(bytes[0..<cut]), ArraySlice(bytes[cut...])])
    if whole.error == nil && split.error == nil && whole.ops != split.ops {
        fatalError("split parsing differs: \(whole.ops) vs \(split.ops)")
    }
    if (whole.error == nil) != (split.error == nil) {
        fatalError("split parsing changes the verdict: \(String(describing: whole.error)) vs \(String(describing: split.error))")
    }
}
