import NIOCore
import Testing
@testable import UnibusBroker

@Suite("Subject index and permissions")
struct SubjectIndexTests {
    @Test func permissionsAllowDenyAndCovering() {
        let permission = SubjectPermission(allow: ["orders.>", "_INBOX.>"], deny: ["orders.secret.>"])
        #expect(permission.permits(subject: "orders.new"))
        #expect(!permission.permits(subject: "orders.secret.x"))
        #expect(!permission.permits(subject: "payments.new"))
        #expect(permission.permits(filter: "orders.*"))
        #expect(permission.permits(filter: "orders.eu.>"))
        // As nats-server: a filter that contains a denied one is allowed and
        // the denied part is filtered at delivery; one a deny covers is refused.
        #expect(permission.permits(filter: "orders.>"))
        #expect(permission.denied(within: "orders.>") == ["orders.secret.>"])
        #expect(!permission.permits(filter: "orders.secret.>"))
        #expect(!permission.permits(filter: "orders.secret.x"))
        #expect(!permission.permits(filter: ">"))
        #expect(!permission.permits(filter: "*.new"))
        #expect(SubjectPermission.everything.permits(filter: ">"))
        #expect(SubjectPermission.filter("a.*", covers: "a.b"))
        #expect(!SubjectPermission.filter("a.b", covers: "a.*"))
        #expect(SubjectPermission.filter("a.>", covers: "a.*.c"))
    }

    /// Stock clients' default inboxes: `_INBOX.<literal token>.…` is allowed,
    /// never a wildcard at the token, never another user's nkey inbox.
    @Test func defaultInboxesUnderALiteralToken() {
        let me = "U" + String(repeating: "A", count: 55), other = "U" + String(repeating: "B", count: 55)
        let permission = SubjectPermission(allow: ["rooms.a"], inboxOwner: me)
        #expect(permission.permits(filter: "_INBOX.Xk2Jz9.>"))
        #expect(permission.permits(filter: "_INBOX.Xk2Jz9.*"))
        #expect(permission.permits(filter: "_INBOX.Xk2Jz9.17"))
        #expect(permission.permits(filter: "_INBOX.\(me).>"))
        #expect(!permission.permits(filter: "_INBOX.\(other).>"), "another user's nkey inbox")
        #expect(!permission.permits(filter: "_INBOX.*.>"))
        #expect(!permission.permits(filter: "_INBOX.>"))
        #expect(!permission.permits(filter: "_INBOX.*"))
        #expect(!permission.permits(filter: "_INBOX.Xk2Jz9"))
        #expect(!SubjectPermission(allow: ["rooms.a"]).permits(filter: "_INBOX.Xk2Jz9.>"), "only with an inbox owner")
    }

    /// A subscription that only partly overlaps a deny rule is allowed, and
    /// the overlap is checked at delivery (`a.b.*` allowed by `a.>` must not
    /// receive `a.b.c` when `a.*.c` is denied).
    @Test func partialOverlapsAreFilteredAtDelivery() {
        let permission = SubjectPermission(allow: ["a.>"], deny: ["a.*.c"])
        #expect(permission.permits(filter: "a.b.*"))
        #expect(permission.denied(within: "a.b.*") == ["a.*.c"])
        #expect(permission.denied(within: "a.b.d") == [])
        #expect(permission.denied(within: "x.>") == [])
        #expect(SubjectPermission.intersect("a.b.*", "a.*.c"))
        #expect(SubjectPermission.intersect(">", "a"))
        #expect(!SubjectPermission.intersect("a.b", "a.b.c"))
        #expect(!SubjectPermission.intersect("a.*", "b.*"))
        #expect(SubjectPermission.intersect("a.*.>", "a.b.c.d"))
    }
}
