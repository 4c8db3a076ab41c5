import Foundation
import Testing
@testable import UnibusMembership

/// Operation timestamps have one reading on every platform: the fold checks
/// workload logins and checkpoints against them, and actors choose them.
@Suite("Operation timestamps")
struct OperationTimeTests {
    /// The form every signer writes, read back to the millisecond, agreeing
    /// with Foundation wherever Foundation is strict.
    @Test func writtenAndReadAgreeWithFoundation() throws {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        var generator = SystemRandomNumberGenerator()
        // The epoch, leap days, century years, the last millisecond we write, and random instants.
        var instants: [Int64] = [0, 951_782_400_000, 951_868_799_999, 4_107_542_400_000, 1_796_205_600_123, 253_402_300_799_999]
        for _ in 0..<2000 { instants.append(Int64.random(in: 0...253_402_300_799_999, using: &generator)) }
        for millis in instants {
            let date = Date(timeIntervalSince1970: Double(millis) / 1000)
            let written = OperationTime.string(date)
            #expect(written == formatter.string(from: date), "\(millis)")
            #expect(OperationTime.millis(written) == UInt64(millis), "\(written)")
            let foundation = try #require(formatter.date(from: written))
            #expect(abs(foundation.timeIntervalSince1970 * 1000 - Double(millis)) < 1, "\(written)")
        }
        #expect(OperationTime.millis("2026-11-23T10:00:00Z") == 1_795_428_000_000)
        #expect(OperationTime.millis("2024-02-29T23:59:59.999Z") == 1_709_251_199_999)
    }

    /// What Foundation on Linux accepts and another reader might not: each
    /// is refused here, so no reader folds it differently.
    @Test func lenientFormsAreRefused() {
        for text in ["2026-02-30T00:00:00.000Z", "2025-02-29T00:00:00.000Z", "1900-02-29T00:00:00.000Z", "2026-04-31T00:00:00.000Z",
                     "2026-12-02T24:00:00.000Z", "2026-12-02T23:60:00.000Z", "2026-12-02T23:59:60.000Z", "2026-13-02T10:00:00.000Z",
                     "2026-00-02T10:00:00.000Z", "2026-12-00T10:00:00.000Z", "2026-1-2T10:00:00.000Z", "2026-12-02T10:00:00.000+01:00",
                     "2026-12-02T10:00:00+00:00", " 2026-12-02T10:00:00.000Z", "2026-12-02T10:00:00.000Zjunk", "2026-12-02T10:00:00.000z",
                     "2026-12-02t10:00:00.000Z", "2026-12-02 10:00:00.000Z", "2026-12-02T10:00:00,000Z", "2026-12-02T10:00:00.5Z",
                     "2026-12-02T10:00:00.1234Z", "1969-12-31T23:59:59.999Z", "0000-01-01T00:00:00.000Z", "+2026-12-02T10:00:00Z",
                     "2026-12-02T10:00:0a.000Z", "２０２６-12-02T10:00:00.000Z", "", "2026-12-02T10:00:00.000Z\u{0}"] {
            #expect(OperationTime.millis(text) == nil, "\(text)")
        }
    }

    /// Dates outside what the form can say are written at its ends.
    @Test func outOfRangeDatesAreClamped() {
        #expect(OperationTime.string(Date(timeIntervalSince1970: -1)) == "1970-01-01T00:00:00.000Z")
        #expect(OperationTime.string(Date(timeIntervalSince1970: 1e13)) == "9999-12-31T23:59:59.999Z")
        #expect(OperationTime.string(Date(timeIntervalSince1970: .nan)) == "1970-01-01T00:00:00.000Z")
    }
}
