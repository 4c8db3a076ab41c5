import Foundation

/// The subject namespaces no room may use, defined once. The membership
/// rules (`MembershipState.apply`) refuse a room whose subject reaches into
/// one of them, the authorizer builds every non-room permission from them,
/// and clients name their inboxes and key subjects with them.
///
/// A room's subject `S` grants `S` and `S.>` to its members, so a room
/// conflicts with a namespace or another room when either subject's tokens
/// are a prefix of the other's (`rooms` and `rooms.ops` conflict, `rooms`
/// and `roomsx` do not).
public enum ReservedNamespace {
    /// Reply inboxes (`_INBOX.<token>.…`): a room here would let its members
    /// read everyone's replies.
    public static let inbox = "_INBOX"
    /// The node's own subjects: key notices, heartbeats, cluster control.
    public static let node = "unibus"
    /// Where a user is told that key shares or membership changes wait:
    /// `unibus.keys.<user nkey>`.
    public static let keyDeliveryPrefix = "unibus.keys."
    /// Where a node tells a publisher that its frames of a persisted room are
    /// stored (durability receipts): `unibus.receipts.<user nkey>`. Only
    /// nodes publish here (clients may not publish under `unibus`).
    public static let receiptPrefix = "unibus.receipts."

    /// Per-node subjects: `unibus.node.<node id>.beat` (signed heartbeats)
    /// and `unibus.node.<node id>.update_result` (signed command results).
    /// Only nodes publish here; admins may subscribe.
    public static let nodePrefix = "unibus.node."
    /// Where admins publish signed cluster commands (only admins may).
    public static let controlSubject = "unibus.control"
    /// Everything admins may subscribe to under the node namespace.
    public static let nodeWildcard = "unibus.node.>"

    /// The heartbeat subject of one node.
    public static func beatSubject(for nodeID: String) -> String { nodePrefix + nodeID + ".beat" }

    /// The command-result subject of one node.
    public static func resultSubject(for nodeID: String) -> String { nodePrefix + nodeID + ".update_result" }

    /// First tokens reserved outright (besides anything starting with `$`,
    /// which covers `$SYS`, `$JS`, `$KV` and every system account subject).
    public static let reservedFirstTokens: [String] = [inbox, node]

    /// The key-delivery subject of one user.
    public static func keyDeliverySubject(for userNKey: String) -> String { keyDeliveryPrefix + userNKey }

    /// The durability-receipt subject of one user.
    public static func receiptSubject(for userNKey: String) -> String { receiptPrefix + userNKey }

    /// Why `subject` may not be a room subject because of a reserved
    /// namespace, or nil if it may (as far as namespaces go).
    public static func reservation(of subject: String) -> String? {
        if subject.hasPrefix("$") {
            return "subjects starting with $ belong to the system ($SYS, $JS, …)"
        }
        let first = subject.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? subject
        if reservedFirstTokens.contains(first) {
            return "\(first) and everything under it is reserved (\(first == inbox ? "reply inboxes" : "the node's own subjects"))"
        }
        return nil
    }

    /// Whether two literal subjects overlap as room subjects: equal, or the
    /// tokens of one are a prefix of the other's.
    public static func overlaps(_ a: String, _ b: String) -> Bool {
        let x = a.split(separator: ".", omittingEmptySubsequences: false)
        let y = b.split(separator: ".", omittingEmptySubsequences: false)
        let shorter = min(x.count, y.count)
        for index in 0..<shorter where x[index] != y[index] { return false }
        return true
    }
}

/// What a node publishes on a member's key-delivery subject when a room's
/// membership changed (no authority: the client syncs and verifies).
/// Shared by the node that sends it and the client library that reads it.
public struct MembershipNotice: Codable, Sendable {
    public static let membersEvent = "members"

    public var event: String
    public var kind: String
    public var room: String

    public init(event: String, kind: String, room: String) {
        self.event = event
        self.kind = kind
        self.room = room
    }
}


extension MembershipNotice {
    /// The notice as JSON (sorted keys).
    public var encoded: [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? [UInt8](encoder.encode(self))) ?? []
    }
}
