import Foundation
import Testing
import UnibusCrypto
@testable import UnibusMembership
@testable import UnibusMembershipStore
import UnibusSQLite

private func addUser(_ user: Identity, _ handle: String, role: UserRole = .member) -> MembershipOperation {
    .addUser(key: user.userNKey, exchangeKey: Base64.encode(user.keyExchange.publicKey.bytes), handle: handle, role: role)
}

/// Inserts `operations` into `log` in the given order, keeping the ones whose
/// predecessors have not arrived and retrying them (what a node does).
private func deliver(_ operations: [SignedOperation], to log: inout MembershipLog) throws {
    var waiting = operations
    var progress = true
    while progress, !waiting.isEmpty {
        progress = false
        var still: [SignedOperation] = []
        for operation in waiting {
            if case .waiting = try log.insert(operation) { still.append(operation) } else { progress = true }
        }
        waiting = still
    }
    #expect(waiting.isEmpty, "\(waiting.count) operations never found their predecessors")
}

@Suite("Causal membership log")
struct CausalLogTests {
    let root = Identity()
    let admin = Identity()
    let alice = Identity()
    let bob = Identity()
    let mallory = Identity()

    /// A log started by `root`, with the operations appended one after
    /// another (each naming the heads before it), and the operations.
    private func chain(_ steps: [(MembershipOperation, Identity)]) throws -> (MembershipLog, [SignedOperation]) {
        var log = MembershipLog(pinnedRoot: root.userNKey)
        var operations: [SignedOperation] = []
        for (operation, actor) in [(addUser(root, "root", role: .admin), root)] + steps {
            let signed = SignedOperation.sign(operation, by: actor, parents: log.heads)
            let outcome = try log.insert(signed)
            #expect(outcome == .inserted(refused: nil), "\(operation.kind): \(outcome)")
            operations.append(signed)
        }
        return (log, operations)
    }

    @Test func everyArrivalOrderFoldsTheSameState() throws {
        // Two admins act concurrently (each from the same heads), then one
        // operation joins the branches.
        var (log, base) = try chain([(addUser(admin, "admin", role: .admin), root), (addUser(alice, "alice"), root), (addUser(bob, "bob"), root)])
        let fork = log.heads
        let left = SignedOperation.sign(.createRoom(id: "ops", subject: "rooms.ops", policy: RoomPolicy()), by: root, parents: fork)
        let right = SignedOperation.sign(.createRoom(id: "ops", subject: "rooms.other", policy: RoomPolicy()), by: admin, parents: fork)
        _ = try log.insert(left)
        _ = try log.insert(right)
        let join = SignedOperation.sign(.addMember(room: "ops", user: alice.userNKey, role: .member), by: root, parents: log.heads)
        _ = try log.insert(join)
        #expect(log.heads == [join.id])
        // Exactly one of the concurrent creations wins, by the order's
        // tie-break (operation id), and every holder agrees which.
        let winner = left.id < right.id ? left : right
        #expect(log.refused.count == 1 && log.refused[winner.id] == nil)
        let all = base + [left, right, join]
        for order in [all, all.reversed(), all.shuffled(), all.shuffled()] {
            var other = MembershipLog(pinnedRoot: root.userNKey)
            try deliver(order, to: &other)
            #expect(other.digest == log.digest)
            #expect(other.state == log.state)
            #expect(other.refused.keys.sorted() == log.refused.keys.sorted())
        }
        base = []
    }

    /// The attack that worked with node-chosen positions: a route peer
    /// resent `revoke bob` "earlier" so it was refused and bob came back.
    /// Now the revoke names the add as its predecessor: however it arrives,
    /// it folds after it.
    @Test func aRelayCannotMoveARevokeBeforeTheAddItFollowed() throws {
        let (log, operations) = try chain([(addUser(bob, "bob"), root), (.revokeUser(key: bob.userNKey), root)])
        #expect(log.state.users[bob.userNKey]?.status == .revoked)
        var reordered = MembershipLog(pinnedRoot: root.userNKey)
        // The revoke first: it waits for its predecessor.
        #expect(try reordered.insert(operations[0]) == .inserted(refused: nil))
        #expect(try reordered.insert(operations[2]) == .waiting(missing: [operations[1].id]))
        #expect(try reordered.insert(operations[1]) == .inserted(refused: nil))
        #expect(try reordered.insert(operations[2]) == .inserted(refused: nil))
        #expect(reordered.state.users[bob.userNKey]?.status == .revoked)
        // Resending it changes nothing: there is no position to choose.
        #expect(try reordered.insert(operations[2]) == .known)
        // Nor can its predecessors be rewritten: they are signed.
        var forged = operations[2].bytes
        let text = String(decoding: forged, as: UTF8.self).replacingOccurrences(of: operations[1].id, with: operations[0].id)
        forged = Array(text.utf8)
        #expect(throws: MembershipError.badSignature) { try SignedOperation(bytes: forged, signature: operations[2].signature) }
    }

    @Test func predecessorListsAreCanonicalAndBounded() throws {
        let (log, _) = try chain([])
        // Unsorted or repeated parents are refused at decoding, even when signed.
        let genesis = log.heads[0]
        let envelope = OperationEnvelope(version: 2, actor: root.userNKey, timestamp: OperationTime.now(), nonce: "AAAA",
                                         parents: [genesis, genesis], operation: .revokeUser(key: bob.userNKey))
        let repeated = SignedOperation.signEnvelope(envelope, by: root)
        #expect(throws: MembershipError.self) { try SignedOperation(bytes: repeated.bytes, signature: repeated.signature) }
        var tooMany = envelope
        tooMany.parents = (0..<65).map { Hex.encode(Digest.sha256([UInt8($0)])) }.sorted()
        let wide = SignedOperation.signEnvelope(tooMany, by: root)
        #expect(throws: MembershipError.self) { try SignedOperation(bytes: wide.bytes, signature: wide.signature) }
        // A second operation without predecessors cannot start the log again.
        var copy = log
        #expect(throws: MembershipError.self) { try copy.insert(SignedOperation.sign(addUser(alice, "alice"), by: root, parents: [])) }
        // Nor can a stranger's "genesis" be parked in an empty log.
        var empty = MembershipLog(pinnedRoot: root.userNKey)
        #expect(throws: MembershipError.self) {
            try empty.insert(SignedOperation.sign(addUser(mallory, "m", role: .admin), by: mallory, parents: []))
        }
        #expect(empty.isEmpty)
        // Legacy (version 1) operations belong to migration only.
        let legacy = SignedOperation.signEnvelope(OperationEnvelope(version: 1, actor: root.userNKey, timestamp: OperationTime.now(),
                                                                    nonce: "AAAA", parents: nil, operation: addUser(root, "root", role: .admin)),
                                                  by: root)
        #expect(throws: MembershipError.self) { try empty.insert(try SignedOperation(bytes: legacy.bytes, signature: legacy.signature)) }
    }

    /// A stolen admin key keeps signing after its revocation, naming heads
    /// from before it so that its operations sort first. Refused everywhere.
    @Test func aRevokedKeyStopsAtItsRevocation() throws {
        var (log, _) = try chain([(addUser(admin, "admin", role: .admin), root), (addUser(alice, "alice"), root)])
        let beforeRevocation = log.heads
        // Accepted before the revocation, and in its past: stays.
        let early = SignedOperation.sign(addUser(bob, "bob"), by: admin, parents: beforeRevocation)
        _ = try log.insert(early)
        let revoke = SignedOperation.sign(.revokeUser(key: admin.userNKey), by: root, parents: log.heads)
        _ = try log.insert(revoke)
        // The thief names the heads from before the revocation (and before
        // `early`): its operation sorts before the revoke, yet is refused.
        let late = SignedOperation.sign(addUser(mallory, "mallory", role: .admin), by: admin, parents: beforeRevocation)
        #expect(try log.insert(late) == .inserted(refused: .unauthorized("signed by \(admin.userNKey) outside the causal past of its revocation")))
        #expect(log.state.users[mallory.userNKey] == nil)
        #expect(log.state.users[bob.userNKey]?.status == .active, "an operation in the revocation's past stays")
        // Every arrival order agrees.
        for order in [log.orderedOperations.reversed(), log.orderedOperations.shuffled()] {
            var other = MembershipLog(pinnedRoot: root.userNKey)
            try deliver(Array(order), to: &other)
            #expect(other.state == log.state)
        }
        // Reinstated later, the key acts again, but only after the reinstatement.
        let reinstate = SignedOperation.sign(addUser(admin, "admin", role: .admin), by: root, parents: log.heads)
        _ = try log.insert(reinstate)
        let after = SignedOperation.sign(addUser(Identity(), "carol"), by: admin, parents: log.heads)
        #expect(try log.insert(after) == .inserted(refused: nil))
        let stillOld = SignedOperation.sign(addUser(Identity(), "dave"), by: admin, parents: beforeRevocation)
        if case .inserted(let refused) = try log.insert(stillOld) { #expect(refused != nil) } else { Issue.record("not inserted") }
    }

    @Test func theRootCanBeHandedOverAndNotRevoked() throws {
        var (log, _) = try chain([(addUser(admin, "admin", role: .admin), root), (addUser(alice, "alice"), root)])
        func sign(_ operation: MembershipOperation, _ actor: Identity) -> SignedOperation {
            SignedOperation.sign(operation, by: actor, parents: log.heads)
        }
        #expect(try log.insert(sign(.revokeUser(key: root.userNKey), admin)) != .inserted(refused: nil), "nobody revokes the root")
        #expect(try log.insert(sign(.rotateRoot(key: admin.userNKey), admin)) != .inserted(refused: nil), "only the root hands over")
        #expect(try log.insert(sign(.rotateRoot(key: alice.userNKey), root)) != .inserted(refused: nil), "the successor must be an admin")
        #expect(try log.insert(sign(.rotateRoot(key: admin.userNKey), root)) == .inserted(refused: nil))
        #expect(log.state.root == admin.userNKey)
        #expect(log.pinnedRoot == root.userNKey, "readers keep the first root pinned and follow the chain")
        #expect(log.rootChain.count == 1)
        // The old root is an ordinary admin now, and can be retired.
        #expect(try log.insert(sign(.revokeUser(key: root.userNKey), admin)) == .inserted(refused: nil))
        #expect(try log.insert(sign(.rotateRoot(key: root.userNKey), root)) != .inserted(refused: nil))
    }

    @Test func checkpointsAreVerifiedAdoptedAndStartNewReaders() throws {
        var (log, operations) = try chain([(addUser(admin, "admin", role: .admin), root), (addUser(alice, "alice"), root),
                                           (.createRoom(id: "ops", subject: "rooms.ops", policy: RoomPolicy()), alice)])
        // Hand the root over first: the checkpoint carries the chain.
        let rotate = SignedOperation.sign(.rotateRoot(key: admin.userNKey), by: root, parents: log.heads)
        _ = try log.insert(rotate)
        let content = log.state.checkpointState(sequence: 1, rootChain: log.rootChain)
        let checkpoint = SignedOperation.sign(.checkpoint(content), by: admin, parents: log.heads)
        // Signed by someone who is not the root, or describing another state: refused.
        var probe = log
        #expect(throws: MembershipError.self) { try probe.insert(SignedOperation.sign(.checkpoint(content), by: root, parents: log.heads)) }
        var lie = content
        lie.users.append(User(key: mallory.userNKey, exchangeKey: Base64.encode(mallory.keyExchange.publicKey.bytes), handle: "m",
                              role: .admin, status: .active, created: "x", updated: "x"))
        lie.users.sort { $0.key < $1.key }
        #expect(throws: MembershipError.invalid("the checkpoint's state is not the fold of the log at its predecessors")) {
            try probe.insert(SignedOperation.sign(.checkpoint(lie), by: admin, parents: log.heads))
        }
        // The real one: adopted, and the log before it is dropped.
        let state = log.state
        #expect(try log.insert(checkpoint) == .adopted(replaced: operations.count + 1))
        #expect(log.count == 1 && log.state == state && log.base?.id == checkpoint.id)
        // A new reader, pinned to the first root, starts from the checkpoint alone.
        var reader = MembershipLog(pinnedRoot: root.userNKey)
        #expect(try reader.insert(checkpoint) == .adopted(replaced: 0))
        #expect(reader.state == state)
        let next = SignedOperation.sign(.addMember(room: "ops", user: admin.userNKey, role: .member), by: alice, parents: log.heads)
        _ = try log.insert(next)
        try deliver([next], to: &reader)
        #expect(reader.digest == log.digest && reader.state == log.state)
        // A reader pinned to another root refuses it; a stale checkpoint is refused.
        var stranger = MembershipLog(pinnedRoot: mallory.userNKey)
        #expect(throws: MembershipError.self) { try stranger.insert(checkpoint) }
        #expect(throws: MembershipError.self) { try reader.insert(SignedOperation.sign(.checkpoint(content), by: admin, parents: reader.heads)) }
        // An operation concurrent with the checkpoint names what it dropped: it never finds its predecessors.
        let concurrent = SignedOperation.sign(addUser(bob, "bob"), by: admin, parents: [operations[2].id])
        #expect(try log.insert(concurrent) == .waiting(missing: [operations[2].id]))
        // Served from the checkpoint on, a log still holds every rule.
        #expect(log.operations(after: [], limit: 10).operations.map(\.id) == [checkpoint.id, next.id])
        #expect(log.operations(after: [checkpoint.id], limit: 10).operations.map(\.id) == [next.id])
    }
}

@Suite("Replicated log (store)")
struct ReplicatedStoreTests {
    let root = Identity()
    let alice = Identity()
    let bob = Identity()

    private func store(_ name: String = UUID().uuidString) throws -> MembershipStore {
        try MembershipStore(directory: NSTemporaryDirectory() + "unibus-causal-\(name)")
    }

    @Test func operationsWaitForTheirPredecessorsAndThoseThatNeverComeAreDropped() throws {
        let a = try store()
        try a.append(a.signed(addUser(root, "root", role: .admin), by: root))
        let addAlice = a.signed(addUser(alice, "alice"), by: root)
        try a.append(addAlice)
        let addBob = a.signed(addUser(bob, "bob"), by: root)
        try a.append(addBob)

        let b = try store()
        try b.pinRoot(root.userNKey)
        let before = b.snapshot
        #expect(try b.merge(addBob) == .waiting)
        #expect(b.snapshot == before && b.waitingCount == 1)
        #expect(try b.merge(addBob) == .known)
        _ = try b.merge(try #require(a.operations().first))
        #expect(try b.merge(addAlice) == .stored(refused: nil, alsoStored: [addBob]))
        #expect(b.logDigest == a.logDigest && b.snapshot == a.snapshot && b.waitingCount == 0)

        // Predecessors that never arrive: nothing changes, and the operation
        // is dropped after its lifetime (counted).
        let orphan = SignedOperation.sign(.revokeUser(key: alice.userNKey), by: root, parents: [Hex.encode(Digest.sha256([1]))])
        #expect(try b.merge(orphan) == .waiting)
        let snapshot = b.snapshot
        _ = try? b.merge(SignedOperation.sign(.revokeUser(key: bob.userNKey), by: root, parents: [Hex.encode(Digest.sha256([2]))]),
                         now: Date().addingTimeInterval(MembershipStore.waitingLifetime + 1))
        #expect(b.snapshot == snapshot)
        #expect(b.counters.waitingDropped >= 1)
        #expect(b.logDigest == a.logDigest)
    }

    @Test func operationsArriveWithinTheirWindowOrNever() throws {
        let a = try store()
        try a.append(a.signed(addUser(root, "root", role: .admin), by: root))
        let now = Date()
        let stale = a.signed(addUser(alice, "alice"), by: root, at: now.addingTimeInterval(-1200))
        #expect(throws: MembershipError.self) { try a.append(stale, arrival: now) }
        let early = a.signed(addUser(alice, "alice"), by: root, at: now.addingTimeInterval(600))
        #expect(throws: MembershipError.self) { try a.append(early, arrival: now) }
        // Ten minutes later it would be inside the window: still refused.
        #expect(throws: MembershipError.invalid("this operation was refused earlier for its time and cannot be submitted again; sign a new one")) {
            try a.append(early, arrival: now.addingTimeInterval(600))
        }
        #expect(a.counters.outsideWindow == 3)
        // Replication never judges time (copies must converge).
        let b = try store()
        try b.pinRoot(root.userNKey)
        for operation in a.operations() { _ = try b.merge(operation) }
        #expect(try b.merge(stale) == .stored(refused: nil, alsoStored: []))
        // A fresh one is accepted.
        try a.append(a.signed(addUser(bob, "bob"), by: root), arrival: Date())
        #expect(a.snapshot.users[bob.userNKey] != nil)
    }

    /// A data directory from before causal order (schema 3, written by the
    /// previous release) is refused until migrated, and migrates into a log
    /// that starts from a root-signed checkpoint of the same state.
    @Test func aSchemaThreeLogMigrates() throws {
        let name = UUID().uuidString
        let directory = NSTemporaryDirectory() + "unibus-causal-\(name)"
        try DataDirectory.prepare(directory)
        let operations = [(addUser(root, "root", role: .admin), root), (addUser(alice, "alice"), root), (addUser(bob, "bob"), root),
                          (.createRoom(id: "ops", subject: "rooms.ops", policy: RoomPolicy()), alice),
                          (.addMember(room: "ops", user: bob.userNKey, role: .member), alice), (.revokeUser(key: bob.userNKey), root),
                          (.addMember(room: "ops", user: bob.userNKey, role: .member), alice)]   // refused: bob is revoked
            .enumerated().map { index, step in
                SignedOperation.signEnvelope(OperationEnvelope(version: 1, actor: step.1.userNKey,
                                                               timestamp: OperationTime.string(Date(timeIntervalSince1970: 1_800_000_000 + Double(index))),
                                                               nonce: "AAAAAAAAAAAAAAAA", parents: nil, operation: step.0), by: step.1)
            }
        do {
            let database = try SQLiteDatabase(path: directory + "/" + MembershipStore.fileName)
            try database.execute("""
                CREATE TABLE operations (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
                    actor TEXT NOT NULL, ts TEXT NOT NULL, bytes BLOB NOT NULL, signature BLOB NOT NULL,
                    clock INTEGER NOT NULL DEFAULT 0, origin TEXT NOT NULL DEFAULT '');
                CREATE TABLE users (key TEXT PRIMARY KEY, exchange_key TEXT NOT NULL, handle TEXT NOT NULL,
                    role TEXT NOT NULL, status TEXT NOT NULL, created TEXT NOT NULL, updated TEXT NOT NULL);
                CREATE TABLE rooms (id TEXT PRIMARY KEY, subject TEXT NOT NULL, owner TEXT NOT NULL, policy TEXT NOT NULL,
                    created TEXT NOT NULL, archived TEXT);
                CREATE TABLE members (room TEXT NOT NULL, user TEXT NOT NULL, role TEXT NOT NULL, joined TEXT NOT NULL, PRIMARY KEY (room, user));
                CREATE TABLE key_shares (id TEXT PRIMARY KEY, room TEXT NOT NULL, sender TEXT NOT NULL, recipient TEXT NOT NULL,
                    session_id TEXT NOT NULL, sealed BLOB NOT NULL, signature BLOB NOT NULL, created TEXT NOT NULL, acked TEXT);
                CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                PRAGMA user_version = 3;
                """)
            try database.query("INSERT INTO meta (key, value) VALUES ('root', ?)", [.text(root.userNKey)])
            // Stored out of sequence order: the old order is (clock, origin, id).
            for (index, operation) in operations.enumerated().reversed() {
                try database.query("INSERT INTO operations (id, kind, actor, ts, bytes, signature, clock, origin) VALUES (?, ?, ?, ?, ?, ?, ?, '')",
                                   [.text(operation.id), .text(operation.envelope.operation.kind), .text(operation.actor),
                                    .text(operation.envelope.timestamp), .blob(operation.bytes), .blob(operation.signature),
                                    .integer(Int64(1000 + index) << 16)])
            }
        }
        let expected = MembershipState.fold(operations, root: root.userNKey).0
        #expect(expected.users[bob.userNKey]?.status == .revoked && expected.members["ops"]?[bob.userNKey] == nil)
        #expect {
            try MembershipStore(directory: directory)
        } throws: { "\($0)".contains("unibusd migrate") }
        #expect(throws: MembershipError.self) { try MembershipStore.migrate(directory: directory, root: alice) }
        // The same log migrated elsewhere gives the same checkpoint.
        let copy = NSTemporaryDirectory() + "unibus-causal-copy-\(name)"
        try FileManager.default.copyItem(atPath: directory, toPath: copy)
        let report = try MembershipStore.migrate(directory: directory, root: root)
        #expect(report.legacyOperations == 7 && report.refused == 1)
        #expect(try MembershipStore.migrate(directory: copy, root: root).checkpointID == report.checkpointID)
        #expect(throws: MembershipError.self) { try MembershipStore.migrate(directory: directory, root: root) }
        let migrated = try MembershipStore(directory: directory)
        #expect(migrated.snapshot == expected)
        #expect(migrated.operationCount == 1 && migrated.rootAdmin == root.userNKey)
        // It works as a log: a new operation follows the checkpoint.
        try migrated.append(migrated.signed(.removeMember(room: "ops", user: alice.userNKey), by: alice))
        #expect(migrated.snapshot.members["ops"] == nil)
        // A client pinned to the root verifies it from the checkpoint.
        var reader = MembershipLog(pinnedRoot: root.userNKey)
        for operation in migrated.operations() { _ = try reader.insert(operation) }
        #expect(reader.state == migrated.snapshot)
    }
}
