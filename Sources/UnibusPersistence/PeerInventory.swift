/// What one peer announced of its persisted rooms on one route link:
/// inventory parts collected per room until the last part, and the rooms
/// already answered on that link.
///
/// Everything here belongs to one link. A peer's link can be replaced (by a
/// preferred duplicate, or after a close) while frames from the new link
/// arrive before the node layer hears of it: the holder keeps this value
/// while the link is the same (`link`) and starts a new one for another link.
public struct PeerInventory: Sendable {
    /// What the peer holds, by stream key (`StreamRanges.key`).
    public typealias Held = [[UInt8]: FrameReplication.StreamRanges]

    /// Most index ranges one room's inventory may announce, most rooms
    /// collected at once, and most rooms settled on one link: a peer that
    /// announces without end cannot grow this node's memory without bound.
    public static let maximumRanges = 4_000_000
    public static let maximumRooms = 10_000
    public static let maximumSettled = 1_000_000

    /// The link the parts came on.
    public let link: UInt64
    private var rooms: [String: (horizon: UInt64, held: Held, ranges: Int)] = [:]
    /// Rooms answered, or refused for going past a bound, on this link.
    private var settled: Set<String> = []

    /// Nothing collected yet, for the link numbered `link`.
    public init(link: UInt64) {
        self.link = link
    }

    /// Takes one part of `room`'s inventory. Returns the whole inventory
    /// (the first part's horizon, what the peer holds) after the last part,
    /// once per room on this link; nil before that, for a room already
    /// answered, and for a room past a bound: its parts are dropped and the
    /// rest of its inventory on this link is ignored (answering a truncated
    /// inventory would send the whole room again).
    public mutating func take(room: String, horizon: UInt64, streams: [FrameReplication.StreamRanges], last: Bool) -> (horizon: UInt64, held: Held)? {
        guard !settled.contains(room), settled.count < Self.maximumSettled else { return nil }
        guard var entry = rooms.removeValue(forKey: room) ?? (rooms.count < Self.maximumRooms ? (horizon, [:], 0) : nil) else {
            settled.insert(room)
            return nil
        }
        for stream in streams {
            entry.held[stream.key] = entry.held[stream.key].map { $0.merged(with: stream) } ?? stream
            entry.ranges += stream.ranges.count
        }
        guard entry.ranges <= Self.maximumRanges else {
            settled.insert(room)
            return nil
        }
        guard last else {
            rooms[room] = entry
            return nil
        }
        settled.insert(room)
        return (entry.horizon, entry.held)
    }
}
