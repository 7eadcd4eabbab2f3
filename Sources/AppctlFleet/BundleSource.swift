import AppctlKernel
import _AppctlHTTP
#if canImport(Glibc)
import Glibc
#endif

/// Where bundles come from: a web server, CDN or object store over HTTP(S), or a directory (a mount, an rsync
/// target, what configuration management copies). The channel is not trusted: everything it returns is checked
/// against the signed timestamp before it is used. Every fetch is bounded in size and time.
public protocol BundleSource: Sendable {
    /// A one-line name for messages.
    var name: String { get }
    /// Fetches `path` (relative to the bundle) into `into`, at most `maxBytes`; `conditional` carries the
    /// validators of the copy the host has, and `.notModified` means it is still current.
    func fetch(_ path: String, into: FileDescriptor, maxBytes: Int64, conditional: Validators?) throws(SyncError) -> FetchOutcome
}

/// HTTP validators of a copy the host has (sent as If-None-Match / If-Modified-Since).
public struct Validators: Sendable, Equatable {
    public var etag: String?
    public var lastModified: String?
    public init(etag: String?, lastModified: String?) { self.etag = etag; self.lastModified = lastModified }
}

public enum FetchOutcome: Sendable, Equatable {
    case fetched(bytes: Int64, validators: Validators?)
    case notModified
}

/// Picks the source for `--from`: `http://` or `https://` is fetched with libcurl, anything else is a directory.
public func bundleSource(_ from: String, limits: FetchLimits = FetchLimits()) -> any BundleSource {
    from.hasPrefix("http://") || from.hasPrefix("https://") ? HTTPSource(base: from, limits: limits) : DirectorySource(directory: from)
}

public struct FetchLimits: Sendable {
    public var connectSeconds = 10
    /// A transfer that moves nothing for this long is cut off (a server that stops answering mid-transfer).
    public var stallSeconds = 30
    public var totalSeconds = 600
    public init() {}
}

public struct HTTPSource: BundleSource {
    public let base: String
    public let limits: FetchLimits
    public var name: String { base }

    public func fetch(_ path: String, into fd: FileDescriptor, maxBytes: Int64, conditional: Validators?) throws(SyncError) -> FetchOutcome {
        let url = (base.hasSuffix("/") ? base : base + "/") + path
        var result = appctl_http_result()
        appctl_http_get(url, fd.rawValue, maxBytes, conditional?.etag, conditional?.lastModified,
                        limits.connectSeconds, limits.stallSeconds, limits.totalSeconds, &result)
        let error = withUnsafeBytes(of: &result.error) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        guard result.curl_code == 0 else { throw SyncError(.fetch, "\(url): \(error)") }
        switch result.http_status {
        case 200:
            let etag = withUnsafeBytes(of: &result.etag) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            let modified = withUnsafeBytes(of: &result.last_modified) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            let validators = etag.isEmpty && modified.isEmpty ? nil : Validators(etag: etag.isEmpty ? nil : etag, lastModified: modified.isEmpty ? nil : modified)
            return .fetched(bytes: result.bytes, validators: validators)
        case 304 where conditional != nil:
            return .notModified
        default:
            throw SyncError(.fetch, "\(url): HTTP status \(result.http_status)")
        }
    }
}

public struct DirectorySource: BundleSource {
    public let directory: String
    public var name: String { directory }

    public func fetch(_ path: String, into fd: FileDescriptor, maxBytes: Int64, conditional: Validators?) throws(SyncError) -> FetchOutcome {
        let full = directory + "/" + path
        let source: FileDescriptor
        do { source = try FileDescriptor.open(full, [.readOnly, .nonBlocking]) } catch {
            throw SyncError(.fetch, "\(full): cannot open: \(error)")
        }
        defer { source.close() }
        do {
            let st = try source.status()
            guard st.isRegularFile else { throw SyncError(.fetch, "\(full): not a regular file") }
            guard Int64(st.st_size) <= maxBytes else { throw SyncError(.fetch, "\(full): \(st.st_size) bytes, more than the \(maxBytes) allowed") }
            // The directory's own validators: mtime and size, as a web server's Last-Modified and ETag would be.
            let stamp = Validators(etag: "\(st.st_size)-\(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec)", lastModified: nil)
            if let conditional, conditional == stamp { return .notModified }
            var buffer = [UInt8](repeating: 0, count: 1 << 20)
            var copied: Int64 = 0
            while true {
                let n = try buffer.withUnsafeMutableBytes { try source.read(into: $0) }
                if n == 0 { break }
                copied += Int64(n)
                guard copied <= maxBytes else { throw SyncError(.fetch, "\(full): grew past the \(maxBytes) bytes allowed while it was read") }
                try fd.writeAll(Array(buffer[0..<n]))
            }
            return .fetched(bytes: copied, validators: stamp)
        } catch let error as SyncError {
            throw error
        } catch {
            throw SyncError(.fetch, "\(full): cannot read: \(error)")
        }
    }
}
