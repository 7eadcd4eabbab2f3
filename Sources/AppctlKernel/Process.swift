import _AppctlShims
#if canImport(Glibc)
import Glibc
#endif

/// Signals delivered through a `signalfd`, so that no handler runs at an arbitrary point of a
/// decision. Create it on the main thread before starting any other thread: threads inherit
/// the blocked mask, and only this descriptor sees the signals.
public struct SignalReceiver: Sendable {
    public let descriptor: FileDescriptor

    public init(_ signals: [Int32]) throws(Errno) {
        var set = sigset_t()
        guard signals.withUnsafeBufferPointer({ appctl_block_signals($0.baseAddress, Int32($0.count), &set) }) == 0 else {
            throw Errno.current
        }
        let fd = try retryingOnInterrupt { signalfd(-1, &set, Int32(SFD_CLOEXEC | SFD_NONBLOCK)) }
        descriptor = FileDescriptor(rawValue: fd)
    }

    /// The next pending signal, or nil.
    public func next() -> Int32? {
        var info = signalfd_siginfo()
        let n = read(descriptor.rawValue, &info, MemoryLayout<signalfd_siginfo>.size)
        return n == MemoryLayout<signalfd_siginfo>.size ? Int32(info.ssi_signo) : nil
    }
}

/// A listening Unix stream socket.
public struct UnixListener: Sendable {
    public let descriptor: FileDescriptor
    public let path: String

    /// Binds `path` (a stale socket file is replaced) with the given mode.
    public init(path: String, mode: mode_t) throws(Errno) {
        let fd = try retryingOnInterrupt { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        var address = try unixAddress(path)
        if let st = try? linkStatus(path), (st.st_mode & S_IFMT) == S_IFSOCK { unlink(path) }
        do throws(Errno) {
            _ = try retryingOnInterrupt {
                withUnsafePointer(to: &address) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
                }
            }
            _ = try retryingOnInterrupt { chmod(path, mode) }
            _ = try retryingOnInterrupt { listen(fd, 16) }
        } catch {
            Glibc.close(fd)
            throw error
        }
        descriptor = FileDescriptor(rawValue: fd)
        self.path = path
    }

    /// Accepts one connection and reports the peer's uid (`SO_PEERCRED`: the credentials at connect time).
    public func accept() throws(Errno) -> (FileDescriptor, peerUID: Int) {
        // accept4 needs _GNU_SOURCE; the daemon never execs, so setting FD_CLOEXEC right after is enough.
        let fd = try retryingOnInterrupt { Glibc.accept(descriptor.rawValue, nil, nil) }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        return (FileDescriptor(rawValue: fd), appctl_peer_uid(fd))
    }
}

/// Connects to a Unix stream socket. With a timeout, connecting, sending and receiving each give up after it
/// (`SO_SNDTIMEO` also bounds a connect to a listener whose backlog is full; `EAGAIN` then says it timed out).
public func connectUnix(_ path: String, timeoutSeconds: Int? = nil) throws(Errno) -> FileDescriptor {
    let fd = try retryingOnInterrupt { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
    var address = try unixAddress(path)
    if let timeoutSeconds {
        var limit = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
    }
    do throws(Errno) {
        _ = try retryingOnInterrupt {
            withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
        }
    } catch {
        Glibc.close(fd)
        throw error
    }
    return FileDescriptor(rawValue: fd)
}

private func unixAddress(_ path: String) throws(Errno) -> sockaddr_un {
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { throw Errno(rawValue: ENAMETOOLONG) }
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        raw.copyBytes(from: bytes)
        raw[bytes.count] = 0
    }
    return address
}

/// Tells systemd about the service state (`Type=notify`) through `$NOTIFY_SOCKET`. The socket is
/// opened at construction, so that later messages need no `socket(2)` (forbidden once confined).
/// Does nothing when not started by systemd.
public final class ServiceNotifier: Sendable {
    private let fd: Int32
    private let address: [UInt8]

    public init() {
        guard let socketPath = getenv("NOTIFY_SOCKET").map({ String(cString: $0) }), !socketPath.isEmpty,
              socketPath.utf8.count < 108 else {
            fd = -1; address = []; return
        }
        var bytes = Array(socketPath.utf8)
        if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 }   // abstract namespace
        address = bytes
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    }

    public func notify(_ state: String) {
        guard fd >= 0 else { return }
        var sa = sockaddr_un()
        sa.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &sa.sun_path) { $0.copyBytes(from: address) }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + address.count)
        let message = Array(state.utf8)
        _ = withUnsafePointer(to: &sa) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, message, message.count, Int32(MSG_NOSIGNAL), $0, length) }
        }
    }
}

/// `fnmatch(3)` for hostname globs in policy scopes.
public func globMatches(_ pattern: String, _ text: String) -> Bool {
    fnmatch(pattern, text, 0) == 0
}






/// Makes allocations of 128 KiB and more (the 1 MiB read buffers, the policy reader's buffer, a policy's
/// digest array) come straight from `mmap` and go back to the kernel when freed. By default glibc raises
/// that threshold after the first such free, and from then on those buffers live in the heap and stay
/// resident for the daemon's whole life (measured: heap 1.4 MiB → 0.3 MiB at ready). Setting it also
/// turns off glibc's dynamic adjustment of the trim threshold (mallopt(3), M_MMAP_THRESHOLD).
public func keepLargeAllocationsOutOfTheHeap() {
    _ = mallopt(M_MMAP_THRESHOLD, 128 * 1024)
}

/// Gives free heap pages back to the kernel (`malloc_trim(0)`): after start-up and after each policy
/// load, whose temporary allocations would otherwise stay resident.
public func releaseFreeHeapMemory() {
    _ = malloc_trim(0)
}
