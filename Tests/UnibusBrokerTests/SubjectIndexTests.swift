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
        #expect(!permission.permits(filter: "orders.>"), "covers a denied filter")
        #expect(!permission.permits(filter: ">"))
        #expect(!permission.permits(filter: "*.new"))
        #expect(SubjectPermission.everything.permits(filter: ">"))
        #expect(SubjectPermission.filter("a.*", covers: "a.b"))
        #expect(!SubjectPermission.filter("a.b", covers: "a.*"))
        #expect(SubjectPermission.filter("a.>", covers: "a.*.c"))
    }
}
