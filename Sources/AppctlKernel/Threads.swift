import _AppctlShims
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The thread ids of the threads `startThread` runs, while they run. The permission group reports thread ids
/// (`FAN_REPORT_TID`), and the daemon must recognise its own threads' opens (it never waits on itself). An id is
/// removed when its thread ends: the kernel may hand it to another process's thread after that.
private let runningThreads = Mutex<Set<Int32>>([])

/// Whether `tid` is one of this process's threads started by `startThread` (the main thread is the process id).
public func isOwnThread(_ tid: Int32) -> Bool { runningThreads.withLock { $0.contains(tid) } }

/// The calling thread's id (`gettid`).
public func currentThreadID() -> Int32 { Int32(appctl_gettid()) }

/// An eventfd used to wake a thread blocked in `poll` (shutdown, new work).
public struct EventNotifier: Sendable {
    public let descriptor: FileDescriptor

    public init() throws(Errno) {
        let fd = try retryingOnInterrupt { eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK)) }
        descriptor = FileDescriptor(rawValue: fd)
    }

    public func signal() {
        var one: UInt64 = 1
        _ = write(descriptor.rawValue, &one, 8)
    }
}

/// `poll(2)` through the wrapper. Returns the `revents` of each descriptor, in order.
public func pollDescriptors(_ entries: [(FileDescriptor, Int16)], timeoutMilliseconds: Int32) throws(Errno) -> [Int16] {
    var fds = entries.map { pollfd(fd: $0.0.rawValue, events: $0.1, revents: 0) }
    _ = try retryingOnInterrupt { poll(&fds, nfds_t(fds.count), timeoutMilliseconds) }
    return fds.map(\.revents)
}

/// Starts a dedicated OS thread (blocking kernel loops must not run on Swift's cooperative pool).
public func startThread(name: String, _ body: @escaping @Sendable () -> Void) {
    let started = tryStartThread(name: name, body)
    precondition(started, "pthread_create failed")
}

/// The same, for threads the daemon can do without: false when the thread could not be created.
public func tryStartThread(name: String, _ body: @escaping @Sendable () -> Void) -> Bool {
    final class Box: @unchecked Sendable {   // handed across pthread_create exactly once
        let body: @Sendable () -> Void
        let name: String
        init(_ body: @escaping @Sendable () -> Void, _ name: String) { self.body = body; self.name = name }
    }
    let box = Unmanaged.passRetained(Box(body, name)).toOpaque()
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, { raw in
        let box = Unmanaged<AnyObject>.fromOpaque(raw!).takeRetainedValue() as! Box
        appctl_set_thread_name(String(box.name.prefix(15)))
        let tid = currentThreadID()
        runningThreads.withLock { _ = $0.insert(tid) }
        box.body()
        runningThreads.withLock { _ = $0.remove(tid) }
        return nil
    }, box)
    guard rc == 0 else {
        Unmanaged<AnyObject>.fromOpaque(box).release()
        return false
    }
    pthread_detach(thread)
    return true
}

/// Sets the calling thread's nice value (-20 to 19; on Linux, PRIO_PROCESS with a thread id applies to that thread
/// only). Negative values need CAP_SYS_NICE and are ignored without it: the event thread raises itself, hash
/// workers lower themselves so that a long hash never takes the CPU from the thread that answers cache hits.
public func setThreadNice(_ nice: Int32) {
    appctl_set_thread_nice(nice)
}
