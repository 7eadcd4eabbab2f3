#if canImport(Glibc)
import Glibc
#endif

/// Nanoseconds on the monotonic clock.
public func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Wall-clock time as RFC 3339 with nanoseconds, UTC: `2026-11-26T16:21:18.123456789Z`.
public func rfc3339Now() -> String {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    var tmValue = tm()
    var seconds = ts.tv_sec
    gmtime_r(&seconds, &tmValue)
    func pad(_ v: Int32, _ w: Int) -> String { let s = String(v); return String(repeating: "0", count: max(0, w - s.count)) + s }
    let ns = String(ts.tv_nsec)
    return "\(pad(tmValue.tm_year + 1900, 4))-\(pad(tmValue.tm_mon + 1, 2))-\(pad(tmValue.tm_mday, 2))T\(pad(tmValue.tm_hour, 2)):\(pad(tmValue.tm_min, 2)):\(pad(tmValue.tm_sec, 2)).\(String(repeating: "0", count: 9 - ns.count) + ns)Z"
}

/// Seconds on the monotonic clock.
public func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}
