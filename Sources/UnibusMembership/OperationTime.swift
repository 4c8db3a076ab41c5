import Foundation

/// Timestamps as operations carry them: RFC 3339 in UTC with milliseconds,
/// `2026-11-23T10:00:00.123Z` (or without the fraction).
///
/// Parsed here, byte by byte, rather than by `ISO8601DateFormatter`: the
/// fold checks workload logins and checkpoints against these times, and an
/// actor chooses the text it signs. Foundation's parser is lenient in ways
/// that differ by platform and version (on Linux it takes February 30, hour
/// 24, one-digit months, offsets, leading spaces and trailing junk), so two
/// readers could fold the same log differently. This grammar has one
/// reading everywhere, and it is what every signer in Unibus writes.
public enum OperationTime {
    /// Milliseconds since the epoch, or nil unless `text` is exactly
    /// `YYYY-MM-DDTHH:MM:SS.mmmZ` or `YYYY-MM-DDTHH:MM:SSZ` with a real
    /// calendar date from 1970 through 9999 (no leap second, no hour 24).
    public static func millis(_ text: String) -> UInt64? {
        var text = text
        return text.withUTF8 { millis(bytes: $0) }
    }

    static func millis(bytes: UnsafeBufferPointer<UInt8>) -> UInt64? {
        guard bytes.count == 20 || bytes.count == 24 else { return nil }
        func number(_ from: Int, _ count: Int) -> Int? {
            var value = 0
            for index in from..<(from + count) {
                let digit = Int(bytes[index]) - 48
                guard (0...9).contains(digit) else { return nil }
                value = value * 10 + digit
            }
            return value
        }
        func byte(_ index: Int, is character: Character) -> Bool { bytes[index] == character.asciiValue }
        guard byte(4, is: "-"), byte(7, is: "-"), byte(10, is: "T"), byte(13, is: ":"), byte(16, is: ":"),
              byte(bytes.count - 1, is: "Z"),
              let year = number(0, 4), let month = number(5, 2), let day = number(8, 2),
              let hour = number(11, 2), let minute = number(14, 2), let second = number(17, 2) else { return nil }
        var milliseconds = 0
        if bytes.count == 24 {
            guard byte(19, is: "."), let fraction = number(20, 3) else { return nil }
            milliseconds = fraction
        }
        guard year >= 1970, (1...12).contains(month), (1...daysIn(month: month, year: year)).contains(day),
              hour < 24, minute < 60, second < 60 else { return nil }
        // At most 9999-12-31T23:59:59.999Z, about 2.5e14 ms: no overflow.
        let days = daysSinceEpoch(year: year, month: month, day: day)
        return UInt64(((days * 24 + hour) * 60 + minute) * 60 + second) * 1000 + UInt64(milliseconds)
    }

    /// Now, as the control plane and key shares write it.
    public static func now() -> String { string(Date()) }

    /// `date` in the form `millis` reads (to the nearest millisecond). Dates
    /// before 1970 or after 9999 are clamped to those years' ends (and a
    /// NaN interval to the epoch), so the conversion cannot trap.
    public static func string(_ date: Date) -> String {
        let limit = 253_402_300_799_999.0   // 9999-12-31T23:59:59.999Z
        let wanted = (date.timeIntervalSince1970 * 1000).rounded()
        let total = wanted.isNaN ? 0 : Int64(min(max(0, wanted), limit))
        let (days, inDay) = total.quotientAndRemainder(dividingBy: 86_400_000)
        let (year, month, day) = civil(daysSinceEpoch: Int(days))
        let inDayMillis = Int(inDay)
        let hour = inDayMillis / 3_600_000, minute = inDayMillis / 60_000 % 60, second = inDayMillis / 1000 % 60
        var bytes = [UInt8]()
        bytes.reserveCapacity(24)
        func append(_ value: Int, digits: Int) {
            var divisor = 1
            for _ in 1..<digits { divisor *= 10 }
            while divisor > 0 {
                bytes.append(UInt8(48 + value / divisor % 10))
                divisor /= 10
            }
        }
        append(year, digits: 4); bytes.append(UInt8(ascii: "-"))
        append(month, digits: 2); bytes.append(UInt8(ascii: "-"))
        append(day, digits: 2); bytes.append(UInt8(ascii: "T"))
        append(hour, digits: 2); bytes.append(UInt8(ascii: ":"))
        append(minute, digits: 2); bytes.append(UInt8(ascii: ":"))
        append(second, digits: 2); bytes.append(UInt8(ascii: "."))
        append(inDayMillis % 1000, digits: 3); bytes.append(UInt8(ascii: "Z"))
        return String(decoding: bytes, as: UTF8.self)
    }

    static func isLeap(_ year: Int) -> Bool { year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) }

    static func daysIn(month: Int, year: Int) -> Int {
        switch month {
        case 2: return isLeap(year) ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    /// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's
    /// days_from_civil, for years from 1970 on).
    static func daysSinceEpoch(year: Int, month: Int, day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = y / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }

    /// The date `days` after 1970-01-01 (H. Hinnant's civil_from_days, for
    /// days from 0 on).
    static func civil(daysSinceEpoch days: Int) -> (year: Int, month: Int, day: Int) {
        let shifted = days + 719_468
        let era = shifted / 146_097
        let dayOfEra = shifted - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let shiftedMonth = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * shiftedMonth + 2) / 5 + 1
        let month = shiftedMonth < 10 ? shiftedMonth + 3 : shiftedMonth - 9
        return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }
}
