#if canImport(Glibc)
import Glibc
#endif

/// A POSIX error number with its Swift name and `strerror` text.
public struct Errno: RawRepresentable, Error, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    /// The calling thread's `errno`.
    public static var current: Errno { Errno(rawValue: errno) }

    /// `EINTR`
    public static let interrupted = Errno(rawValue: EINTR)
    /// `ENOENT`
    public static let noSuchFile = Errno(rawValue: ENOENT)
    /// `EACCES`
    public static let permissionDenied = Errno(rawValue: EACCES)
    /// `EAGAIN`
    public static let wouldBlock = Errno(rawValue: EAGAIN)
    /// `EEXIST`
    public static let fileExists = Errno(rawValue: EEXIST)
    /// `ELOOP` — what `O_NOFOLLOW` answers on a symlink.
    public static let tooManySymlinks = Errno(rawValue: ELOOP)
    /// `ENOSPC`
    public static let noSpace = Errno(rawValue: ENOSPC)
    /// `EPERM`
    public static let notPermitted = Errno(rawValue: EPERM)
    /// `ETIMEDOUT`
    public static let timedOut = Errno(rawValue: ETIMEDOUT)
    /// `EINVAL`
    public static let invalidArgument = Errno(rawValue: EINVAL)
    /// `ENOSYS` — the kernel lacks the call.
    public static let noSuchCall = Errno(rawValue: ENOSYS)

    public var description: String { String(cString: strerror(rawValue)) }
}

/// Runs a syscall, retrying while it fails with `EINTR`, and turns `-1` into a thrown `Errno`.
/// Every syscall in appctl goes through here (except `close`, which must never be retried).
@inline(__always)
public func retryingOnInterrupt<T: FixedWidthInteger>(_ call: () -> T) throws(Errno) -> T {
    while true {
        let result = call()
        if result != -1 { return result }
        let error = Errno.current
        if error != .interrupted { throw error }
    }
}
