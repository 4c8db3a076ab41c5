import Foundation
import UnibusControlClient
import UnibusCrypto
import UnibusMembership

/// What a node answers a client's `POST /v1/log`, and the order operations
/// arrive in, as hostile input to the client's verify-and-fold path
/// (`MembershipLog.insert`, the code every node and client runs).
///
/// First byte even: the rest is a `LogPage` document from a (lying) node;
/// each operation in it is verified and inserted into a small log, which
/// must hold, park or refuse it, never trap. First byte odd: the rest picks
/// an arrival order over a pool of real signed operations (concurrent
/// branches, a revocation with a stolen key acting around it, a root
/// hand-over, a checkpoint); whatever the order, once all have arrived the
/// fold must equal the fold of the canonical order. That equality is what
/// lets every node and client agree without a leader.
private final class Fixture: @unchecked Sendable {
    let root = Identity(), admin = Identity(), alice = Identity(), bob = Identity()
    var pool: [SignedOperation] = []
    var expected = MembershipLog(pinnedRoot: nil)
    var start = MembershipLog(pinnedRoot: nil)

    init() {
        func add(_ user: Identity, _ handle: String, _ role: UserRole = .member) -> MembershipOperation {
            .addUser(key: user.userNKey, exchangeKey: Base64.encode(user.keyExchange.publicKey.bytes), handle: handle, role: role)
        }
        var log = MembershipLog(pinnedRoot: root.userNKey)
        func append(_ operation: MembershipOperation, _ actor: Identity, parents: [String]? = nil) -> SignedOperation {
            let signed = SignedOperation.sign(operation, by: actor, parents: parents ?? log.heads)
            _ = try? log.insert(signed)
            pool.append(signed)
            return signed
        }
        let genesis = append(add(root, "root", .admin), root, parents: [])
        _ = append(add(admin, "admin", .admin), root)
        _ = append(add(alice, "alice"), root)
        let fork = log.heads
        _ = append(.createRoom(id: "ops", subject: "rooms.ops", policy: RoomPolicy()), alice, parents: fork)
        _ = append(add(bob, "bob"), admin, parents: fork)
        _ = append(.addMember(room: "ops", user: bob.userNKey, role: .member), alice)
        let beforeRevoke = log.heads
        _ = append(.revokeUser(key: admin.userNKey), root)
        _ = append(.revokeUser(key: alice.userNKey), admin, parents: beforeRevoke)   // the stolen key
        _ = append(.rotateRoot(key: root.userNKey), admin, parents: beforeRevoke)
        _ = append(.setMemberRole(room: "ops", user: bob.userNKey, role: .owner), alice)
        _ = append(add(bob, "bob-admin", .admin), root)                             // refused: bob is active
        let beforeHandOver = log.heads
        _ = append(.rotateRoot(key: admin.userNKey), root)                          // refused: admin is revoked
        _ = append(add(alice, "alice2", .admin), root, parents: beforeHandOver)
        _ = append(.revokeUser(key: bob.userNKey), alice)
        expected = log
        start = MembershipLog(pinnedRoot: root.userNKey)
        _ = try? start.insert(genesis)
    }
}

nonisolated(unsafe) private let fixture = Fixture()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzMembershipLog(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    guard let mode = input.first else { return 0 }
    if mode % 2 == 0 {
        // Operation timestamps (which actors choose): whatever parses is in
        // the one canonical form, so it writes back to the same text.
        let text = String(decoding: input.dropFirst(), as: UTF8.self)
        if let millis = OperationTime.millis(text), text.utf8.count == 24 {
            precondition(OperationTime.string(Date(timeIntervalSince1970: Double(millis) / 1000)) == text, "not canonical: \(text)")
        }
        guard let page = ControlAPI.decode(ControlAPI.LogPage.self, from: Array(input.dropFirst())) else { return 0 }
        var log = fixture.start
        for document in page.operations.prefix(64) {
            guard let operation = try? document.verified() else { continue }
            _ = try? log.insert(operation)
        }
        _ = log.operations(after: page.heads.filter { SignedOperation.isOperationID($0) }, limit: 100)
        _ = log.digest
        return 0
    }
    // An arrival order: each byte picks one of the remaining operations.
    var remaining = fixture.pool
    var order: [SignedOperation] = []
    for byte in input.dropFirst() where !remaining.isEmpty {
        order.append(remaining.remove(at: Int(byte) % remaining.count))
    }
    order += remaining
    var log = MembershipLog(pinnedRoot: fixture.root.userNKey)
    var waiting = order
    var progress = true
    while progress, !waiting.isEmpty {
        progress = false
        var still: [SignedOperation] = []
        for operation in waiting {
            switch try? log.insert(operation) {
            case .waiting?: still.append(operation)
            default: progress = true
            }
        }
        waiting = still
    }
    guard waiting.isEmpty, log.digest == fixture.expected.digest, log.state == fixture.expected.state,
          log.refused.keys.sorted() == fixture.expected.refused.keys.sorted() else {
        fatalError("an arrival order folded a different state: \(order.map { $0.envelope.operation.kind })")
    }
    return 0
}
