import Foundation
import Testing
import UnibusCrypto
@testable import UnibusMembership

/// The replicated log: every node folds the same set of operations in the
/// same order, whatever order they arrived in.
@Suite("Replicated membership log")
struct ReplicatedLogTests {
    let admin = Identity()
    let alice = Identity()
    let bob = Identity()
    let base = NSTemporaryDirectory() + "unibus-replicated-\(UUID().uuidString)"
    /// Node ids (server nkeys) for origins, in the order the old names
    /// "NA" < "NB" < "NC" < "NX" had (origins break ties in log order).
    static let nodes = (0..<4).map { _ in NKey.encodePublicKey(Ed25519KeyPair().publicKey, type: .server) }.sorted()
    static let nodeA = nodes[0], nodeB = nodes[1], nodeC = nodes[2], nodeX = nodes[3]

    private func store(_ name: String) throws -> MembershipStore {
        try MembershipStore(directory: base + "/" + name)
    }

    private func add(_ user: Identity, _ handle: String, role: UserRole = .member) -> MembershipOperation {
        .addUser(key: user.userNKey, exchangeKey: Base64.encode(user.keyExchange.publicKey.bytes), handle: handle, role: role)
    }

    /// Copies every entry of `source` into `target` in the given order.
    private func ship(_ entries: [LogEntry], to target: MembershipStore) throws {
        for entry in entries { _ = try target.merge(entry.operation, at: entry.position) }
    }

    @Test func anyArrivalOrderFoldsToTheSameState() throws {
        let a = try store("a")
        try a.append(.sign(add(admin, "root", role: .admin), by: admin), origin: Self.nodeA)
        try a.append(.sign(add(alice, "alice"), by: admin), origin: Self.nodeA)
        try a.append(.sign(.createRoom(id: "ops", subject: "rooms.ops", policy: RoomPolicy()), by: alice), origin: Self.nodeA)
        try a.append(.sign(add(bob, "bob"), by: admin), origin: Self.nodeA)
        try a.append(.sign(.addMember(room: "ops", user: bob.userNKey, role: .member), by: alice), origin: Self.nodeA)
        let entries = a.logEntries()
        for (index, order) in [entries, entries.reversed(), entries.shuffled(), entries.shuffled()].enumerated() {
            let b = try store("b\(index)")
            try ship(order, to: b)
            #expect(b.snapshot == a.snapshot)
            #expect(b.snapshot.digest == a.snapshot.digest)
            #expect(b.logDigest == a.logDigest)
            #expect(b.refusedOperations.isEmpty)
            // Reopened, the store folds the same way.
            #expect(try store("b\(index)").snapshot == a.snapshot)
        }
    }

    @Test func concurrentConflictsResolveTheSameWayEverywhere() throws {
        // Two nodes share a bootstrap, then each accepts a room "ops" while partitioned.
        let a = try store("a"), c = try store("c")
        try a.append(.sign(add(admin, "root", role: .admin), by: admin), origin: Self.nodeA)
        try a.append(.sign(add(alice, "alice"), by: admin), origin: Self.nodeA)
        try a.append(.sign(add(bob, "bob"), by: admin), origin: Self.nodeA)
        try ship(a.logEntries(), to: c)
        try a.append(.sign(.createRoom(id: "ops", subject: "rooms.a", policy: RoomPolicy()), by: alice), origin: Self.nodeA)
        try c.append(.sign(.createRoom(id: "ops", subject: "rooms.c", policy: RoomPolicy()), by: bob), origin: Self.nodeC)
        #expect(a.snapshot.rooms["ops"]?.subject == "rooms.a")
        #expect(c.snapshot.rooms["ops"]?.subject == "rooms.c")
        // Heal: each gets the other's operations.
        let fromA = a.logEntries(), fromC = c.logEntries()
        try ship(fromC, to: a)
        try ship(fromA, to: c)
        #expect(a.snapshot == c.snapshot)
        #expect(a.logDigest == c.logDigest)
        // The room created first in log order wins; the other is refused on both.
        let winner = [fromA.last!, fromC.last!].min { $0.position < $1.position }!
        let loser = [fromA.last!, fromC.last!].max { $0.position < $1.position }!
        #expect(a.snapshot.rooms["ops"]?.owner == winner.operation.envelope.actor)
        #expect(a.refusedOperations[loser.operation.id] == .conflict("room ops exists"))
        #expect(c.refusedOperations[loser.operation.id] == .conflict("room ops exists"))
    }

    @Test func anOperationWaitsForTheOperationsBeforeIt() throws {
        let a = try store("a")
        try a.append(.sign(add(admin, "root", role: .admin), by: admin), origin: Self.nodeA)
        try a.append(.sign(add(alice, "alice"), by: admin), origin: Self.nodeA)
        try a.append(.sign(.createRoom(id: "ops", subject: "rooms.ops", policy: RoomPolicy()), by: alice), origin: Self.nodeA)
        let entries = a.logEntries()
        let b = try store("b")
        // The room arrives before the user who created it: refused for now...
        _ = try b.merge(entries[0].operation, at: entries[0].position)
        #expect(try b.merge(entries[2].operation, at: entries[2].position) == .stored(refused: .unauthorized("\(alice.userNKey) is not a registered user")))
        #expect(b.snapshot.rooms["ops"] == nil)
        // ...and folds in once the earlier operation arrives.
        #expect(try b.merge(entries[1].operation, at: entries[1].position) == .stored(refused: nil))
        #expect(b.snapshot == a.snapshot)
        #expect(b.refusedOperations.isEmpty)
        #expect(try b.merge(entries[1].operation, at: entries[1].position) == .known)
    }

    /// A position beyond the bound ahead of local time (a peer sending clock
    /// UInt64.max once made every node trap on its next append) is refused,
    /// never stored, and counted; the store keeps appending.
    @Test(arguments: [UInt64.max, UInt64.max - 1, (UInt64(1) << 63), (UInt64(Date().timeIntervalSince1970 * 1000) + 3_600_000) << 16])
    func positionsFarAheadAreRefused(_ clock: UInt64) throws {
        let a = try store("a")
        try a.append(.sign(add(admin, "root", role: .admin), by: admin), origin: Self.nodeA)
        let addAlice = SignedOperation.sign(add(alice, "alice"), by: admin)
        #expect(throws: MembershipError.self) { try a.merge(addAlice, at: LogPosition(clock: clock, origin: Self.nodeB, id: addAlice.id)) }
        #expect(a.position(of: addAlice.id) == nil)
        #expect(a.refusedFuturePositions == 1)
        try a.append(.sign(add(bob, "bob"), by: admin), origin: Self.nodeA)
        #expect(a.operationCount == 2)
    }

    /// Origins are node ids or "": a position with any other origin (one with
    /// a space once broke every peer's anti-entropy) is never stored.
    @Test(arguments: [" ", "NA", "x y", "UABC", String(repeating: "N", count: 100)])
    func positionsWithBadOriginsAreRefused(_ origin: String) throws {
        let a = try store("a")
        try a.append(.sign(add(admin, "root", role: .admin), by: admin), origin: Self.nodeA)
        let addAlice = SignedOperation.sign(add(alice, "alice"), by: admin)
        #expect(throws: MembershipError.self) { try a.merge(addAlice, at: LogPosition(clock: 1, origin: origin, id: addAlice.id)) }
        #expect(a.position(of: addAlice.id) == nil)
        let frame = Array("{\"t\":\"have\",\"entries\":[\"\(addAlice.id) 1 \(origin)\"],\"last\":true}".utf8)
        #expect(throws: ReplicationFrameError.self) { try ReplicationFrame(decoding: frame) }
    }

    /// Every frame a node sends decodes on its peers, and back to itself.
    @Test func replicationFramesRoundTrip() throws {
        let operation = SignedOperation.sign(add(alice, "alice"), by: admin)
        let frames: [ReplicationFrame] = [
            .sync(count: 3, digest: String(repeating: "a", count: 64)),
            .have(positions: [LogPosition(clock: 5, origin: Self.nodeA, id: operation.id), LogPosition(clock: 6, origin: "", id: operation.id)], last: true),
            .operation(operation, LogPosition(clock: 7, origin: Self.nodeB, id: operation.id)),
            .acks(ids: ["x"], at: "2026-12-01T00:00:00Z"),
        ]
        for frame in frames { #expect(try ReplicationFrame(decoding: frame.encoded) == frame) }
        #expect(throws: ReplicationFrameError.self) { try ReplicationFrame(decoding: Array("{\"t\":\"nope\"}".utf8)) }
        #expect(throws: ReplicationFrameError.self) { try ReplicationFrame(decoding: Array("[1]".utf8)) }
        let tooMany = "{\"t\":\"acks\",\"ids\":[" + Array(repeating: "\"a\"", count: ReplicationFrame.maximumIDs + 1).joined(separator: ",") + "]}"
        #expect(throws: ReplicationFrameError.self) { try ReplicationFrame(decoding: Array(tooMany.utf8)) }
    }

    @Test func localOperationsSortAfterEverythingSeen() throws {
        let a = try store("a"), b = try store("b")
        try a.append(.sign(add(admin, "root", role: .admin), by: admin), origin: Self.nodeA)
        // A peer whose clock runs four minutes ahead (inside the bound) accepted the next operation.
        let ahead = LogPosition(clock: (UInt64(Date().timeIntervalSince1970 * 1000) + 240_000) << 16, origin: Self.nodeB, id: "")
        let addAlice = SignedOperation.sign(add(alice, "alice"), by: admin)
        _ = try a.merge(addAlice, at: LogPosition(clock: ahead.clock, origin: Self.nodeB, id: addAlice.id))
        // What this node accepts next depends on it, and must sort after it.
        try a.append(.sign(.createRoom(id: "ops", subject: "rooms.ops", policy: RoomPolicy()), by: alice), origin: Self.nodeA)
        try ship(a.logEntries().reversed(), to: b)
        #expect(b.snapshot.rooms["ops"] != nil)
        #expect(b.snapshot == a.snapshot)
    }

    @Test func theRootAdminIsPinned() throws {
        let intruder = Identity()
        let a = try store("a")
        try a.append(.sign(add(admin, "root", role: .admin), by: admin), origin: Self.nodeA)
        #expect(a.rootAdmin == admin.userNKey)
        // A self-registered admin that sorts before the genesis cannot take over.
        let forged = SignedOperation.sign(add(intruder, "evil", role: .admin), by: intruder)
        #expect(try a.merge(forged, at: LogPosition(clock: 1, origin: Self.nodeX, id: forged.id))
                == .stored(refused: .unauthorized("the log's root admin is \(admin.userNKey); \(intruder.userNKey) cannot start it")))
        #expect(a.snapshot.users[intruder.userNKey] == nil)
        #expect(a.snapshot.users[admin.userNKey]?.role == .admin)
        // A node given only the root fills its log from peers.
        let c = try store("c")
        try c.pinRoot(admin.userNKey)
        #expect(throws: MembershipError.conflict("this store's root admin is \(admin.userNKey), not \(intruder.userNKey)")) {
            try c.pinRoot(intruder.userNKey)
        }
        try ship(a.logEntries(), to: c)
        #expect(c.snapshot == a.snapshot)
        #expect(try store("c").rootAdmin == admin.userNKey)
    }

    @Test func theSameOperationAcceptedTwiceKeepsItsEarlierPosition() throws {
        let a = try store("a"), b = try store("b")
        try a.append(.sign(add(admin, "root", role: .admin), by: admin), origin: Self.nodeA)
        try ship(a.logEntries(), to: b)
        let addAlice = SignedOperation.sign(add(alice, "alice"), by: admin)
        try a.append(addAlice, origin: Self.nodeA)
        try b.append(addAlice, origin: Self.nodeB)
        try ship(b.logEntries(), to: a)
        try ship(a.logEntries(), to: b)
        #expect(a.position(of: addAlice.id) == b.position(of: addAlice.id))
        #expect(a.logDigest == b.logDigest)
        #expect(throws: MembershipError.conflict("operation \(addAlice.id) is already in the log")) { try a.append(addAlice) }
    }
}
