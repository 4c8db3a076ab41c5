import UnibusCrypto
import UnibusFleet

/// Arbitrary bytes as every fleet input: a route peer's fleet frame (beat,
/// result or command), a command an admin publishes on `unibus.control`,
/// and a VaultMesh agent's heartbeat body. Each must end in a typed value or
/// a named refusal, never a trap; a beat that opens must re-seal to bytes
/// that open to the same beat.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzFleetMessages(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    if let frame = try? FleetFrame(decoding: bytes) {
        guard (try? FleetFrame(decoding: frame.encoded)) == frame else { fatalError("a fleet frame does not survive re-encoding") }
        switch frame {
        case .beat(let payload): _ = try? NodeBeat.open(payload)
        case .result(let payload): _ = try? UpdateResult.open(payload)
        case .command(let payload): _ = try? ClusterCommand.open(payload)
        }
    }
    _ = try? NodeBeat.open(bytes)
    _ = try? UpdateResult.open(bytes)
    if let command = try? ClusterCommand.open(bytes) {
        _ = command.isFresh(nowMs: Int64(size))
    }
    _ = try? SignedDocument.split(bytes)
    _ = try? AgentHeartbeat.parse(bytes)
    return 0
}
