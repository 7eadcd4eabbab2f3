import AppctlCore
import AppctlKernel
import Dispatch
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Where the responder hands event records: the real `EventLog`, or a collector in tests.
public protocol EventSink: Sendable {
    /// Never blocks: a record that cannot be queued is dropped and counted.
    func submit(_ record: EventRecord)
}

/// One decision worth recording (a deny, a would-deny, a learned file; allows when configured).
public struct EventRecord: Sendable {
    public var time: String
    public var outcome: Outcome
    public var reason: Reason
    public var path: String
    public var digest: SHA256Digest?
    public var size: Int64
    public var device: UInt64
    public var inode: UInt64
    /// The process (thread group) and the thread that asked: the permission group reports thread ids.
    public var pid: Int32
    public var tid: Int32 = 0
    public var process: ProcessSnapshot
    public var serial: UInt64?
    public var mode: Mode
    /// For `mutable` verdicts: who besides root could change the file ("uid 1000", "gid 50", "everyone",
    /// "the filesystem's server").
    public var writableBy: String? = nil
    /// For allows by digest: the layer whose entry allowed it (`base` or `overlay:apt`).
    public var allowedBy: String? = nil
    /// For verdicts of an execution profile: the subject whose profile decided (`service=web.service`).
    public var subject: String? = nil

    var jsonLine: String {
        "{\"time\":\(jsonString(time)),\"decision\":\(jsonString(outcome.rawValue)),\"reason\":\(jsonString(reason.rawValue)),"
            + "\"path\":\(jsonString(path)),\"sha256\":\(digest.map { jsonString($0.hex) } ?? "null"),\"size\":\(size),"
            + "\"dev\":\(device),\"ino\":\(inode),\"pid\":\(pid),\"tid\":\(tid),\"ppid\":\(process.ppid),\"uid\":\(process.uid),"
            + "\"exe\":\(jsonString(process.exe)),\"comm\":\(jsonString(process.comm)),"
            + "\"policy_serial\":\(serial.map(String.init) ?? "null"),\"mode\":\(jsonString(mode.rawValue))"
            + (writableBy.map { ",\"writable_by\":\(jsonString($0))" } ?? "")
            + (allowedBy.map { ",\"allowed_by\":\(jsonString($0))" } ?? "")
            + (subject.map { ",\"subject\":\(jsonString($0))" } ?? "") + "}\n"
    }

    var humanLine: String {
        // Paths and process names are the attacker's choice: escaped, so that a newline in a file name cannot
        // forge a line of its own.
        "appctl: \(outcome.rawValue.uppercased()) \(PathEscaping.escapeText(Array(path.utf8))) (\(reason.rawValue)\(subject.map { " for \($0)" } ?? ""), sha256 \(digest.map { String($0.hex.prefix(16)) } ?? "-")) pid \(pid) uid \(process.uid) comm \(PathEscaping.escapeText(Array(process.comm.utf8))) exe \(PathEscaping.escapeText(Array(process.exe.utf8)))\n"
    }
}

/// Writes event records as JSON lines from its own thread. `submit` never blocks: the queue is
/// bounded and a full queue drops (and counts) the record, so a slow, full or hung log file can
/// never hold up a decision. Denies also get a human-readable line on stderr, written by the
/// same thread (stderr may be a pipe nobody reads).
public final class EventLog: EventSink {
    public static let capacity = 4096
    private struct State {
        var queue: [EventRecord] = []
        var reopenRequested = false
        var stopping = false
    }
    private let state = Mutex(State())
    private let wakeup = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)
    private let path: String
    private let statistics: Statistics
    private let queued = Atomic<Int>(0)

    public init(path: String, statistics: Statistics) {
        self.path = path
        self.statistics = statistics
    }

    public var queuedCount: Int { queued.load(ordering: .relaxed) }

    public func start() {
        startThread(name: "appctl-log") { [self] in writerLoop() }
    }

    public func submit(_ record: EventRecord) {
        let accepted = state.withLock { s -> Bool in
            guard s.queue.count < Self.capacity, !s.stopping else { return false }
            s.queue.append(record)
            return true
        }
        if accepted {
            queued.wrappingAdd(1, ordering: .relaxed)
            wakeup.signal()
        } else {
            statistics.add(.eventsDropped, 1)
        }
    }

    /// Log rotation: the next write goes to a freshly opened file at the same path.
    public func reopen() {
        state.withLock { $0.reopenRequested = true }
        wakeup.signal()
    }

    /// Writes what is queued and stops the thread (waits at most `timeout` seconds).
    public func stop(timeout: Double = 2) {
        state.withLock { $0.stopping = true }
        wakeup.signal()
        _ = finished.wait(timeout: .now() + timeout)
    }

    private func writerLoop() {
        var file: FileDescriptor? = nil
        while true {
            _ = wakeup.wait(timeout: .now() + 1)
            let (batch, reopen, stopping) = state.withLock { s -> ([EventRecord], Bool, Bool) in
                let b = s.queue
                s.queue.removeAll(keepingCapacity: true)
                let r = s.reopenRequested
                s.reopenRequested = false
                return (b, r, s.stopping)
            }
            if reopen {
                file?.close()
                file = nil
                // Acknowledged, so that log rotation (and tests) can wait for it instead of sleeping.
                statistics.add(.eventLogReopens)
            }
            if !batch.isEmpty {
                if file == nil { file = openLog() }
                var text = ""
                var human = ""
                for record in batch {
                    text += record.jsonLine
                    if record.outcome == .deny || record.outcome == .wouldDeny { human += record.humanLine }
                }
                if let f = file {
                    do { try f.writeAll(Array(text.utf8)) } catch {
                        // Full disk, I/O error: count the loss and carry on; the decisions are already made.
                        statistics.add(.eventWriteErrors)
                        statistics.add(.eventsDropped, batch.count)
                    }
                } else {
                    statistics.add(.eventsDropped, batch.count)
                }
                if !human.isEmpty { try? FileDescriptor(rawValue: 2).writeAll(Array(human.utf8)) }
                queued.wrappingAdd(-batch.count, ordering: .relaxed)
            }
            if stopping {
                file?.close()
                finished.signal()
                return
            }
        }
    }

    private func openLog() -> FileDescriptor? {
        createParentDirectory(of: path, mode: 0o750)
        do {
            return try FileDescriptor.open(path, [.writeOnly, .append, .create, .nonBlocking], permissions: 0o640)
        } catch {
            statistics.add(.eventWriteErrors)
            return nil
        }
    }
}
