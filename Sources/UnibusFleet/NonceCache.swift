/// Shared by the control plane (signed requests) and the node (cluster commands).
/// Nonces with an expiry, per owner (the caller), evicted oldest first in
/// O(1) amortised: entries go into a FIFO in arrival order (their lifetimes
/// are equal, so arrival order is expiry order) and a set answers "seen?".
/// One owner may hold at most `perOwner` live nonces, so no single active
/// user can fill the memory and lock everyone else out.
public struct NonceCache: Sendable {
    public let capacity: Int
    public let perOwner: Int
    private var expiries: [String: Int] = [:]
    private var owned: [String: Int] = [:]
    private var queue: [(key: String, owner: String, expiry: Int)] = []
    private var head = 0

    public init(capacity: Int, perOwner: Int = .max) {
        self.capacity = capacity
        self.perOwner = perOwner
    }

    public var count: Int { expiries.count }

    /// Remembers `nonce` for `owner`; returns why not (replayed, or full),
    /// nil when remembered.
    public mutating func insert(_ nonce: String, owner: String, now: Int, lifetime: Int) -> Refusal? {
        evict(now: now)
        let key = owner + " " + nonce
        if let expiry = expiries[key], expiry > now { return .replayed }
        guard expiries.count < capacity, owned[owner, default: 0] < perOwner else { return .full }
        let expiry = now + lifetime
        expiries[key] = expiry
        owned[owner, default: 0] += 1
        queue.append((key, owner, expiry))
        return nil
    }

    /// Why a nonce was not remembered.
    public enum Refusal: Sendable, Equatable {
        /// Seen before and not expired.
        case replayed
        /// The memory (or the owner's share of it) is full.
        case full
    }

    private mutating func evict(now: Int) {
        while head < queue.count, queue[head].expiry <= now {
            let entry = queue[head]
            if expiries[entry.key] == entry.expiry {
                expiries[entry.key] = nil
                let left = owned[entry.owner, default: 1] - 1
                owned[entry.owner] = left > 0 ? left : nil
            }
            head += 1
        }
        // Drop the consumed prefix once it is half the array: amortised O(1).
        if head > 1024 && head * 2 > queue.count {
            queue.removeFirst(head)
            head = 0
        }
    }
}
