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

    /// Most index ranges one room's inventory may announce, and most rooms
    /// collected at once: a peer that announces without end cannot grow this
    /// node's memory without bound.
    public static let maximumRanges = 4_000_000
    public static let maximumRooms = 10_000

    /// The link the parts came on.
    public let link: UInt64
    private var rooms: [String: (horizon: UInt64, held: Held, ranges: Int)] = [:]
    private var answered: Set<String> = []

    /// Nothing collected yet, for the link numbered `link`.
    public init(link: UInt64) {
        self.link = link
    }

    /// Takes one part of `room`'s inventory. Returns the whole inventory
    /// (the first part's horizon, what the peer holds) after the last part,
    /// once per room on this link; nil before that, for a room already
    /// answered, and for a room past the bounds (its parts are dropped).
    public mutating func take(room: String, horizon: UInt64, streams: [FrameReplication.StreamRanges], last: Bool) -> (horizon: UInt64, held: Held)? {
        guard !answered.contains(room) else { return nil }
        var entry = rooms[room] ?? (horizon, [:], 0)
        for stream in streams {
            entry.held[stream.key] = entry.held[stream.key].map { $0.merged(with: stream) } ?? stream
            entry.ranges += stream.ranges.count
        }
        guard entry.ranges <= Self.maximumRanges, rooms.count <= Self.maximumRooms else {
            rooms[room] = nil
            return nil
        }
        guard last else {
            rooms[room] = entry
            return nil
        }
        rooms[room] = nil
        answered.insert(room)
        return (entry.horizon, entry.held)
    }
}
