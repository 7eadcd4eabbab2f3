import AppctlCore
import AppctlKernel
import AppctlPackages
import CArchive
#if canImport(Glibc)
import Glibc
#endif

/// Reads a `.deb`'s members as dpkg will install them: `dpkg-deb --fsys-tarfile` and `--ctrl-tarfile` (Debian's own
/// tool decompresses whatever the package uses) stream tar archives, which libarchive reads. Every regular file
/// is hashed while it streams; the kind comes from its first bytes and mode, as `learn` decides it.
struct LibarchiveDebHasher: DebContentHasher {
    static let dpkgDeb = "/usr/bin/dpkg-deb"
    /// Enough of a file's start for `ContentClassifier` (the ELF header and its program headers).
    static let headKept = 64 * 1024
    /// `AE_IFREG`, which libarchive defines as `S_IFREG` (a macro that does not import).
    static let regularFile: mode_t = 0o100000

    func executableFiles(ofDeb deb: AptArchive.VerifiedDeb, package: String, architecture: String) throws(ChainFailure) -> [OverlayFile] {
        var files = try members(of: deb, stream: "--fsys-tarfile") { name in
            // "./usr/bin/jq" → "/usr/bin/jq"
            var p = Substring(name)
            if p.hasPrefix("./") { p = p.dropFirst() } else if !p.hasPrefix("/") { p = "/" + p }
            return String(p)
        }
        files += try members(of: deb, stream: "--ctrl-tarfile", onlyExecutable: true) { name in
            let script = name.hasPrefix("./") ? String(name.dropFirst(2)) : name
            return "/var/lib/dpkg/info/\(package).\(script)"
        }
        return files
    }

    /// dpkg-deb reads the very file that was hashed: the verified descriptor is its standard input, named as
    /// /proc/self/fd/0 (a new open of the same inode, never a lookup of the path again).
    private func members(of verified: AptArchive.VerifiedDeb, stream: String, onlyExecutable: Bool = false,
                         installedPath: (String) -> String) throws(ChainFailure) -> [OverlayFile] {
        let deb = verified.path
        let child: ChildProcess
        do { child = try ChildProcess([Self.dpkgDeb, stream, "/proc/self/fd/0"], input: verified.file) } catch {
            throw ChainFailure(deb, "cannot run dpkg-deb: \(error)")
        }
        guard let archive = archive_read_new() else { throw ChainFailure(deb, "libarchive: out of memory") }
        defer { archive_read_free(archive) }
        archive_read_support_format_tar(archive)
        guard archive_read_open_fd(archive, child.output.rawValue, 1 << 16) == ARCHIVE_OK else {
            throw ChainFailure(deb, "cannot read dpkg-deb \(stream): \(String(cString: archive_error_string(archive)))")
        }
        var files: [OverlayFile] = []
        var entry: OpaquePointer?
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buffer.deallocate() }
        let digest = DigestContext(withMD5: false)
        while true {
            let rc = archive_read_next_header(archive, &entry)
            if rc == ARCHIVE_EOF { break }
            guard rc == ARCHIVE_OK || rc == ARCHIVE_WARN, let entry else {
                throw ChainFailure(deb, "\(stream): \(String(cString: archive_error_string(archive)))")
            }
            // Hard links repeat a regular file already read (same content, same digest); directories, symlinks
            // and devices have no content to run.
            guard archive_entry_filetype(entry) == Self.regularFile, archive_entry_hardlink(entry) == nil,
                  let name = archive_entry_pathname(entry) else { continue }
            let mode = archive_entry_perm(entry)
            digest.reset(withMD5: false)
            var head: [UInt8] = []
            var size: UInt64 = 0
            while true {
                let n = archive_read_data(archive, buffer.baseAddress, buffer.count)
                if n == 0 { break }
                guard n > 0 else { throw ChainFailure(deb, "\(stream): \(String(cString: archive_error_string(archive)))") }
                let chunk = UnsafeRawBufferPointer(rebasing: buffer[0..<n])
                digest.update(chunk)
                if head.count < Self.headKept { head += chunk.prefix(Self.headKept - head.count) }
                size += UInt64(n)
            }
            let executableBit = mode & 0o111 != 0
            if onlyExecutable && !executableBit && ContentClassifier.sniff(head) != .shebang { continue }
            let kept = head
            guard let kind = ContentClassifier.classify(head: Array(head.prefix(ContentClassifier.headerLength)), executableBit: executableBit,
                                                        readAt: { offset, count in
                                                            guard offset >= 0, Int(offset) < kept.count else { return [] }
                                                            return Array(kept[Int(offset)..<min(kept.count, Int(offset) + count)])
                                                        }) else { continue }
            files.append(OverlayFile(digest: digest.finish().sha256, size: size, kind: kind,
                                     escapedPath: PathEscaping.escapeToken(Array(installedPath(String(cString: name)).utf8))))
        }
        // Drain what libarchive did not need (tar's end padding), then make sure dpkg-deb itself succeeded: a
        // stream cut short by a corrupt package must not pass for a short package.
        while (try? child.output.read(into: buffer)) ?? 0 > 0 {}
        let status = (try? child.wait()) ?? -1
        guard status == 0 else { throw ChainFailure(deb, child.failureReason) }
        return files
    }
}
