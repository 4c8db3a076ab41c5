import Foundation
import UnibusMembership
import UnibusPersistence
import UnibusSQLite

/// The ciphertext frames of the persisted rooms a node serves, in SQLite
/// (`frames.sqlite` in the data directory, apart from the membership log so
/// the two never wait on each other's fsyncs). Only verified frames are
/// stored (`FrameVerifier`); never plaintext, never keys.
///
/// A frame is stored once per (room, stream, index, sender): the same frame
/// arriving again (a resend, a copy from a peer) changes nothing. The sender
/// is part of the key so that a member who re-wraps someone else's frame
/// under its own name (which the Megolm signature does not cover) cannot
/// make the real one a "duplicate"; receivers drop the copy by its sender.
///
/// Memory stays bounded whatever a room holds: pages are read with `LIMIT`,
/// and only per-room totals are kept in memory.
///
/// One writer (the node's persister queue) and any number of readers (the
/// control plane's history requests) on separate connections: WAL lets them
/// run side by side.
public final class FrameStore: @unchecked Sendable {
    // @unchecked: `writer` is used from one queue at a time (the persister),
    // `reader` and `usage` under their locks.
    private let writer: SQLiteDatabase
    private let reader: SQLiteDatabase
    private let readerLock = NSLock()
    private let usageLock = NSLock()
    private var usage: [String: Usage] = [:]
    public let synchronous: SQLiteDatabase.Synchronous

    /// What one room holds on this node.
    public struct Usage: Equatable, Sendable {
        public var count: Int
        public var bytes: Int
        public init(count: Int = 0, bytes: Int = 0) {
            self.count = count
            self.bytes = bytes
        }
    }

    /// One stored frame with what the node knows of it.
    public struct Stored: Equatable, Sendable {
        /// This node's own order (pages use it; it means nothing on another node).
        public let sequence: Int64
        public let room: String
        public let id: FrameID
        public let sender: [UInt8]
        /// When the first node stored it (ms since the epoch); retention counts from it.
        public let firstStored: UInt64
        public let bytes: [UInt8]
    }

    /// A frame to insert and the time the first node stored it.
    public struct Insert: Sendable {
        public let room: String
        public let frame: VerifiedFrame
        public let firstStored: UInt64
        public init(room: String, frame: VerifiedFrame, firstStored: UInt64) {
            self.room = room
            self.frame = frame
            self.firstStored = firstStored
        }
    }

    public static let fileName = "frames.sqlite"

    /// Opens (creating) the store in `directory` (already prepared 0700 and
    /// locked by the node).
    public init(directory: String, synchronous: SQLiteDatabase.Synchronous = .full) throws {
        let path = (directory as NSString).appendingPathComponent(Self.fileName)
        self.synchronous = synchronous
        writer = try SQLiteDatabase(path: path, synchronous: synchronous)
        try writer.execute("""
            CREATE TABLE IF NOT EXISTS frames (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                room TEXT NOT NULL,
                stream BLOB NOT NULL,
                idx INTEGER NOT NULL,
                sender BLOB NOT NULL,
                first_stored INTEGER NOT NULL,
                size INTEGER NOT NULL,
                frame BLOB NOT NULL,
                UNIQUE (room, stream, idx, sender)
            );
            CREATE INDEX IF NOT EXISTS frames_by_age ON frames (room, first_stored, seq);
            CREATE INDEX IF NOT EXISTS frames_by_room ON frames (room, seq);
            """)
        reader = try SQLiteDatabase(path: path, synchronous: synchronous)
        for row in try writer.query("SELECT room, COUNT(*), COALESCE(SUM(size), 0) FROM frames GROUP BY room") {
            guard let room = row[0].text, let count = row[1].integer, let bytes = row[2].integer else { continue }
            usage[room] = Usage(count: Int(count), bytes: Int(bytes))
        }
    }

    /// What `room` holds now.
    public func usage(of room: String) -> Usage { usageLock.withLock { usage[room] ?? Usage() } }

    /// Inserts `frames` in one transaction (one fsync with the default
    /// policy); returns, for each, whether it was new. Call from one queue.
    public func insert(_ frames: [Insert]) throws -> [Bool] {
        var added: [String: Usage] = [:]
        let results: [Bool] = try writer.transaction {
            var results: [Bool] = []
            results.reserveCapacity(frames.count)
            for insert in frames {
                try writer.query("""
                    INSERT OR IGNORE INTO frames (room, stream, idx, sender, first_stored, size, frame) VALUES (?, ?, ?, ?, ?, ?, ?)
                    """, [.text(insert.room), .blob(insert.frame.id.stream), .integer(Int64(bitPattern: insert.frame.id.index)),
                          .blob(insert.frame.sender), .integer(Self.clamp(insert.firstStored)),
                          .integer(Int64(insert.frame.bytes.count)), .blob(insert.frame.bytes)])
                let new = writer.changes > 0
                if new {
                    added[insert.room, default: Usage()].count += 1
                    added[insert.room, default: Usage()].bytes += insert.frame.bytes.count
                }
                results.append(new)
            }
            return results
        }
        usageLock.withLock {
            for (room, more) in added {
                usage[room, default: Usage()].count += more.count
                usage[room, default: Usage()].bytes += more.bytes
            }
        }
        return results
    }

    /// Whether `room` holds `id` from `sender`.
    public func contains(room: String, id: FrameID, sender: [UInt8]) throws -> Bool {
        try readerLock.withLock {
            try !reader.query("SELECT 1 FROM frames WHERE room = ? AND stream = ? AND idx = ? AND sender = ?",
                              [.text(room), .blob(id.stream), .integer(Int64(bitPattern: id.index)), .blob(sender)]).isEmpty
        }
    }

    // MARK: retention

    /// The oldest first-stored time `room` keeps under `policy` at `now`:
    /// nothing older is stored or offered to this node. At its count or
    /// byte limit, that is its oldest frame (anything older would be
    /// deleted again at once).
    public func horizon(room: String, policy: RoomPolicy, now: UInt64) throws -> UInt64 {
        let age = Self.subtract(now, UInt64(max(0, policy.retainAgeSeconds)) * 1000)
        let held = usage(of: room)
        guard held.count >= policy.retainMessages || held.bytes >= policy.retainBytes else { return age }
        let oldest = try readerLock.withLock {
            try reader.query("SELECT MIN(first_stored) FROM frames WHERE room = ?", [.text(room)]).first?.first?.integer
        }
        return max(age, UInt64(max(0, oldest ?? 0)))
    }

    /// Deletes what `policy` no longer keeps in `room` at `now` (by age, then
    /// the oldest beyond the count and byte limits). Returns how many went.
    @discardableResult
    public func applyRetention(room: String, policy: RoomPolicy, now: UInt64) throws -> Int {
        let cutoff = Self.clamp(Self.subtract(now, UInt64(max(0, policy.retainAgeSeconds)) * 1000))
        var removed = Usage()
        try writer.transaction {
            if let row = try writer.query("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM frames WHERE room = ? AND first_stored < ?",
                                          [.text(room), .integer(cutoff)]).first,
               let count = row[0].integer, let bytes = row[1].integer, count > 0 {
                try writer.query("DELETE FROM frames WHERE room = ? AND first_stored < ?", [.text(room), .integer(cutoff)])
                removed.count += Int(count)
                removed.bytes += Int(bytes)
            }
            var held = usageLock.withLock { usage[room] ?? Usage() }
            held.count -= removed.count
            held.bytes -= removed.bytes
            // Oldest first, in chunks, until both limits hold.
            while held.count > policy.retainMessages || held.bytes > policy.retainBytes {
                let excess = max(1, held.count - policy.retainMessages)
                let rows = try writer.query("SELECT seq, size FROM frames WHERE room = ? ORDER BY first_stored, seq LIMIT ?",
                                            [.text(room), .integer(Int64(min(excess, 1000)))])
                guard !rows.isEmpty else { break }
                var last: Int64 = 0
                for row in rows {
                    guard let seq = row[0].integer, let size = row[1].integer else { continue }
                    last = seq
                    held.count -= 1
                    held.bytes -= Int(size)
                    removed.count += 1
                    removed.bytes += Int(size)
                    try writer.query("DELETE FROM frames WHERE seq = ?", [.integer(seq)])
                    if held.count <= policy.retainMessages && held.bytes <= policy.retainBytes { break }
                }
                _ = last
            }
        }
        if removed.count > 0 {
            usageLock.withLock {
                var held = usage[room] ?? Usage()
                held.count = max(0, held.count - removed.count)
                held.bytes = max(0, held.bytes - removed.bytes)
                usage[room] = held.count == 0 ? nil : held
            }
        }
        return removed.count
    }

    /// Deletes everything of `room` (archived, or no longer persisted).
    public func drop(room: String) throws {
        try writer.transaction { try writer.query("DELETE FROM frames WHERE room = ?", [.text(room)]) }
        _ = usageLock.withLock { usage.removeValue(forKey: room) }
    }

    /// Rooms that hold frames.
    public var rooms: [String] { usageLock.withLock { Array(usage.keys) } }

    // MARK: reading

    /// Which way a page runs.
    public enum Order: Sendable {
        /// Newest first, starting below `before` (a sequence from an earlier page).
        case newestFirst(before: Int64?)
        /// Oldest first, after `after`, from `since` (first-stored ms) on.
        case oldestFirst(after: Int64?, since: UInt64)
    }

    /// A page of `room`: at most `limit` frames and about `maxBytes`, at
    /// or after `notBefore` (first-stored ms: history visibility).
    public func page(room: String, order: Order, notBefore: UInt64 = 0, limit: Int, maxBytes: Int) throws -> [Stored] {
        let floor = Self.clamp(notBefore)
        let rows: [[SQLiteDatabase.Value]] = try readerLock.withLock {
            switch order {
            case .newestFirst(let before):
                return try reader.query("""
                    SELECT seq, room, stream, idx, sender, first_stored, frame FROM frames
                    WHERE room = ? AND seq < ? AND first_stored >= ? ORDER BY seq DESC LIMIT ?
                    """, [.text(room), .integer(before ?? .max), .integer(floor), .integer(Int64(max(1, limit)))])
            case .oldestFirst(var after, let since):
                // From a time: start at the first sequence stored since then
                // (found on the age index), not at the room's beginning.
                let from = max(floor, Self.clamp(since))
                if (after ?? 0) == 0, from > 0 {
                    guard let first = try reader.query("SELECT MIN(seq) FROM frames WHERE room = ? AND first_stored >= ?",
                                                       [.text(room), .integer(from)]).first?.first?.integer else { return [] }
                    after = first - 1
                }
                return try reader.query("""
                    SELECT seq, room, stream, idx, sender, first_stored, frame FROM frames
                    WHERE room = ? AND seq > ? AND first_stored >= ? ORDER BY seq ASC LIMIT ?
                    """, [.text(room), .integer(after ?? 0), .integer(max(floor, Self.clamp(since))), .integer(Int64(max(1, limit)))])
            }
        }
        var frames: [Stored] = []
        var total = 0
        for row in rows {
            guard row.count == 7, let seq = row[0].integer, let room = row[1].text, let stream = row[2].blob,
                  let index = row[3].integer, let sender = row[4].blob, let first = row[5].integer, let bytes = row[6].blob else { continue }
            if !frames.isEmpty && total + bytes.count > maxBytes { break }
            total += bytes.count
            frames.append(Stored(sequence: seq, room: room, id: FrameID(stream: stream, index: UInt64(bitPattern: index)),
                                 sender: sender, firstStored: UInt64(max(0, first)), bytes: bytes))
        }
        return frames
    }

    /// What `room` holds at or above `horizon`, as index ranges per sender
    /// and stream (for anti-entropy), in parts that each fit one message.
    public func inventory(room: String, horizon: UInt64) throws -> [[FrameReplication.StreamRanges]] {
        var streams: [[UInt8]: (sender: [UInt8], stream: [UInt8], indices: [UInt64])] = [:]
        var after: Int64 = 0
        while true {
            let rows = try readerLock.withLock {
                try reader.query("""
                    SELECT seq, sender, stream, idx FROM frames WHERE room = ? AND seq > ? AND first_stored >= ? ORDER BY seq LIMIT 5000
                    """, [.text(room), .integer(after), .integer(Self.clamp(horizon))])
            }
            guard !rows.isEmpty else { break }
            for row in rows {
                guard let seq = row[0].integer, let sender = row[1].blob, let stream = row[2].blob, let index = row[3].integer else { continue }
                after = seq
                streams[sender + stream, default: (sender, stream, [])].indices.append(UInt64(bitPattern: index))
            }
        }
        var parts: [[FrameReplication.StreamRanges]] = [[]]
        var rangesInPart = 0
        for (_, entry) in streams.sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) {
            var ranges = FrameReplication.StreamRanges.ranges(of: entry.indices)
            // A stream with more gaps than one entry carries is announced in several.
            while !ranges.isEmpty {
                let piece = Array(ranges.prefix(FrameReplication.maximumRanges))
                ranges.removeFirst(piece.count)
                if parts[parts.count - 1].count >= FrameReplication.maximumStreams
                    || rangesInPart + piece.count > FrameReplication.maximumRangesPerMessage {
                    parts.append([])
                    rangesInPart = 0
                }
                parts[parts.count - 1].append(FrameReplication.StreamRanges(sender: entry.sender, stream: entry.stream, ranges: piece))
                rangesInPart += piece.count
            }
        }
        return parts
    }

    /// Frames of `room` at or above `horizon` that `held` (keyed by sender
    /// and stream) does not list, oldest first, one page at a time (`after`
    /// is the last sequence of the previous page).
    public func missing(room: String, held: [[UInt8]: FrameReplication.StreamRanges], horizon: UInt64,
                        after: Int64, limit: Int) throws -> (frames: [Stored], last: Int64?) {
        let page = try page(room: room, order: .oldestFirst(after: after, since: horizon), limit: limit, maxBytes: FrameReplication.maximumBatchBytes / 2)
        let wanted = page.filter { stored in !(held[stored.sender + stored.id.stream]?.contains(stored.id.index) ?? false) }
        return (wanted, page.last?.sequence)
    }

    static func clamp(_ value: UInt64) -> Int64 { value > UInt64(Int64.max) ? .max : Int64(value) }
    static func subtract(_ a: UInt64, _ b: UInt64) -> UInt64 { a > b ? a - b : 0 }
}
