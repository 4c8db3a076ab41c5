import Foundation
import UnibusBroker
import UnibusCrypto
import UnibusMembership
import UnibusMembershipStore

/// The broker's authorizer backed by the node's own membership store: no
/// other node and no quorum is consulted. Unknown or revoked keys are refused.
///
/// Subjects a member may use:
/// - each open room's subject and anything below it (`S`, `S.>`), both ways;
/// - its own inbox `_INBOX.<nkey>.>` (subscribe), and, for stock clients'
///   default inboxes, `_INBOX.<token>.…` with a literal token that is not
///   another user's nkey (nats-py and nats.go pick a random token; no
///   wildcard is allowed at that level, so nobody listens to every inbox);
/// - the reply subject of a request delivered to it, once, within two
///   minutes (nats-server's `allow_responses`): nobody may publish into
///   another user's inbox otherwise, so replies cannot be forged;
/// - its key-delivery subject `unibus.keys.<nkey>` and its durability
///   receipts `unibus.receipts.<nkey>` (subscribe).
///
/// Room subjects never reach a reserved namespace (`ReservedNamespace`,
/// enforced by the membership rules), so these grants cannot overlap.
///
/// Admins may also publish signed cluster commands on `unibus.control` and
/// subscribe to `unibus.node.>` (beats and command results). Agent keys
/// (role `agent`) are not bus users: they only sign VaultMesh heartbeats.
public struct MembershipAuthorizer: Authorizer {
    public let store: MembershipStore
    public let switches: NodeSwitches?

    public init(store: MembershipStore, switches: NodeSwitches? = nil) {
        self.store = store
        self.switches = switches
    }

    public func permissions(forUser userNKey: String) -> Permissions? {
        Self.permissions(for: userNKey, in: store.snapshot)
    }

    /// While `client_connections` (or `node`) is engaged only admins connect,
    /// so a later command can always lift it.
    public func admits(newConnectionOf userNKey: String) -> Bool {
        guard let switches, switches.isEngaged(.clientConnections) else { return true }
        return store.snapshot.users[userNKey]?.role == .admin
    }

    /// The rule itself, pure (tests and the live refresh use it directly).
    /// A workload whose login expired by `now` (Unix seconds) gets none.
    public static func permissions(for userNKey: String, in state: MembershipState,
                                   now: Int64 = Int64(Date().timeIntervalSince1970)) -> Permissions? {
        guard state.isLive(userNKey, now: now), let user = state.users[userNKey] else { return nil }
        var roomSubjects: [String] = []
        for room in state.rooms(of: userNKey) {
            roomSubjects.append(room.subject)
            roomSubjects.append(room.subject + ".>")
        }
        let inbox = "\(ReservedNamespace.inbox).\(userNKey).>"
        let isAdmin = user.role == .admin
        let publishable = roomSubjects + (isAdmin ? [ReservedNamespace.controlSubject] : [])
        // An empty allow list means "everything": a user in no room may publish nothing but replies.
        let publish = publishable.isEmpty ? SubjectPermission(allow: [], deny: [">"]) : SubjectPermission(allow: publishable)
        return Permissions(
            publish: publish,
            subscribe: SubjectPermission(allow: roomSubjects + [inbox, ReservedNamespace.keyDeliverySubject(for: userNKey),
                                                                ReservedNamespace.receiptSubject(for: userNKey)]
                                            + (isAdmin ? [ReservedNamespace.nodeWildcard] : []),
                                         inboxOwner: userNKey),
            responses: .standard)
    }
}
