import AppctlCore
import AppctlKernel
import Dispatch
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// One decision worth recording (a deny, a would-deny, a learned file; allows when configured).
public struct EventRecord: Sendable {
    public var time: String
    public var decision: String          // "deny", "would-deny", "learned", "allow"
    public var reason: Reason
    public var path: String
    public var digest: SHA256Digest?
    public var size: Int64
    public var device: UInt64
    public var inode: UInt64
    public var pid: Int32
    public var process: ProcessInfo
    public var serial: UInt64?
    public var mode: Mode

    var jsonLine: String {
        "{\"time\":\(jsonString(time)),\"decision\":\(jsonString(decision)),\"reason\":\(jsonString(reason.rawValue)),"
            + "\"path\":\(jsonString(path)),\"sha256\":\(digest.map { jsonString($0.hex) } ?? "null"),\"size\":\(size),"
            + "\"dev\":\(device),\"ino\":\(inode),\"pid\":\(pid),\"ppid\":\(process.ppid),\"uid\":\(process.uid),"
            + "\"exe\":\(jsonString(process.exe)),\"comm\":\(jsonString(process.comm)),"
            + "\"policy_serial\":\(serial.map(String.init) ?? "null"),\"mode\":\(jsonString(mode.rawValue))}\n"
    }

    var humanLine: String {
        "appctl: \(decision.uppercased()) \(path) (\(reason.rawValue), sha256 \(digest.map { String($0.hex.prefix(16)) } ?? "-")) pid \(pid) uid \(process.uid) comm \(process.comm) exe \(process.exe)\n"
    }
}

/// Writes event records as JSON lines from its own thread. `submit` never blocks: the queue is
/// bounded and a full queue drops (and counts) the record, so a slow, full or hung log file can
/// never hold up a decision. Denies also get a human-readable line on stderr, written by the
/// same thread (stderr may be a pipe nobody reads).
public final class EventLog: Sendable {
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
            statistics.eventsDropped.wrappingAdd(1, ordering: .relaxed)
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
            if reopen, let f = file { f.close(); file = nil }
            if !batch.isEmpty {
                if file == nil { file = openLog() }
                var text = ""
                var human = ""
                for record in batch {
                    text += record.jsonLine
                    if record.decision == "deny" || record.decision == "would-deny" { human += record.humanLine }
                }
                if let f = file {
                    do { try f.writeAll(Array(text.utf8)) } catch {
                        // Full disk, I/O error: count the loss and carry on; the decisions are already made.
                        statistics.eventWriteErrors.wrappingAdd(1, ordering: .relaxed)
                        statistics.eventsDropped.wrappingAdd(batch.count, ordering: .relaxed)
                    }
                } else {
                    statistics.eventsDropped.wrappingAdd(batch.count, ordering: .relaxed)
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
        if let slash = path.lastIndex(of: "/"), slash != path.startIndex {
            mkdir(String(path[..<slash]), 0o750)
        }
        do {
            return try FileDescriptor.open(path, [.writeOnly, .append, .create, .nonBlocking], permissions: 0o640)
        } catch {
            statistics.eventWriteErrors.wrappingAdd(1, ordering: .relaxed)
            return nil
        }
    }
}
