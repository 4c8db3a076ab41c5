import UnibusCrypto
import UnibusMembership
import UnibusPersistence

/// Arbitrary bytes as what a route peer sends about persisted rooms (a
/// frame replication message) or as a frame a member publishes to one:
/// decoding must end in a typed message or a named refusal, a decoded
/// message must survive re-encoding, and every frame in it goes through the
/// node's verifier (which must accept or name what is wrong, never trap);
/// an inventory is collected the way the node collects a peer's.
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
    case .inventory(let room, let horizon, _, let streams):
        for stream in streams {
            for range in stream.ranges {
                guard stream.contains(range.lowerBound), stream.contains(range.upperBound) else {
                    fatalError("an inventory does not contain its own range ends")
                }
            }
        }
        // Collected as two parts of one link's inventory, the way the node
        // collects a peer's: the whole holds every range announced, with the
        // first part's horizon, and is answered once.
        var inventory = PeerInventory(link: 1)
        _ = inventory.take(room: room, horizon: horizon, streams: streams, last: false)
        guard let whole = inventory.take(room: room, horizon: horizon &+ 1, streams: streams, last: true) else { break }
        guard whole.horizon == horizon else { fatalError("an inventory's horizon is not its first part's") }
        for stream in streams {
            for range in stream.ranges {
                guard let held = whole.held[stream.key], held.contains(range.lowerBound), held.contains(range.upperBound) else {
                    fatalError("a collected inventory lost an announced range")
                }
            }
        }
        if inventory.take(room: room, horizon: horizon, streams: [], last: true) != nil {
            fatalError("a room's inventory was answered twice on one link")
        }
    case .stored:
        break
    }
    return 0
}
