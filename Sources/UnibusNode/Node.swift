import UnibusBroker
import UnibusCrypto
import UnibusMembership

/// A node: the broker and the membership store it authorizes from. Every
/// accepted membership operation is applied to the open connections before
/// `apply` returns: permissions follow room membership live, and a revoked
/// user's connections are closed.
public final class Node: Sendable {
    public let broker: Broker
    public let membership: MembershipStore
    /// Whether rooms without encryption may be created through this node.
    /// Off by default for a node listening beyond loopback (see `unibusd
    /// run --allow-unencrypted-rooms`).
    public let allowsUnencryptedRooms: Bool

    public init(broker: Broker, membership: MembershipStore, allowsUnencryptedRooms: Bool = true) {
        self.broker = broker
        self.membership = membership
        self.allowsUnencryptedRooms = allowsUnencryptedRooms
    }

    /// Builds the broker configuration's authorizer for `store`.
    public static func authorizer(for store: MembershipStore) -> any Authorizer {
        MembershipAuthorizer(store: store)
    }

    /// Verifies, applies and persists `operation`, then brings open
    /// connections in line with the new state.
    @discardableResult
    public func apply(_ operation: SignedOperation) async throws(MembershipError) -> MembershipState {
        if case .createRoom(_, _, let policy) = operation.envelope.operation, !policy.encrypt, !allowsUnencryptedRooms {
            throw .unauthorized("this node does not allow unencrypted rooms (it listens beyond loopback); create the room with encryption")
        }
        let before = membership.snapshot
        let state = try membership.append(operation)
        if case .revokeUser(let key) = operation.envelope.operation {
            await broker.disconnect(userNKey: key)
        }
        await broker.reauthorize()
        announceMembershipChange(operation.envelope.operation, before: before, after: state)
        return state
    }

    /// Tells the members of every room the operation touched (before and
    /// after it) on their key-delivery subject, so their clients refresh the
    /// member list, share keys with newcomers and rotate after a departure.
    func announceMembershipChange(_ operation: MembershipOperation, before: MembershipState, after: MembershipState) {
        let rooms: [String]
        switch operation {
        case .addMember(let room, _, _), .removeMember(let room, _), .setMemberRole(let room, _, _), .archiveRoom(let room):
            rooms = [room]
        case .revokeUser(let key):
            rooms = before.members.filter { $0.value[key] != nil }.map(\.key).sorted()
        case .addUser, .createRoom:
            rooms = []
        }
        for room in rooms {
            let recipients = Set(before.members[room].map { Array($0.keys) } ?? []).union(after.members[room].map { Array($0.keys) } ?? [])
            let notice = Array("{\"event\":\"members\",\"kind\":\"\(operation.kind)\",\"room\":\"\(room)\"}".utf8)
            for recipient in recipients.sorted() {
                broker.publish(subject: MembershipAuthorizer.keyDeliverySubject(for: recipient), payload: notice)
            }
        }
    }
}
