import UnibusCrypto
import UnibusMembership

/// Arbitrary bytes as a route peer's replication frame (`RDATA` payload):
/// decoding must end in a typed frame or a named refusal. A frame that
/// decodes must re-encode to one that decodes to the same frame, and an
/// operation in it is inserted into a small membership log (the log must
/// hold, park or refuse it, never trap).
private let base: MembershipLog = {
    let admin = Identity()
    var log = MembershipLog(pinnedRoot: admin.userNKey)
    _ = try? log.insert(.sign(.addUser(key: admin.userNKey, exchangeKey: Base64.encode(admin.keyExchange.publicKey.bytes),
                                       handle: "root", role: .admin), by: admin, parents: []))
    _ = try? log.insert(.sign(.createRoom(id: "ops", subject: "rooms.ops", policy: RoomPolicy()), by: admin, parents: log.heads))
    return log
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzReplicationFrame(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = UnsafeBufferPointer(start: data, count: size)
    guard let frame = try? ReplicationFrame(decoding: bytes) else { return 0 }
    guard let again = try? ReplicationFrame(decoding: frame.encoded), again == frame else {
        fatalError("a decoded replication frame does not survive re-encoding: \(frame)")
    }
    if case .operation(let operation) = frame {
        var log = base
        _ = try? log.insert(operation)
    }
    return 0
}
