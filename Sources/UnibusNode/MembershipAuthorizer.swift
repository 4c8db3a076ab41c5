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
public struct MembershipAuthorizer: Authorizer {
    public let store: MembershipStore

    public init(store: MembershipStore) {
        self.store = store
    }

    public func permissions(forUser userNKey: String) -> Permissions? {
        Self.permissions(for: userNKey, in: store.snapshot)
    }

    /// The rule itself, pure (tests and the live refresh use it directly).
    public static func permissions(for userNKey: String, in state: MembershipState) -> Permissions? {
        guard let user = state.users[userNKey], user.status == .active else { return nil }
        var roomSubjects: [String] = []
        for room in state.rooms(of: userNKey) {
            roomSubjects.append(room.subject)
            roomSubjects.append(room.subject + ".>")
        }
        let inbox = "\(ReservedNamespace.inbox).\(userNKey).>"
        // An empty allow list means "everything": a user in no room may publish nothing but replies.
        let publish = roomSubjects.isEmpty ? SubjectPermission(allow: [], deny: [">"]) : SubjectPermission(allow: roomSubjects)
        return Permissions(
            publish: publish,
            subscribe: SubjectPermission(allow: roomSubjects + [inbox, ReservedNamespace.keyDeliverySubject(for: userNKey),
                                                                ReservedNamespace.receiptSubject(for: userNKey)],
                                         inboxOwner: userNKey),
            responses: .standard)
    }
}
