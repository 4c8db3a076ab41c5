import UnibusBroker
import UnibusCrypto
import UnibusMembership

/// The broker's authorizer backed by the node's own membership store: no
/// other node and no quorum is consulted. Unknown or revoked keys are refused.
///
/// Subjects a member may use:
/// - each open room's subject and anything below it (`S`, `S.>`), both ways;
/// - its own inbox `_INBOX.<nkey>.>` (subscribe) and any `_INBOX.>` (publish,
///   to answer requests); clients use `_INBOX.<nkey>` as their inbox prefix;
/// - its key-delivery subject `unibus.keys.<nkey>` (subscribe).
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
        let inbox = "_INBOX.\(userNKey).>"
        return Permissions(
            publish: SubjectPermission(allow: roomSubjects + ["_INBOX.>"]),
            subscribe: SubjectPermission(allow: roomSubjects + [inbox, keyDeliverySubject(for: userNKey)]))
    }

    /// Where a user is told that key shares are waiting for it.
    public static func keyDeliverySubject(for userNKey: String) -> String { keyDeliverySubjectPrefix + userNKey }
    public static let keyDeliverySubjectPrefix = "unibus.keys."
}
