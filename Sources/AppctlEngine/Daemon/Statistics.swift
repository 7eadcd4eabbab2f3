import Synchronization

/// Counters and a latency histogram, updated from the decision threads without blocking them.
public final class Statistics: Sendable {
    public let allowed = Atomic<Int>(0)
    public let denied = Atomic<Int>(0)
    public let wouldDeny = Atomic<Int>(0)
    public let learned = Atomic<Int>(0)
    public let cacheHits = Atomic<Int>(0)
    public let cacheMisses = Atomic<Int>(0)
    public let hashesComputed = Atomic<Int>(0)
    public let bytesHashed = Atomic<Int>(0)
    public let ownProcessEvents = Atomic<Int>(0)
    public let eventsDropped = Atomic<Int>(0)
    public let eventWriteErrors = Atomic<Int>(0)
    public let hashesInFlight = Atomic<Int>(0)
    /// Plain opens of data files, allowed without hashing.
    public let inertOpens = Atomic<Int>(0)
    /// Misses denied in enforce mode because no allowed entry has the file's size (nothing hashed).
    public let deniedBySize = Atomic<Int>(0)
    public let ignoreMarksPlaced = Atomic<Int>(0)
    public let prehashed = Atomic<Int>(0)
    public let prehashDropped = Atomic<Int>(0)
    public let ignoreMarkErrors = Atomic<Int>(0)
    /// Ignore marks placed since the last flush: an upper bound on the files whose verdict the kernel holds.
    public let ignoreMarksSinceFlush = Atomic<Int>(0)
    public let kernelCacheFlushes = Atomic<Int>(0)
    /// Execs that happened on the marked filesystems (the counting group's `FAN_OPEN_EXEC` notifications, read
    /// once a second), and the exec permission events the daemon itself allowed: the difference is the execs
    /// the kernel answered from its verdict cache.
    public let execsSeen = Atomic<Int>(0)
    public let execsAllowedByDaemon = Atomic<Int>(0)
    /// Times the counter's queue overflowed (execs lost to the count, so the kernel figure is a lower bound).
    public let execCountOverflows = Atomic<Int>(0)
    /// Events decided from the file's fs-verity digest (FS_IOC_MEASURE_VERITY), without reading it.
    public let verityDecisions = Atomic<Int>(0)

    /// Four buckets per power of two of nanoseconds: about 19% resolution from 1 ns to 2^64.
    private let buckets = Mutex<[UInt64]>([UInt64](repeating: 0, count: 256))

    public init() {}

    public func recordLatency(nanoseconds: UInt64) {
        let index = Self.bucket(nanoseconds)
        buckets.withLock { $0[index] &+= 1 }
    }

    static func bucket(_ ns: UInt64) -> Int {
        guard ns > 1 else { return 0 }
        let log2 = 63 - ns.leadingZeroBitCount
        // The two bits below the leading one pick the quarter-octave.
        let fraction = log2 >= 2 ? Int((ns >> UInt64(log2 - 2)) & 3) : 0
        return min(255, log2 * 4 + fraction)
    }

    /// The upper edge of a bucket, in nanoseconds.
    static func upperBound(_ index: Int) -> UInt64 {
        let log2 = index / 4, fraction = index % 4
        guard log2 >= 2 else { return UInt64(1) << UInt64(log2 + 1) }
        return (UInt64(4 + fraction + 1) << UInt64(log2 - 2))
    }

    /// Quantile `q` (0...1) of the recorded latencies, in microseconds (bucket upper edge); nil when empty.
    public func latencyQuantile(_ q: Double) -> Double? {
        let counts = buckets.withLock { $0 }
        let total = counts.reduce(0, +)
        guard total > 0 else { return nil }
        let target = UInt64((Double(total) * q).rounded(.up))
        var seen: UInt64 = 0
        for (i, c) in counts.enumerated() {
            seen += c
            if seen >= max(target, 1) { return Double(Self.upperBound(i)) / 1000 }
        }
        return nil
    }
}
