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
        // collects a peer's: the whole holds exactly the ranges announced
        // (a lost range costs a resend; a bridged gap would leave frames the
        // peer lacks unsent), with the first part's horizon, answered once.
        var inventory = PeerInventory(link: 1)
        let half = streams.count / 2
        _ = inventory.take(room: room, horizon: horizon, streams: Array(streams[..<half]), last: false)
        guard let whole = inventory.take(room: room, horizon: horizon &+ 1, streams: Array(streams[half...]), last: true) else { break }
        guard whole.horizon == horizon else { fatalError("an inventory's horizon is not its first part's") }
        func announced(_ key: [UInt8], _ index: UInt64) -> Bool {
            streams.contains { $0.key == key && $0.contains(index) }
        }
        for stream in streams {
            guard let held = whole.held[stream.key] else { fatalError("a collected inventory lost a stream") }
            for range in stream.ranges {
                guard held.contains(range.lowerBound), held.contains(range.upperBound) else {
                    fatalError("a collected inventory lost an announced range")
                }
                // Just outside an announced range: held only if announced too.
                // With the held ranges' own ends announced, this rules out any
                // index held and never announced.
                if range.upperBound < .max, held.contains(range.upperBound + 1), !announced(stream.key, range.upperBound + 1) {
                    fatalError("a collected inventory bridged a gap after \(range)")
                }
                if range.lowerBound > 0, held.contains(range.lowerBound - 1), !announced(stream.key, range.lowerBound - 1) {
                    fatalError("a collected inventory bridged a gap before \(range)")
                }
            }
        }
        for (key, held) in whole.held {
            for range in held.ranges where !announced(key, range.lowerBound) || !announced(key, range.upperBound) {
                fatalError("a collected inventory holds \(range), never announced")
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
