/// Which message numbers of one stream (a Megolm session's indices, or a
/// signed stream's sequence) have been accepted: a sliding bitmap over the
/// newest `size` numbers, as IPsec's anti-replay window. A number below the
/// window cannot be proven fresh and is refused as a replay.
struct ReplayWindow: Sendable {
    static let size: UInt64 = 4096
    private static let words = Int(size / 64)

    /// One past the highest accepted number (0 = none yet).
    private(set) var top: UInt64 = 0
    private var bits = [UInt64](repeating: 0, count: words)

    /// Whether `number` could still be accepted (not seen, not too old).
    func isFresh(_ number: UInt64) -> Bool {
        if number == .max { return false }
        if number >= top { return true }
        if top - number > Self.size { return false }
        return bits[Self.slot(number)] & Self.mask(number) == 0
    }

    /// Records `number`; false if it was a replay (nothing changes then).
    /// `UInt64.max` is never accepted: `top` is one past the highest number,
    /// and a sender that reached the end of the range must start a new stream.
    mutating func accept(_ number: UInt64) -> Bool {
        guard number < .max, isFresh(number) else { return false }
        if number >= top {
            // Clear the slots the window slides over.
            let advance = number + 1 - top
            if advance >= Self.size {
                for i in bits.indices { bits[i] = 0 }
            } else {
                var n = top
                while n <= number { bits[Self.slot(n)] &= ~Self.mask(n); n += 1 }
            }
            top = number + 1
        }
        bits[Self.slot(number)] |= Self.mask(number)
        return true
    }

    private static func slot(_ n: UInt64) -> Int { Int((n % size) / 64) }
    private static func mask(_ n: UInt64) -> UInt64 { 1 << (n % 64) }
}
