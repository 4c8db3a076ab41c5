import UnibusCrypto
import UnibusMembership
import UnibusPersistence

/// Arbitrary bytes as what a route peer sends about persisted rooms (a
/// frame replication message) or as a frame a member publishes to one:
/// decoding must end in a typed message or a named refusal, a decoded
/// message must survive re-encoding, and every frame in it goes through the
/// node's verifier (which must accept or name what is wrong, never trap).
private let state: MembershipState = {
    let admin = Identity()
    var state = MembershipState()
    try? state.apply(.sign(.addUser(key: admin.userNKey, exchangeKey: Base64.encode(admin.keyExchange.publicKey.bytes),
                                    handle: "root", role: .admin), by: admin))
    try? state.apply(.sign(.setClusterSettings(settings: ClusterSettings(allowUnencryptedRooms: true, maxRoomsPerUser: 100)), by: admin))
    try? state.apply(.sign(.createRoom(id: "ops", subject: "rooms.ops", policy: RoomPolicy(persist: true)), by: admin))
    try? state.apply(.sign(.createRoom(id: "signed", subject: "rooms.signed", policy: RoomPolicy(encrypt: false, persist: true)), by: admin))
    return state
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzFrameReplication(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard FrameReplication.isFrameReplication(bytes) else {
        for room in ["ops", "signed"] { _ = try? FrameVerifier.verify(bytes, room: room, in: state) }
        return 0
    }
    guard let message = try? FrameReplication(decoding: bytes) else { return 0 }
    guard let again = try? FrameReplication(decoding: message.encoded), again == message else {
        fatalError("a decoded frame replication message does not survive re-encoding: \(message)")
    }
    switch message {
    case .frames(_, let room, let frames):
        for frame in frames { _ = try? FrameVerifier.verify(frame.bytes, room: room, in: state) }
    case .inventory(_, _, _, let streams):
        for stream in streams {
            for range in stream.ranges {
                guard stream.contains(range.lowerBound), stream.contains(range.upperBound) else {
                    fatalError("an inventory does not contain its own range ends")
                }
            }
        }
    case .stored:
        break
    }
    return 0
}
