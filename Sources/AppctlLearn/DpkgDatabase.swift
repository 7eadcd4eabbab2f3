import AppctlKernel
#if canImport(Glibc)
import Glibc
#endif

/// What dpkg recorded about installed files: their MD5 (from `info/*.md5sums`) and owning
/// package, with diversions applied and the usr-merge aliases (`/bin` → `/usr/bin`) resolved,
/// so that a file found at `/usr/bin/ls` is matched with dpkg's `bin/ls`.
public struct DpkgDatabase: Sendable {
    public struct Record: Sendable {
        public var md5: [UInt8]
        public var package: String
    }

    /// Path (absolute) → every package record for it (normally one).
    public private(set) var records: [String: [Record]] = [:]
    public private(set) var packageCount = 0

    public init() {}

    /// A package's path as it is on this machine: on a usr-merged system `/bin/x` is `/usr/bin/x`.
    public static func canonicalizer(systemRoot: String = "/") -> @Sendable (String) -> String {
        var mergedTopDirs: [String: String] = [:]
        for top in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
            var buf = [CChar](repeating: 0, count: 256)
            let n = readlink(systemRoot + (systemRoot.hasSuffix("/") ? "" : "/") + top, &buf, 255)
            if n > 0 {
                let target = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
                if target == "usr/\(top)" || target == "/usr/\(top)" { mergedTopDirs[top] = "/usr/\(top)" }
            }
        }
        let merged = mergedTopDirs
        return { path in
            guard path.count > 1, let slash = path.dropFirst().firstIndex(of: "/") else { return path }
            let top = String(path[path.index(after: path.startIndex)..<slash])
            if let m = merged[top] { return m + path[slash...] }
            return path
        }
    }

    /// - Parameters:
    ///   - adminDir: dpkg's admin directory (`/var/lib/dpkg`).
    ///   - systemRoot: where to look for usr-merge symlinks (`/`).
    public init(adminDir: String, systemRoot: String = "/") throws(Errno) {
        let infoDir = adminDir + "/info"
        guard let dir = opendir(infoDir) else { throw Errno.current }
        defer { closedir(dir) }
        let canonical = Self.canonicalizer(systemRoot: systemRoot)
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: &entry.pointee.d_name) { String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self)) }
            guard name.hasSuffix(".md5sums") else { continue }
            var package = String(name.dropLast(8))
            if let colon = package.firstIndex(of: ":") { package = String(package[..<colon]) }  // libc6:amd64 → libc6
            guard let text = try? readSmallFile(infoDir + "/" + name, limit: 64 << 20) else { continue }
            packageCount += 1
            for line in text.split(separator: UInt8(ascii: "\n")) {
                // "<32 hex>  <path without leading slash>"
                guard line.count > 34, line[line.startIndex + 32] == UInt8(ascii: " ") else { continue }
                let hex = line[line.startIndex..<line.startIndex + 32]
                guard let md5 = decodeHex16(hex) else { continue }
                let rel = line[(line.startIndex + 34)...]
                let path = canonical("/" + String(decoding: rel, as: UTF8.self))
                records[path, default: []].append(Record(md5: md5, package: package))
            }
        }
        try? applyDiversions(adminDir + "/diversions", canonical: canonical)
    }

    /// `diversions` holds triplets of lines: original path, diverted-to path, diverting package
    /// (`:` for a local diversion). The original package's file now lives at the diverted-to path.
    private mutating func applyDiversions(_ path: String, canonical: (String) -> String) throws {
        let text = try readSmallFile(path, limit: 16 << 20)
        let lines = text.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
        var i = 0
        while i + 2 < lines.count {
            let from = canonical(lines[i]), to = canonical(lines[i + 1]), diverter = lines[i + 2]
            i += 3
            guard let owners = records[from] else { continue }
            let moved = owners.filter { $0.package != diverter }
            let kept = owners.filter { $0.package == diverter }
            guard !moved.isEmpty else { continue }
            records[to, default: []].append(contentsOf: moved)
            records[from] = kept.isEmpty ? nil : kept
        }
    }

    public func lookup(_ path: String) -> [Record]? { records[path] }
}

/// dpkg's md5sums lines: 32 hex digits, either case.
private func decodeHex16(_ hex: some Collection<UInt8>) -> [UInt8]? {
    Hex.decode(hex, allowingUppercase: true).flatMap { $0.count == 16 ? $0 : nil }
}
