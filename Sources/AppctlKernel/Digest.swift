import _AppctlShims
#if canImport(Glibc)
import Glibc
#endif

/// A SHA-256 digest held as four big-endian words, so that `<` is byte order and equality
/// is four integer compares (the daemon's lookups do millions of these).
public struct SHA256Digest: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var w0: UInt64, w1: UInt64, w2: UInt64, w3: UInt64

    public init(w0: UInt64, w1: UInt64, w2: UInt64, w3: UInt64) {
        self.w0 = w0; self.w1 = w1; self.w2 = w2; self.w3 = w3
    }

    /// From 32 raw bytes.
    public init(bytes: UnsafeRawBufferPointer) {
        precondition(bytes.count == 32)
        func word(_ i: Int) -> UInt64 { UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self)) }
        self.init(w0: word(0), w1: word(1), w2: word(2), w3: word(3))
    }

    public init(bytes: [UInt8]) {
        self = bytes.withUnsafeBytes { SHA256Digest(bytes: $0) }
    }

    /// Parses 64 lowercase hex digits; nil for anything else (uppercase is not canonical).
    public init?(hex: some Collection<UInt8>) {
        guard hex.count == 64 else { return nil }
        var words: [UInt64] = [0, 0, 0, 0]
        var i = 0
        for c in hex {
            guard let v = Hex.value(c) else { return nil }
            words[i >> 4] = (words[i >> 4] << 4) | UInt64(v)
            i += 1
        }
        self.init(w0: words[0], w1: words[1], w2: words[2], w3: words[3])
    }

    public init?(hex: String) {
        self.init(hex: Array(hex.utf8))
    }

    public var bytes: [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(32)
        for w in [w0, w1, w2, w3] {
            for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: w >> UInt64(shift))) }
        }
        return out
    }

    public var hex: String { hexString(bytes) }
    public var description: String { hex }

    public static func < (a: SHA256Digest, b: SHA256Digest) -> Bool {
        if a.w0 != b.w0 { return a.w0 < b.w0 }
        if a.w1 != b.w1 { return a.w1 < b.w1 }
        if a.w2 != b.w2 { return a.w2 < b.w2 }
        return a.w3 < b.w3
    }

    /// SHA-256 of an in-memory buffer.
    public static func of(_ bytes: some Collection<UInt8>) -> SHA256Digest {
        let hasher = DigestContext(withMD5: false)
        Array(bytes).withUnsafeBytes { hasher.update($0) }
        return hasher.finish().sha256
    }
}

/// SHA-256 (and optionally MD5, for dpkg's records) over a stream of bytes, through OpenSSL EVP.
/// One context per thread; `reset` makes it reusable so a scan allocates nothing per file.
public final class DigestContext {
    private let context: OpaquePointer
    private var withMD5: Bool

    public init(withMD5: Bool) {
        guard let context = appctl_digest_new(withMD5 ? 1 : 0) else {
            fatalError("OpenSSL could not create a digest context (out of memory?)")
        }
        self.context = context
        self.withMD5 = withMD5
    }

    deinit { appctl_digest_free(context) }

    public func reset(withMD5: Bool) {
        self.withMD5 = withMD5
        guard appctl_digest_reset(context, withMD5 ? 1 : 0) == 0 else { fatalError("OpenSSL digest init failed") }
    }

    public func update(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        guard appctl_digest_update(context, bytes.baseAddress, bytes.count) == 0 else { fatalError("OpenSSL digest update failed") }
    }

    /// Finishes; MD5 is nil unless the context was set up with it.
    public func finish() -> (sha256: SHA256Digest, md5: [UInt8]?) {
        var sha = [UInt8](repeating: 0, count: 32)
        var md5 = [UInt8](repeating: 0, count: 16)
        guard appctl_digest_final(context, &sha, &md5) == 0 else { fatalError("OpenSSL digest final failed") }
        return (SHA256Digest(bytes: sha), withMD5 ? md5 : nil)
    }
}

/// Hashes open files with `pread` into one reusable, page-aligned buffer. Never re-opens a
/// path: the daemon hands it the very descriptor the kernel gave it for the event.
public final class FileHasher {
    /// 1 MiB reads: large enough that syscall cost vanishes against SHA-NI's ~1.9 GB/s.
    public static let bufferSize = 1 << 20
    private let buffer: UnsafeMutableRawBufferPointer
    private let context: DigestContext

    public init() {
        buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.bufferSize, alignment: 4096)
        context = DigestContext(withMD5: false)
    }

    deinit { buffer.deallocate() }

    public struct Result: Sendable {
        public var sha256: SHA256Digest
        public var md5: [UInt8]?
        /// Bytes actually read; differs from the size seen by `fstat` when the file changed meanwhile.
        public var bytesRead: Int64
    }

    /// Hashes the whole file from offset 0 to its end, as it is now.
    public func hash(_ fd: FileDescriptor, withMD5: Bool = false, sizeHint: Int64 = 0) throws(Errno) -> Result {
        context.reset(withMD5: withMD5)
        if sizeHint > Int64(Self.bufferSize) {
            _ = posix_fadvise(fd.rawValue, 0, 0, Int32(POSIX_FADV_SEQUENTIAL))
        }
        var offset: Int64 = 0
        while true {
            let n = try fd.read(into: buffer, at: offset)
            if n == 0 { break }
            context.update(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            offset += Int64(n)
        }
        let (sha, md5) = context.finish()
        return Result(sha256: sha, md5: md5, bytesRead: offset)
    }

    /// Reads the first bytes of a file (for content classification) into the shared buffer.
    public func head(_ fd: FileDescriptor, count: Int) throws(Errno) -> [UInt8] {
        let n = try fd.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<min(count, Self.bufferSize)]), at: 0)
        return Array(buffer[0..<n])
    }
}
