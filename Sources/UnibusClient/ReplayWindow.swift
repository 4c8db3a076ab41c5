/// Which message numbers of one stream (a Megolm session's indices, or a
/// signed stream's sequence) have been accepted: a sliding bitmap over the
/// newest `size` numbers, as IPsec's anti-replay window. A number below the
/// window cannot be proven fresh and is refused as a replay.
///
/// Persisted rooms use a wider window (`persistedSize`): a frame missed live
/// is fetched from a node's store later, and must still fit the window then.
/// The window also remembers when a gap opened (`gapSince`), so a reader can
/// ask the store for what it skipped.
struct ReplayWindow: Sendable {
    static let size: UInt64 = 4096
    static let persistedSize: UInt64 = 65_536

    /// Numbers the window spans (a multiple of 64).
    let size: UInt64
    /// One past the highest accepted number (0 = none yet).
    private(set) var top: UInt64 = 0
    private var bits: [UInt64]
    /// The lowest missing number below `top` while there is one (nil: none
    /// missing, or what was missing slid out of the window).
    private(set) var gapStart: UInt64?
    /// When (ms) the frame that opened that gap arrived.
    private(set) var gapSince: UInt64 = 0

    /// A window of `size` numbers (rounded up to a multiple of 64, 64 to
    /// `persistedSize`) whose stream starts at `floor` (a session shared at
    /// index k starts there: nothing below it is a gap).
    init(size: UInt64 = ReplayWindow.size, floor: UInt64 = 0) {
        let rounded = min(max(64, (size + 63) / 64 * 64), ReplayWindow.persistedSize)
        self.size = rounded
        bits = [UInt64](repeating: 0, count: Int(rounded / 64))
        top = floor
    }

    /// Forgets the open gap (the store was asked and did not fill it: its
    /// frames were never stored); a later skip opens a new one.
    mutating func retireGap() {
        gapStart = nil
    }

    /// Whether `number` could still be accepted (not seen, not too old).
    func isFresh(_ number: UInt64) -> Bool {
        if number == .max { return false }
        if number >= top { return true }
        if top - number > size { return false }
        return bits[slot(number)] & mask(number) == 0
    }

    /// Records `number` (which arrived at `arrivedAt`, ms); false if it was a
    /// replay (nothing changes then). `UInt64.max` is never accepted: `top`
    /// is one past the highest number, and a sender that reached the end of
    /// the range must start a new stream.
    mutating func accept(_ number: UInt64, arrivedAt: UInt64 = 0) -> Bool {
        guard number < .max, isFresh(number) else { return false }
        if number >= top {
            if number > top, gapStart == nil {
                gapStart = top
                gapSince = arrivedAt
            }
            // Clear the slots the window slides over.
            let advance = number + 1 - top
            if advance >= size {
                for i in bits.indices { bits[i] = 0 }
            } else {
                var n = top
                while n <= number { bits[slot(n)] &= ~mask(n); n += 1 }
            }
            top = number + 1
        }
        bits[slot(number)] |= mask(number)
        if let start = gapStart, number == start || top - start > size {
            // Filled (or slid out of reach): where is the next one, if any?
            // A later hole is dated by this arrival (it was seen open now).
            let below = deliveredBelow
            gapStart = below < top ? below : nil
            if gapStart != nil, below != start { gapSince = arrivedAt }
        }
        return true
    }

    /// The first number not accepted, at or above the window's bottom: every
    /// number below it was accepted or can no longer be (too old). A
    /// resuming client tells a node to skip those.
    var deliveredBelow: UInt64 {
        let bottom = top > size ? top - size : 0
        var number = bottom
        while number < top {
            let word = bits[slot(number)]
            // Whole words of accepted numbers at once.
            if number % 64 == 0, word == .max, number + 64 <= top {
                number += 64
                continue
            }
            if word & mask(number) == 0 { return number }
            number += 1
        }
        return top
    }

    /// The window as bytes (top, then the bitmap), for the client's store.
    var encoded: [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(8 + bits.count * 8)
        for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: top >> UInt64(shift))) }
        for word in self.bits { for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: word >> UInt64(shift))) } }
        return bytes
    }

    /// A window from `encoded` (any size this type makes), or nil if the bytes are not one.
    init?(encoded bytes: [UInt8]) {
        guard bytes.count >= 16, (bytes.count - 8) % 8 == 0 else { return nil }
        let size = UInt64((bytes.count - 8) / 8 * 64)
        guard size <= ReplayWindow.persistedSize else { return nil }
        var words: [UInt64] = []
        words.reserveCapacity(Int(size / 64) + 1)
        for start in stride(from: 0, to: bytes.count, by: 8) {
            var value: UInt64 = 0
            for byte in bytes[start..<(start + 8)] { value = value << 8 | UInt64(byte) }
            words.append(value)
        }
        self.size = size
        top = words[0]
        bits = Array(words.dropFirst())
    }

    private func slot(_ n: UInt64) -> Int { Int((n % size) / 64) }
    private func mask(_ n: UInt64) -> UInt64 { 1 << (n % 64) }
}
