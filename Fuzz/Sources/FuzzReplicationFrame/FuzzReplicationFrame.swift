import UnibusCrypto
import UnibusMembership

/// Arbitrary bytes as a route peer's replication frame (`RDATA` payload):
/// decoding must end in a typed frame or a named refusal. A frame that
/// decodes must re-encode to one that decodes to the same frame, and an
/// operation in it is folded into a small membership state (the rules must
/// refuse or apply it, never trap).
nonisolated(unsafe) private let base: MembershipState = {
    let admin = Identity()
    var state = MembershipState()
    try? state.apply(.sign(.addUser(key: admin.userNKey, exchangeKey: Base64.encode(admin.keyExchange.publicKey.bytes),
                                    handle: "root", role: .admin), by: admin))
    try? state.apply(.sign(.createRoom(id: "ops", subject: "rooms.ops", policy: RoomPolicy()), by: admin))
    return state
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzReplicationFrame(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = UnsafeBufferPointer(start: data, count: size)
    guard let frame = try? ReplicationFrame(decoding: bytes) else { return 0 }
    guard let again = try? ReplicationFrame(decoding: frame.encoded), again == frame else {
        fatalError("a decoded replication frame does not survive re-encoding: \(frame)")
    }
    if case .operation(let operation, _) = frame {
        var state = base
        try? state.apply(operation)
    }
    return 0
}
