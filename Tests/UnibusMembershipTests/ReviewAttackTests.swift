import Foundation
import Testing
import UnibusCrypto
@testable import UnibusMembership
@testable import UnibusMembershipStore

private func addUser(_ user: Identity, _ handle: String, role: UserRole = .member) -> MembershipOperation {
    .addUser(key: user.userNKey, exchangeKey: Base64.encode(user.keyExchange.publicKey.bytes), handle: handle, role: role)
}

/// The attacks an adversarial review of the causal log found (each worked
/// against the first version), kept as regression tests of the defences.
@Suite("Causal log: attacks from the review")
struct ReviewAttackTests {
    let root = Identity()
    let adminA = Identity()
    let adminB = Identity()
    let kate = Identity()
    let r2 = Identity()

    private func start(_ steps: [(MembershipOperation, Identity)]) throws -> (MembershipLog, [SignedOperation]) {
        var log = MembershipLog(pinnedRoot: root.userNKey)
        var operations: [SignedOperation] = []
        for (operation, actor) in [(addUser(root, "root", role: .admin), root)] + steps {
            let signed = SignedOperation.sign(operation, by: actor, parents: log.heads)
            #expect(try log.insert(signed) == .inserted(refused: nil), "\(operation.kind)")
            operations.append(signed)
        }
        return (log, operations)
    }

    /// A1: a revoked admin signing "before" its revocation, to revoke its
    /// revoker or anyone else. Admins are revoked (and made) by the root
    /// only, and the revoked key's backdated operations are refused.
    @Test func aRevokedAdminCannotStrikeBackFromThePast() throws {
        var (log, _) = try start([(addUser(adminA, "a", role: .admin), root), (addUser(adminB, "b", role: .admin), root),
                                  (addUser(kate, "k"), root)])
        let old = log.heads
        #expect(try log.insert(SignedOperation.sign(.revokeUser(key: adminA.userNKey), by: adminB, parents: log.heads))
                == .inserted(refused: .unauthorized("only the root admin may revoke admins")))
        #expect(try log.insert(SignedOperation.sign(.revokeUser(key: adminA.userNKey), by: root, parents: log.heads)) == .inserted(refused: nil))
        for attack in [MembershipOperation.revokeUser(key: adminB.userNKey), .revokeUser(key: kate.userNKey),
                       addUser(Identity(), "sybil"), .createRoom(id: "x", subject: "rooms.x", policy: RoomPolicy())] {
            if case .inserted(let refused) = try log.insert(SignedOperation.sign(attack, by: adminA, parents: old)) {
                #expect(refused != nil, "\(attack.kind) by a revoked admin, backdated")
            }
        }
        #expect(log.state.users[adminA.userNKey]?.status == .revoked)
        #expect(log.state.users[adminB.userNKey]?.status == .active && log.state.users[kate.userNKey]?.status == .active)
        #expect(log.state.users.count == 4 && log.state.rooms.isEmpty)
        // An admin cannot make admins either: only the root can.
        #expect(try log.insert(SignedOperation.sign(addUser(Identity(), "c", role: .admin), by: adminB, parents: log.heads))
                == .inserted(refused: .unauthorized("only the root admin may add admins")))
    }

    /// A2: the same operations in two insertion orders fold one state
    /// (an incremental fold and a refold agree).
    @Test func insertionOrderNeverChangesTheState() throws {
        let (base, _) = try start([(addUser(adminA, "a", role: .admin), root), (addUser(kate, "k"), root)])
        let old = base.heads
        var log = base
        _ = try log.insert(SignedOperation.sign(.createRoom(id: "f", subject: "rooms.f", policy: RoomPolicy()), by: root, parents: log.heads))
        _ = try log.insert(SignedOperation.sign(.revokeUser(key: adminA.userNKey), by: root, parents: log.heads))
        let backdated = SignedOperation.sign(.revokeUser(key: kate.userNKey), by: adminA, parents: old)
        let kateRoom = SignedOperation.sign(.createRoom(id: "kr", subject: "rooms.kate", policy: RoomPolicy()), by: kate, parents: log.heads)
        var first = log, second = log
        _ = try first.insert(backdated)
        _ = try first.insert(kateRoom)
        _ = try second.insert(kateRoom)
        _ = try second.insert(backdated)
        #expect(first.digest == second.digest)
        #expect(first.state == second.state)
        #expect(first.state.rooms["kr"] != nil && first.state.users[kate.userNKey]?.status == .active)
        #expect(first.refused.keys.sorted() == second.refused.keys.sorted())
    }

    /// A3: the old root signs "before" its hand-over to take the root back.
    /// Its root powers end at the hand-over; two concurrent hand-overs by
    /// one key refuse each other (the root freezes rather than changes hands
    /// to whoever signed last).
    @Test func anOldRootKeyCannotTakeTheRootBack() throws {
        var (log, _) = try start([(addUser(r2, "r2", role: .admin), root), (addUser(adminA, "a", role: .admin), root)])
        let old = log.heads
        _ = try log.insert(SignedOperation.sign(addUser(kate, "k"), by: root, parents: log.heads))
        let handOver = SignedOperation.sign(.rotateRoot(key: r2.userNKey), by: root, parents: log.heads)
        #expect(try log.insert(handOver) == .inserted(refused: nil))
        var notRevoked = log
        _ = try log.insert(SignedOperation.sign(.revokeUser(key: root.userNKey), by: r2, parents: log.heads))
        #expect(log.state.root == r2.userNKey && log.state.users[root.userNKey]?.status == .revoked)
        _ = try log.insert(SignedOperation.sign(.revokeUser(key: r2.userNKey), by: root, parents: old))
        #expect(log.state.root == r2.userNKey && log.state.users[r2.userNKey]?.status == .active)
        // Not even revoked, the old root cannot sign around its hand-over.
        _ = try notRevoked.insert(SignedOperation.sign(.revokeUser(key: r2.userNKey), by: root, parents: old))
        #expect(notRevoked.state.root == r2.userNKey && notRevoked.state.users[r2.userNKey]?.status == .active)
        _ = try notRevoked.insert(SignedOperation.sign(.rotateRoot(key: adminA.userNKey), by: root, parents: old))
        // A second, concurrent hand-over by the same key before the successor
        // took the first up: neither stands yet, and the key is still root.
        #expect(notRevoked.refused[handOver.id] != nil)
        #expect(notRevoked.state.root == root.userNKey)
        // Once the successor acts after its hand-over, that one stands for
        // good: the old key's root operations outside its past are void.
        let late = SignedOperation.sign(.revokeUser(key: r2.userNKey), by: root, parents: notRevoked.heads)
        _ = try notRevoked.insert(late)
        _ = try notRevoked.insert(SignedOperation.sign(.createRoom(id: "r2", subject: "rooms.r2", policy: RoomPolicy()), by: r2,
                                                       parents: [handOver.id]))
        #expect(notRevoked.state.root == r2.userNKey && notRevoked.refused[handOver.id] == nil)
        #expect(notRevoked.refused[late.id] != nil && notRevoked.state.users[r2.userNKey]?.status == .active)
        let frozen = SignedOperation.sign(.checkpoint(notRevoked.state.checkpointState(sequence: 1, rootChain: [])), by: root, parents: notRevoked.heads)
        #expect(throws: MembershipError.self) { try notRevoked.insert(frozen) }
    }

    /// B1 (second review): a retired, revoked root key signs a second
    /// hand-over "before" its real one, which would void everything its
    /// successor did. The successor acted on the real one: it stands, and
    /// every holder (incremental or replayed) agrees.
    @Test func aRetiredRootCannotVoidItsHandOver() throws {
        var (log, _) = try start([(addUser(r2, "r2", role: .admin), root), (addUser(adminA, "a", role: .admin), root),
                                  (addUser(kate, "k"), root)])
        let beforeHandOver = log.heads
        for (operation, actor) in [(MembershipOperation.rotateRoot(key: r2.userNKey), root), (.revokeUser(key: root.userNKey), r2),
                                   (.revokeUser(key: adminA.userNKey), r2), (.createRoom(id: "f", subject: "rooms.f", policy: RoomPolicy()), r2),
                                   (.addMember(room: "f", user: kate.userNKey, role: .member), r2)] {
            #expect(try log.insert(SignedOperation.sign(operation, by: actor, parents: log.heads)) == .inserted(refused: nil))
        }
        let state = log.state
        for target in [adminA.userNKey, kate.userNKey] {
            _ = try log.insert(SignedOperation.sign(.rotateRoot(key: target), by: root, parents: beforeHandOver))
        }
        _ = try log.insert(SignedOperation.sign(.removeMember(room: "f", user: kate.userNKey), by: root, parents: log.heads))
        var replayed = MembershipLog(pinnedRoot: root.userNKey)
        for operation in log.orderedOperations.reversed() { _ = try? replayed.insert(operation) }
        var again = MembershipLog(pinnedRoot: root.userNKey)
        for operation in log.orderedOperations { _ = try again.insert(operation) }
        for holder in [log, again] {
            #expect(holder.state == state, "the old key changed nothing")
        }
        #expect(again.digest == log.digest)
    }

    /// B2 (second review): a revoked admin signs a bogus hand-over (it was
    /// never root) "before" its own revocations of members, to void them.
    /// Only hand-overs that are valid in their own past count.
    @Test func aBogusHandOverVoidsNothing() throws {
        var (log, _) = try start([(addUser(adminA, "a", role: .admin), root), (addUser(kate, "k"), root),
                                  (.createRoom(id: "f", subject: "rooms.f", policy: RoomPolicy()), root),
                                  (.addMember(room: "f", user: kate.userNKey, role: .member), root)])
        let old = log.heads
        _ = try log.insert(SignedOperation.sign(.revokeUser(key: kate.userNKey), by: adminA, parents: log.heads))
        _ = try log.insert(SignedOperation.sign(.revokeUser(key: adminA.userNKey), by: root, parents: log.heads))
        let state = log.state
        _ = try log.insert(SignedOperation.sign(.rotateRoot(key: root.userNKey), by: adminA, parents: old))
        var again = MembershipLog(pinnedRoot: root.userNKey)
        for operation in log.orderedOperations { _ = try again.insert(operation) }
        #expect(log.state == state && again.state == state)
        #expect(state.users[kate.userNKey]?.status == .revoked && state.members["f"]?[kate.userNKey] == nil)
    }

    /// A4: checkpoints signed by a retired root, naming no predecessors, or
    /// skipping sequence numbers, are refused by a log that holds operations.
    @Test func aRetiredRootCannotReplaceTheLogWithACheckpoint() throws {
        var (log, _) = try start([(addUser(r2, "r2", role: .admin), root), (addUser(kate, "k"), root)])
        _ = try log.insert(SignedOperation.sign(.rotateRoot(key: r2.userNKey), by: root, parents: log.heads))
        var forged = MembershipState()
        try forged.apply(SignedOperation.sign(addUser(root, "root", role: .admin), by: root))
        for (sequence, parents) in [(Int.max, [String]()), (1, []), (1, log.heads), (2, log.heads)] {
            let checkpoint = SignedOperation.sign(.checkpoint(forged.checkpointState(sequence: sequence, rootChain: [])), by: root, parents: parents)
            #expect(throws: MembershipError.self) { try log.insert(checkpoint) }
        }
        // The current root's checkpoint of the real state is taken.
        let real = SignedOperation.sign(.checkpoint(log.state.checkpointState(sequence: 1, rootChain: log.rootChain)), by: r2, parents: log.heads)
        #expect(try log.insert(real) == .adopted(replaced: 4))
    }

    /// A5: a flood of operations by a revoked key is refused without a fold
    /// of the log each (it used to cost a refold and a walk per operation).
    @Test func aRevokedKeysFloodIsRefusedWithoutRefolding() throws {
        var (log, _) = try start([(addUser(kate, "k"), root)])
        let genesis = log.heads
        for index in 0..<100 {
            _ = try log.insert(SignedOperation.sign(.createRoom(id: "r\(index)", subject: "rooms.r\(index)", policy: RoomPolicy()),
                                                    by: root, parents: log.heads))
        }
        _ = try log.insert(SignedOperation.sign(.revokeUser(key: kate.userNKey), by: root, parents: log.heads))
        let state = log.state
        for index in 0..<2000 {
            let flood = SignedOperation.sign(.createRoom(id: "k\(index)", subject: "rooms.k\(index)", policy: RoomPolicy()), by: kate, parents: genesis)
            #expect(try log.insert(flood) == .inserted(refused: .unauthorized("signed by \(kate.userNKey) outside the causal past of its revocation")))
        }
        #expect(log.state == state)
        // And a full refold agrees with the shortcut.
        var replayed = MembershipLog(pinnedRoot: root.userNKey)
        for operation in log.orderedOperations { _ = try replayed.insert(operation) }
        #expect(replayed.state == log.state && replayed.refused.count == log.refused.count)
    }

    /// A6: unknown fields ride in signed bytes the decoder ignores: refused,
    /// so no member can pad operations to bloat every log.
    @Test func paddedOperationsAreRefused() throws {
        let (log, _) = try start([(addUser(kate, "k"), root)])
        let envelope = OperationEnvelope(version: 2, actor: kate.userNKey, timestamp: OperationTime.now(), nonce: "bm9uY2Vub25jZQ",
                                         parents: log.heads, operation: .createRoom(id: "p", subject: "rooms.p", policy: RoomPolicy()))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let canonical = try [UInt8](encoder.encode(envelope))
        #expect(throws: Never.self) { try SignedOperation(bytes: canonical, signature: kate.sign(canonical)) }
        let padded = Array(("{\"pad\":\"" + String(repeating: "A", count: 46_000) + "\"," + String(decoding: canonical.dropFirst(), as: UTF8.self)).utf8)
        #expect(throws: MembershipError.invalid("an operation's bytes must be its canonical encoding (sorted keys, no unknown fields)")) {
            try SignedOperation(bytes: padded, signature: kate.sign(padded))
        }
        let spaced = Array(String(decoding: canonical, as: UTF8.self).replacingOccurrences(of: ",", with: ", ").utf8)
        #expect(throws: MembershipError.self) { try SignedOperation(bytes: spaced, signature: kate.sign(spaced)) }
        // A log page is bounded in bytes, whatever its operation count.
        #expect(log.operations(after: [], limit: 500, maxBytes: 1).operations.count == 1)
    }

    /// A7: operations that arrived before their checkpoint are folded once
    /// it is adopted (not left to expire).
    @Test func operationsWaitingForACheckpointFollowIt() throws {
        let (log, _) = try start([(addUser(kate, "k"), root)])
        let checkpoint = SignedOperation.sign(.checkpoint(log.state.checkpointState(sequence: 1, rootChain: [])), by: root, parents: log.heads)
        let after = SignedOperation.sign(.createRoom(id: "late", subject: "rooms.late", policy: RoomPolicy()), by: kate, parents: [checkpoint.id])
        let store = try MembershipStore(directory: NSTemporaryDirectory() + "unibus-review-\(UUID().uuidString)")
        try store.pinRoot(root.userNKey)
        #expect(try store.merge(after) == .waiting)
        #expect(try store.merge(checkpoint) == .adopted(replaced: 0))
        #expect(store.waitingCount == 0 && store.snapshot.rooms["late"] != nil)
        #expect(store.heads == [after.id])
    }
}
