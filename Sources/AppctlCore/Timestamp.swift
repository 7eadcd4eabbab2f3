#if canImport(Glibc)
import Glibc
#endif

/// A UTC instant with second precision, written as `YYYY-MM-DDTHH:MM:SSZ` in policies.
/// Own code instead of Foundation's formatters: strict, allocation-free, and the same on every host.
public struct Timestamp: Comparable, Hashable, Sendable, CustomStringConvertible {
    public var secondsSinceEpoch: Int64
    public init(secondsSinceEpoch: Int64) { self.secondsSinceEpoch = secondsSinceEpoch }

    public static var now: Timestamp {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Timestamp(secondsSinceEpoch: Int64(ts.tv_sec))
    }

    public static func < (a: Timestamp, b: Timestamp) -> Bool { a.secondsSinceEpoch < b.secondsSinceEpoch }

    /// The canonical form: `2026-11-26T16:00:00Z`.
    public var description: String {
        let days = secondsSinceEpoch >= 0 ? secondsSinceEpoch / 86400 : (secondsSinceEpoch - 86399) / 86400
        let secs = secondsSinceEpoch - days * 86400
        let (y, m, d) = Self.civil(fromDays: days)
        func pad(_ v: Int64, _ width: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        return "\(pad(y, 4))-\(pad(m, 2))-\(pad(d, 2))T\(pad(secs / 3600, 2)):\(pad(secs / 60 % 60, 2)):\(pad(secs % 60, 2))Z"
    }

    /// Parses the canonical form only (what policy files carry).
    public init?(canonical text: some Collection<UInt8>) {
        let b = Array(text)
        guard b.count == 20, b[4] == UInt8(ascii: "-"), b[7] == UInt8(ascii: "-"), b[10] == UInt8(ascii: "T"),
              b[13] == UInt8(ascii: ":"), b[16] == UInt8(ascii: ":"), b[19] == UInt8(ascii: "Z") else { return nil }
        guard let t = Self.fields(b, date: 0..<10, time: 11..<19) else { return nil }
        self = t
    }

    /// Parses what an admin may type for `--expires`: `2027-01-31`, `2027-01-31T12:00:00Z`,
    /// or `2027-01-31T12:00:00+02:00` (RFC 3339 / ISO 8601 extended format).
    public init?(userInput: String) {
        let b = Array(userInput.utf8)
        if b.count == 10 {
            guard let t = Self.fields(b + Array("T00:00:00".utf8), date: 0..<10, time: 11..<19) else { return nil }
            self = t
            return
        }
        guard b.count >= 20, b[10] == UInt8(ascii: "T") || b[10] == UInt8(ascii: " "),
              let t = Self.fields(b, date: 0..<10, time: 11..<19) else { return nil }
        let zone = Array(b[19...])
        if zone == [UInt8(ascii: "Z")] {
            self = t
        } else if zone.count == 6, zone[0] == UInt8(ascii: "+") || zone[0] == UInt8(ascii: "-"), zone[3] == UInt8(ascii: ":"),
                  let hh = Self.number(zone[1..<3]), let mm = Self.number(zone[4..<6]), hh < 24, mm < 60 {
            let offset = hh * 3600 + mm * 60
            self = Timestamp(secondsSinceEpoch: t.secondsSinceEpoch - (zone[0] == UInt8(ascii: "+") ? offset : -offset))
        } else {
            return nil
        }
    }

    private static func number(_ digits: ArraySlice<UInt8>) -> Int64? {
        var v: Int64 = 0
        for c in digits {
            guard c >= UInt8(ascii: "0"), c <= UInt8(ascii: "9") else { return nil }
            v = v * 10 + Int64(c - UInt8(ascii: "0"))
        }
        return v
    }

    private static func fields(_ b: [UInt8], date: Range<Int>, time: Range<Int>) -> Timestamp? {
        guard b[4] == UInt8(ascii: "-"), b[7] == UInt8(ascii: "-"), b[13] == UInt8(ascii: ":"), b[16] == UInt8(ascii: ":"),
              let y = number(b[0..<4]), let mo = number(b[5..<7]), let d = number(b[8..<10]),
              let h = number(b[11..<13]), let mi = number(b[14..<16]), let s = number(b[17..<19]),
              (1...12).contains(mo), d >= 1, d <= daysInMonth(y, mo), h < 24, mi < 60, s < 60 else { return nil }
        return Timestamp(secondsSinceEpoch: days(fromCivil: y, mo, d) * 86400 + h * 3600 + mi * 60 + s)
    }

    private static func daysInMonth(_ y: Int64, _ m: Int64) -> Int64 {
        switch m {
        case 2: return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    // Howard Hinnant's days_from_civil / civil_from_days algorithms.
    static func days(fromCivil y0: Int64, _ m: Int64, _ d: Int64) -> Int64 {
        let y = m <= 2 ? y0 - 1 : y0
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146097 + doe - 719468
    }

    static func civil(fromDays z0: Int64) -> (Int64, Int64, Int64) {
        let z = z0 + 719468
        let era = (z >= 0 ? z : z - 146096) / 146097
        let doe = z - era * 146097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        return (m <= 2 ? yoe + era * 400 + 1 : yoe + era * 400, m, d)
    }
}
