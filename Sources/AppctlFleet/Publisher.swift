import AppctlCore
import AppctlKernel
#if canImport(Glibc)
import Glibc
#endif

/// `appctl bundle publish`: writes a bundle — the signed policy files, content-addressed under `files/`, and a
/// fresh signed `timestamp` listing them — into a directory any web server, CDN, object store or rsync can carry.
/// Re-running it with the same policies writes no policy file again and only renews the timestamp (a new version
/// and validity), which is how a publisher keeps hosts from calling the channel frozen, and how a roll-out widens.
public struct Publisher {
    public var timestampKey: Ed25519PrivateKey
    public var validForSeconds: UInt64
    /// Rings in order, each with the share of the fleet (basis points) it adds; they receive the newest serials.
    public var rings: [(name: String, basisPoints: Int)]
    public var out: String

    public init(timestampKey: Ed25519PrivateKey, validForSeconds: UInt64, rings: [(name: String, basisPoints: Int)], out: String) {
        self.timestampKey = timestampKey; self.validForSeconds = validForSeconds; self.rings = rings; self.out = out
    }

    public struct Report: Sendable {
        public var timestamp: BundleTimestamp
        public var filesWritten: Int
        public var filesKept: Int
        public var filesRemoved: Int
    }

    /// `10`, `1`, `0.5`, `12.25` (percent, at most two decimals) → basis points.
    public static func basisPoints(percent text: String) -> Int? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count <= 2, let whole = Int(parts[0]), whole >= 0, parts[0].allSatisfy(\.isNumber) else { return nil }
        var fraction = 0
        if parts.count == 2 {
            guard (1...2).contains(parts[1].count), parts[1].allSatisfy(\.isNumber), let f = Int(parts[1]) else { return nil }
            fraction = parts[1].count == 1 ? f * 10 : f
        }
        let bp = whole * 100 + fraction
        return bp <= 10_000 ? bp : nil
    }

    public func publish(policies: [String]) throws(SyncError) -> Report {
        guard !policies.isEmpty else { throw SyncError(.usage, "no policy files given") }
        var files: [BundleTimestamp.File] = []
        var sources: [SHA256Digest: String] = [:]
        var bases = Set<String>(), supplementsOf = Set<String>()
        for path in policies {
            let header: PolicyHeader
            do { header = try PolicyLayers.readHeader(path: path, shown: path) } catch { throw SyncError(.refusedPolicy, error.description) }
            guard let name = header.name else { throw SyncError(.refusedPolicy, "\(path): not a layer (sign it with --name: hosts keep serials per layer name)") }
            guard let serial = header.serial, header.keyID != nil else { throw SyncError(.refusedPolicy, "\(path): not signed") }
            if let base = header.supplementOf { supplementsOf.insert(base) } else { bases.insert(name) }
            let (digest, size) = try digestAndSize(of: path)
            files.append(BundleTimestamp.File(digest: digest, size: size, layer: name, serial: serial))
            sources[digest] = path
        }
        guard bases.count == 1, let base = bases.first else {
            throw SyncError(.refusedPolicy, bases.isEmpty ? "no base layer among the policies (every one says supplement-of)" : "more than one base layer: \(bases.sorted().joined(separator: ", "))")
        }
        if let stray = supplementsOf.subtracting([base]).first { throw SyncError(.refusedPolicy, "a supplement of '\(stray)' is not for the base '\(base)'") }

        // Rings: the ones given get the newest serials; the rest of the fleet the previous ones.
        var ringLines: [BundleTimestamp.Ring] = []
        var from = 0
        for ring in rings {
            guard isValidLayerName(ring.name), ring.name != "rest" else { throw SyncError(.usage, "--ring \(ring.name): a ring name is 1 to 64 of a-z 0-9 . _ - (and not 'rest')") }
            guard ring.basisPoints > 0, from + ring.basisPoints <= 10_000 else { throw SyncError(.usage, "--ring \(ring.name): the rings add up to more than 100 %") }
            ringLines.append(BundleTimestamp.Ring(name: ring.name, from: from, to: from + ring.basisPoints, serves: .newest))
            from += ring.basisPoints
        }
        if rings.isEmpty {
            ringLines = [BundleTimestamp.Ring(name: "all", from: 0, to: 10_000, serves: .newest)]
        } else if from < 10_000 {
            ringLines.append(BundleTimestamp.Ring(name: "rest", from: from, to: 10_000, serves: .previous))
        }

        let previous = try previousTimestamp()
        let now = Timestamp.now
        let timestamp = BundleTimestamp(version: (previous?.version ?? 0) + 1, issued: now,
                                        expires: Timestamp(secondsSinceEpoch: now.secondsSinceEpoch + Int64(validForSeconds)),
                                        keyID: timestampKey.publicKey.keyID, files: files, rings: ringLines)
        if let problem = timestamp.structuralProblem { throw SyncError(.usage, problem) }
        if rings.isEmpty, let layer = timestamp.layers.first(where: { timestamp.files(of: $0).count == 2 }) {
            throw SyncError(.usage, "layer '\(layer)' is given twice (serials \(timestamp.files(of: layer).map { String($0.serial) }.joined(separator: " and "))): give --ring to roll the newer out to part of the fleet, or publish only the newer")
        }

        // The policy files first, then the timestamp that names them: a host never sees a timestamp whose files
        // are not there yet.
        mkdir(out, 0o755)
        mkdir(out + "/files", 0o755)
        var written = 0, kept = 0
        for file in timestamp.files {
            let target = out + "/" + file.bundlePath
            if let existing = try? digestAndSize(of: target), existing.digest == file.digest, existing.size == file.size { kept += 1; continue }
            do { try copyFile(from: sources[file.digest]!, to: target, permissions: 0o644) } catch {
                throw SyncError(.io, "\(target): cannot write: \(error)")
            }
            written += 1
        }
        let bytes: [UInt8]
        do { bytes = try timestamp.signed(with: timestampKey) } catch { throw SyncError(.io, "cannot sign the timestamp: \(error)") }
        let path = out + "/" + BundleTimestamp.fileName
        let previousModified = (try? linkStatus(path))?.st_mtim.tv_sec
        do { try AtomicFileWriter.write(bytes, to: path, permissions: 0o644) } catch { throw SyncError(.io, "\(path): cannot write: \(error)") }
        // Web servers validate by mtime with one-second resolution (Last-Modified, and ETags made of it): a renewal
        // within the same second as the last must still look changed, or hosts would be told 304 and miss it.
        if let previousModified, let now = try? linkStatus(path), now.st_mtim.tv_sec <= previousModified {
            var times = [timespec(tv_sec: previousModified + 1, tv_nsec: 0), timespec(tv_sec: previousModified + 1, tv_nsec: 0)]
            utimensat(AT_FDCWD, path, &times, 0)
        }
        // Files neither this timestamp nor the previous one names: a host in the middle of a sync may still fetch the
        // previous release's files, so those stay one more round.
        let named = Set((timestamp.files + (previous?.files ?? [])).map { "\($0.digest.hex).policy" })
        var removed = 0
        for name in (try? listDirectory(out + "/files")) ?? [] where name.hasSuffix(".policy") && !named.contains(name) {
            if unlink(out + "/files/" + name) == 0 { removed += 1 }
        }
        return Report(timestamp: timestamp, filesWritten: written, filesKept: kept, filesRemoved: removed)
    }

    /// The bundle's current timestamp, if any, verified with this publisher's key (its version is the one to exceed).
    private func previousTimestamp() throws(SyncError) -> BundleTimestamp? {
        let path = out + "/" + BundleTimestamp.fileName
        let bytes: [UInt8]
        do { bytes = try readSmallFile(path, limit: BundleTimestamp.maximumSize + 1) } catch {
            if error == .noSuchFile { return nil }
            throw SyncError(.io, "\(path): cannot read the current timestamp: \(error)")
        }
        do { return try BundleTimestamp.verified(bytes, key: timestampKey.publicKey, source: path) } catch {
            throw SyncError(error.code, "\(error.message) (the next version must exceed this bundle's: fix or remove that file to start again at 1, which hosts that saw a higher version refuse)")
        }
    }
}

/// A whole file's SHA-256 and length: what a bundle's timestamp lists for each policy file.
func digestAndSize(of path: String) throws(SyncError) -> (digest: SHA256Digest, size: UInt64) {
    let fd: FileDescriptor
    do { fd = try FileDescriptor.open(path, [.readOnly]) } catch { throw SyncError(.io, "\(path): cannot open: \(error)") }
    defer { fd.close() }
    do {
        let result = try FileHasher().hash(fd)
        return (result.sha256, UInt64(result.bytesRead))
    } catch {
        throw SyncError(.io, "\(path): cannot read: \(error)")
    }
}
