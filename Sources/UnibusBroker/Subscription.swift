import Atomics
import UnibusWire

/// One SUB of one connection, or one interest a route's far node announced
/// (`RS+`). Shared between event loops (the publisher's loop delivers into
/// it), so its mutable parts are atomics.
final class Subscription: Sendable {
    let connection: QueuedConnection
    let subject: String
    let queue: String?
    let sid: String
    /// The sid as bytes, written into every MSG line.
    let sidBytes: [UInt8]
    /// Messages left before an UNSUB with max removes it; 0 = unlimited.
    let remaining = ManagedAtomic<Int>(0)
    let limited = ManagedAtomic<Bool>(false)
    let removed = ManagedAtomic<Bool>(false)
    /// Messages delivered so far (UNSUB with max counts them).
    let delivered = ManagedAtomic<Int>(0)
    /// Denied filters that part of `subject` overlaps: a message matching
    /// one is not delivered here. Empty for almost every subscription.
    let deny: [String]

    init(connection: QueuedConnection, subject: String, queue: String?, sid: String, deny: [String] = []) {
        self.connection = connection
        self.subject = subject
        self.queue = queue
        self.sid = sid
        self.sidBytes = Array(sid.utf8)
        self.deny = deny
    }

    /// Whether a message on `subject` may be delivered here (deny rules
    /// hold at delivery, not only when the subscription was made).
    @inline(__always)
    func admits(_ subject: String) -> Bool {
        deny.isEmpty || !deny.contains { Subject.matches(filter: $0, subject: subject) }
    }

    /// Claims one delivery. Returns (deliver, lastOne): with a max set, the
    /// delivery that uses the last allowance also asks for removal.
    func claimDelivery() -> (deliver: Bool, last: Bool) {
        if removed.load(ordering: .relaxed) { return (false, false) }
        guard limited.load(ordering: .relaxed) else { return (true, false) }
        let left = remaining.loadThenWrappingDecrement(ordering: .relaxed)
        if left <= 0 { return (false, false) }
        return (true, left == 1)
    }
}
