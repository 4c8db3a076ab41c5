import Foundation
import Testing
import UnibusCrypto
@testable import UnibusMembership

private func addUser(_ user: Identity, _ handle: String, role: UserRole = .member) -> MembershipOperation {
    .addUser(key: user.userNKey, exchangeKey: Base64.encode(user.keyExchange.publicKey.bytes), handle: handle, role: role)
}

/// The third review's attacks on the hand-over rules, kept as regression tests.
@Suite("Causal log: hand-over attacks from the third review")
struct HandOverReviewTests {
    let root = Identity(), r2 = Identity(), adminA = Identity(), kate = Identity(), mallory = Identity()

    private func start(_ steps: [(MembershipOperation, Identity)]) throws -> MembershipLog {
        var log = MembershipLog(pinnedRoot: root.userNKey)
        for (operation, actor) in [(addUser(root, "root", role: .admin), root)] + steps {
            #expect(try log.insert(SignedOperation.sign(operation, by: actor, parents: log.heads)) == .inserted(refused: nil))
        }
        return log
    }

    /// C1: ONE stolen, retired and revoked root key signs a backdated second
    /// hand-over; an honest admin's next ordinary operation "acts" on it
    /// (it names the heads), the hand-overs conflict, the root reverts to
    /// the old key, its revocation no longer stands, and it adds itself to a room.
    @Test func oneRetiredRootKeyUnseatsItsSuccessor() throws {
        var log = try start([(addUser(r2, "r2", role: .admin), root), (addUser(adminA, "a", role: .admin), root),
                             (addUser(kate, "k"), root), (.createRoom(id: "s", subject: "rooms.s", policy: RoomPolicy()), r2)])
        let before = log.heads
        for (operation, actor) in [(MembershipOperation.rotateRoot(key: r2.userNKey), root), (.revokeUser(key: root.userNKey), r2),
                                   (.createRoom(id: "f", subject: "rooms.f", policy: RoomPolicy()), r2)] {
            #expect(try log.insert(SignedOperation.sign(operation, by: actor, parents: log.heads)) == .inserted(refused: nil))
        }
        #expect(log.state.root == r2.userNKey && log.state.users[root.userNKey]?.status == .revoked)
        _ = try log.insert(SignedOperation.sign(.rotateRoot(key: adminA.userNKey), by: root, parents: before))
        _ = try log.insert(SignedOperation.sign(.addMember(room: "s", user: kate.userNKey, role: .member), by: adminA, parents: log.heads))
        _ = try log.insert(SignedOperation.sign(.addMember(room: "s", user: root.userNKey, role: .member), by: root, parents: log.heads))
        #expect(log.state.root == r2.userNKey, "root now \(log.state.root == root.userNKey ? "the old key" : "other")")
        #expect(log.state.users[root.userNKey]?.status == .revoked)
        #expect(log.state.members["s"]?[root.userNKey] == nil)
    }

    /// C2: a successor's first operation at the tail folds incrementally,
    /// but it "acts" on the hand-over and changes the cuts: two insertion
    /// orders of one set fold two states.
    @Test func actingAtTheTailSkipsTheRefold() throws {
        let base = try start([(addUser(r2, "r2", role: .admin), root)])
        var log = base
        let handOver = SignedOperation.sign(.rotateRoot(key: r2.userNKey), by: root, parents: log.heads)
        _ = try log.insert(handOver)
        let late = SignedOperation.sign(addUser(kate, "k"), by: root, parents: [handOver.id])
        var acting: SignedOperation
        repeat {
            acting = SignedOperation.sign(.createRoom(id: "f", subject: "rooms.f", policy: RoomPolicy()), by: r2, parents: [handOver.id])
        } while acting.id < late.id
        var first = log, second = log
        _ = try first.insert(late); _ = try first.insert(acting)
        _ = try second.insert(acting); _ = try second.insert(late)
        #expect(first.digest == second.digest)
        #expect(first.state == second.state, "kate: \(String(describing: first.state.users[kate.userNKey]?.status)) vs \(String(describing: second.state.users[kate.userNKey]?.status))")
    }

    /// C3: a revoked member's bogus hand-overs (to itself) do not make it
    /// "root-capable": they are refused by the shortcut, without a refold each.
    @Test func revokedMembersHandOverFlood() throws {
        var log = try start([(addUser(kate, "k"), root)])
        let genesis = log.heads
        for index in 0..<100 {
            _ = try log.insert(SignedOperation.sign(.createRoom(id: "r\(index)", subject: "rooms.r\(index)", policy: RoomPolicy()), by: root, parents: log.heads))
        }
        _ = try log.insert(SignedOperation.sign(.revokeUser(key: kate.userNKey), by: root, parents: log.heads))
        let state = log.state
        // Refused by the shortcut (no refold each): a revoked member never becomes root-capable.
        for _ in 0..<1000 {
            #expect(try log.insert(SignedOperation.sign(.rotateRoot(key: kate.userNKey), by: kate, parents: genesis))
                    == .inserted(refused: .unauthorized("signed by \(kate.userNKey) outside the causal past of its revocation")))
        }
        #expect(log.state == state)
    }

    /// C4: an honest ping-pong (root -> r2 -> root -> adminA): the first,
    /// acted hand-over's past bounds the key forever, so its second term's
    /// hand-over and root operations are refused.
    @Test func aRootThatGetsTheRootBackCanUseIt() throws {
        var log = try start([(addUser(r2, "r2", role: .admin), root), (addUser(adminA, "a", role: .admin), root)])
        for (operation, actor) in [(MembershipOperation.rotateRoot(key: r2.userNKey), root), (.createRoom(id: "f", subject: "rooms.f", policy: RoomPolicy()), r2),
                                   (.rotateRoot(key: root.userNKey), r2), (addUser(kate, "k"), root),
                                   (.rotateRoot(key: adminA.userNKey), root), (.createRoom(id: "g", subject: "rooms.g", policy: RoomPolicy()), adminA)] {
            let outcome = try log.insert(SignedOperation.sign(operation, by: actor, parents: log.heads))
            #expect(outcome == .inserted(refused: nil), "\(operation.kind)")
        }
        #expect(log.state.root == adminA.userNKey && log.state.users[kate.userNKey] != nil)
    }
}
