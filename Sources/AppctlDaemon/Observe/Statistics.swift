import Synchronization

/// Every figure the daemon counts, in one table: `status`, `status --json` and the Prometheus file are all
/// rendered from it (`StatusReport`), so a counter is declared once and cannot be forgotten in one of them.
public enum Counter: Int, CaseIterable, Sendable {
    case allowed, denied, wouldDeny
    /// Allowed execs and opens the candidate policy (shadow evaluation) would have denied.
    case candidateWouldDeny
    case cacheHits, cacheMisses, hashesComputed, bytesHashed, hashesInFlight
    case ownProcessEvents, inertOpens, deniedBySize, prehashed, prehashDropped
    /// Scripts, libraries and mapped programs someone other than root can change (`Reason.mutable`).
    case mutableDenials
    /// Interpreter command lines read off the event thread (is this open the interpreter's program?).
    case commandLineChecks
    /// Read leases taken on files others can write while they were hashed for an exec, and those refused
    /// (a writer existed: the exec was refused as `mutable`).
    case leasesTaken, leasesRefused
    /// Verdicts for files others can write, kept while a read lease proves nobody can change them (issue 14): how
    /// many are held now, how many events they answered without a hash, and how many a writer broke.
    case leasedVerdicts, leasedVerdictHits, leaseBreaks
    /// The background pass over the policy's large listed files (`ListedFilesPrehash`): how many it will hash, and
    /// how far it got.
    case listedFilesToPrehash, listedFilesPrehashed
    case ignoreMarksPlaced, ignoreMarksSinceFlush, ignoreMarkErrors, kernelCacheFlushes
    /// Flushes because a cached file's metadata changed (`FAN_ATTRIB`).
    case attributeFlushes
    case verityDecisions, execsSeen, execsAllowedByDaemon, execCountOverflows
    case eventsDropped, eventWriteErrors, eventLogReopens
    /// Overflow notices from the permission group (its queue is unlimited: should stay 0).
    case queueOverflows
    /// Requests dropped without an answer (a bug if ever non-zero): denied on the way out, see `PermissionRequest`.
    case requestsDroppedUnanswered
    /// Execs an execution profile refused (or would have: monitor and learn modes), and interpreter command lines read
    /// for profiles (issue 15). Per subject: `Statistics.profileDenials`.
    case profileDenials, profileCommandLineChecks
    /// Per-subject profile entries learned, and those dropped at the learning bound.
    case profileEntriesLearned, profileEntriesDropped

    /// How Prometheus sees it; nil for figures only `status` shows.
    public struct Exposition: Sendable {
        public var name: String
        public var help: String
        public var isGauge = false
        /// A label that puts several counters under one metric name (`decisions_total{decision="allow"}`).
        public var label: String? = nil
    }

    /// The name in `status` (`status --json` keys; the text form replaces `_` with spaces).
    public var statusName: String {
        switch self {
        case .allowed: "allowed"
        case .denied: "denied"
        case .wouldDeny: "would_deny"
        case .candidateWouldDeny: "candidate_would_deny"
        case .cacheHits: "cache_hits"
        case .cacheMisses: "cache_misses"
        case .hashesComputed: "hashes_computed"
        case .bytesHashed: "bytes_hashed"
        case .hashesInFlight: "hashes_in_flight"
        case .ownProcessEvents: "own_process_events"
        case .inertOpens: "inert_opens"
        case .deniedBySize: "denied_by_size"
        case .mutableDenials: "mutable_code_refused"
        case .commandLineChecks: "command_line_checks"
        case .leasesTaken: "write_leases_taken"
        case .leasesRefused: "write_leases_refused"
        case .leasedVerdicts: "leased_verdicts"
        case .leasedVerdictHits: "leased_verdict_hits"
        case .leaseBreaks: "lease_breaks"
        case .listedFilesToPrehash: "listed_files_to_prehash"
        case .listedFilesPrehashed: "listed_files_prehashed"
        case .prehashed: "prehashed"
        case .prehashDropped: "prehash_dropped"
        case .ignoreMarksPlaced: "ignore_marks_placed"
        // Files whose verdict the kernel holds, at most: the kernel drops the mark of an evicted inode silently.
        // Counting the marks from /proc/self/fdinfo would be exact, but the kernel holds the group's mark lock
        // while it prints them (0.4 s at 100k), and placing a mark waits for that lock.
        case .ignoreMarksSinceFlush: "kernel_cached_files_at_most"
        case .ignoreMarkErrors: "ignore_mark_errors"
        case .kernelCacheFlushes: "kernel_cache_flushes"
        case .attributeFlushes: "kernel_cache_flushes_for_attributes"
        case .verityDecisions: "verity_decisions"
        case .execsSeen: "execs_seen"
        case .execsAllowedByDaemon: "execs_allowed_by_daemon"
        case .execCountOverflows: "exec_count_overflows"
        case .eventsDropped: "events_dropped"
        case .eventWriteErrors: "event_write_errors"
        case .eventLogReopens: "event_log_reopens"
        case .queueOverflows: "queue_overflows"
        case .requestsDroppedUnanswered: "requests_dropped_unanswered"
        case .profileDenials: "profile_denials"
        case .profileCommandLineChecks: "profile_command_line_checks"
        case .profileEntriesLearned: "profile_entries_learned"
        case .profileEntriesDropped: "profile_entries_dropped"
        }
    }

    public var exposition: Exposition? {
        switch self {
        case .allowed: Exposition(name: "decisions_total", help: "Permission events answered by the daemon, by outcome.", label: "decision=\"allow\"")
        case .denied: Exposition(name: "decisions_total", help: "Permission events answered by the daemon, by outcome.", label: "decision=\"deny\"")
        case .wouldDeny: Exposition(name: "decisions_total", help: "Permission events answered by the daemon, by outcome.", label: "decision=\"would_deny\"")
        case .candidateWouldDeny: Exposition(name: "candidate_would_deny_total", help: "Allowed events the candidate policy (shadow evaluation) would have denied.")
        case .cacheHits: Exposition(name: "cache_hits_total", help: "Events answered from the userspace digest cache.")
        case .cacheMisses: Exposition(name: "cache_misses_total", help: "Events that needed a hash.")
        case .inertOpens: Exposition(name: "inert_opens_total", help: "Plain opens of data answered without hashing.")
        case .mutableDenials: Exposition(name: "mutable_code_total", help: "Scripts, libraries and mapped programs refused (or would-deny) because someone other than root can change them.")
        case .hashesComputed: Exposition(name: "hashes_total", help: "Files hashed.")
        case .leasedVerdicts: Exposition(name: "leased_verdicts", help: "Verdicts for files others can write, held while a read lease proves nobody changes them.", isGauge: true)
        case .leasedVerdictHits: Exposition(name: "leased_verdict_hits_total", help: "Exec events of files others can write answered from a leased verdict, without hashing.")
        case .leaseBreaks: Exposition(name: "lease_breaks_total", help: "Leased verdicts given up because someone opened the file for writing or truncated it.")
        case .bytesHashed: Exposition(name: "hashed_bytes_total", help: "Bytes hashed.")
        case .ignoreMarksPlaced: Exposition(name: "ignore_marks_total", help: "Kernel-side verdicts placed (ignore marks).")
        case .kernelCacheFlushes: Exposition(name: "kernel_cache_flushes_total", help: "Flushes of the kernel-side verdicts.")
        case .ignoreMarksSinceFlush: Exposition(name: "kernel_cached_files_at_most", help: "Kernel-side verdicts placed since the last flush (evicted inodes drop theirs).", isGauge: true)
        case .execsSeen: Exposition(name: "execs_total", help: "Execs on the marked filesystems (counted after they happened).")
        case .execsAllowedByDaemon: Exposition(name: "execs_allowed_by_daemon_total", help: "Exec permission events the daemon allowed (the rest were answered in the kernel).")
        case .verityDecisions: Exposition(name: "verity_decisions_total", help: "Events decided from the file's fs-verity digest, without reading it.")
        case .eventsDropped: Exposition(name: "events_dropped_total", help: "Event records dropped (queue full, log unwritable).")
        case .queueOverflows: Exposition(name: "queue_overflows_total", help: "Overflow notices from the permission group (events the kernel allowed unasked; should be 0).")
        case .requestsDroppedUnanswered: Exposition(name: "requests_dropped_unanswered_total", help: "Permission requests dropped without an answer and denied (a bug if non-zero).")
        case .profileEntriesLearned: Exposition(name: "profile_entries_learned", help: "Per-subject program entries learned for execution profiles.", isGauge: true)
        case .profileEntriesDropped: Exposition(name: "profile_entries_dropped_total", help: "Program entries not learned because the learning bound was reached.")
        default: nil
        }
    }
}

/// The counters and a latency histogram, updated from the decision threads without blocking them.
public final class Statistics: Sendable {
    /// One atomic per `Counter`, allocated once and never moved (atomics must stay where they were made).
    /// `nonisolated(unsafe)`: the pointer itself is immutable; every access to what it points to is atomic.
    nonisolated(unsafe) private let cells: UnsafeMutablePointer<Atomic<Int>>

    /// Four buckets per power of two of nanoseconds: about 19% resolution from 1 ns to 2^64.
    private let buckets = Mutex<[UInt64]>([UInt64](repeating: 0, count: 256))

    public init() {
        cells = .allocate(capacity: Counter.allCases.count)
        for i in 0..<Counter.allCases.count { (cells + i).initialize(to: Atomic(0)) }
    }

    deinit {
        cells.deinitialize(count: Counter.allCases.count)
        cells.deallocate()
    }

    @inline(__always)
    public func add(_ counter: Counter, _ amount: Int = 1) {
        cells[counter.rawValue].wrappingAdd(amount, ordering: .relaxed)
    }

    public func set(_ counter: Counter, _ value: Int) {
        cells[counter.rawValue].store(value, ordering: .relaxed)
    }

    public subscript(_ counter: Counter) -> Int {
        cells[counter.rawValue].load(ordering: .relaxed)
    }

    /// Profile denials (and would-denies) per subject, at most `subjectLimit` subjects (the rest under `other`).
    private let perSubject = Mutex<[String: Int]>([:])
    static let subjectLimit = 256

    public func addProfileDenial(subject: String) {
        add(.profileDenials)
        perSubject.withLock { m in
            let key = m[subject] != nil || m.count < Self.subjectLimit ? subject : "other"
            m[key, default: 0] += 1
        }
    }

    /// Subject → profile denials so far, by subject.
    public var profileDenials: [(subject: String, count: Int)] {
        perSubject.withLock { $0 }.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
    }

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
