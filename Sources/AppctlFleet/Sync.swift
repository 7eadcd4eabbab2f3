import AppctlCore
import AppctlKernel
#if canImport(Glibc)
import Glibc
#endif

/// `appctl sync`: one pass of pulling a bundle into the policy directory. Nothing the channel returns is used before
/// it is verified — the timestamp (signature, freshness, version), every file (digest and size as the timestamp
/// lists them), then the whole set exactly as the daemon will load it (signatures, delegations, per-layer serials,
/// the shrink guard). Only then is the directory swapped, in one step, for the new one; the previous set is kept as
/// last-known-good, and put back if the daemon refuses the new one. On any refusal the policies in force stay.
public struct Sync {
    public var source: any BundleSource
    public var baseKey: Ed25519PublicKey
    public var timestampKey: Ed25519PublicKey
    public var policyDirectory: String
    public var stateDirectory: String
    public var hostname: String
    public var machineID: String
    /// Policy files larger than this are refused whatever the timestamp says (a 1M-entry base is ~110 MB).
    public var maximumPolicyBytes: Int64 = 2 << 30
    /// How far a timestamp's issue time may lie ahead of this host's clock.
    public var clockSkewSeconds: Int64 = 300

    public init(source: any BundleSource, baseKey: Ed25519PublicKey, timestampKey: Ed25519PublicKey, policyDirectory: String,
                stateDirectory: String, hostname: String, machineID: String) {
        self.source = source; self.baseKey = baseKey; self.timestampKey = timestampKey; self.policyDirectory = policyDirectory
        self.stateDirectory = stateDirectory; self.hostname = hostname; self.machineID = machineID
    }

    public enum Change: String, Sendable { case installed, nothingNew = "nothing-new" }

    public struct Outcome: Sendable {
        public var change: Change
        public var timestamp: BundleTimestamp
        public var ring: BundleTimestamp.Ring
        public var installed: [BundleTimestamp.File]
        public var candidates: [BundleTimestamp.File]
        /// Bytes fetched from the channel in this pass (the timestamp included).
        public var bytesFetched: Int64
        public var timestampNotModified: Bool
    }

    var syncStateDirectory: String { stateDirectory + "/sync" }
    var timestampCopy: String { syncStateDirectory + "/timestamp" }
    var validatorsFile: String { syncStateDirectory + "/timestamp.validators" }
    var downloads: String { syncStateDirectory + "/files" }

    /// One pass. `install` runs after the new set is in place (the daemon's reload); if it throws, the previous set
    /// is put back and the error is the pass's.
    public func run(afterInstall: () throws(SyncError) -> Void = {}) throws(SyncError) -> Outcome {
        mkdir(stateDirectory, 0o700)
        mkdir(syncStateDirectory, 0o700)
        mkdir(downloads, 0o700)
        // One pass at a time (the timer's and an admin's): a roll-back of one must not swap back over the other's install.
        let lock: FileDescriptor
        do {
            lock = try FileDescriptor.open(syncStateDirectory + "/lock", [.readWrite, .create], permissions: 0o600)
            try lock.lockExclusively(wait: true)
        } catch { throw SyncError(.io, "\(syncStateDirectory)/lock: cannot lock: \(error)") }
        defer { lock.close() }
        try checkParentDirectory()
        removeLeftoverStaging()
        let known = knownTimestamp()
        var fetched: Int64 = 0

        // 1. The timestamp: conditional, so that a poll that finds nothing new costs the server a 304.
        let fetchedTimestamp = try fetchToMemory(BundleTimestamp.fileName, maxBytes: Int64(BundleTimestamp.maximumSize),
                                                 conditional: known.map { _ in savedValidators() } ?? nil)
        let bytes: [UInt8]
        var notModified = false
        switch fetchedTimestamp {
        case .some(let (body, _)): bytes = body; fetched += Int64(body.count)
        case .none:
            guard let known else { throw SyncError(.fetch, "\(source.name): answered 'not modified' to a host that has no timestamp") }
            bytes = known.bytes; notModified = true
        }
        let timestamp = try BundleTimestamp.verified(bytes, key: timestampKey, source: "\(source.name)/\(BundleTimestamp.fileName)")
        let now = Timestamp.now
        guard timestamp.expires > now else {
            throw SyncError(.stale, "\(source.name): the timestamp expired at \(timestamp.expires) (\(age(now.secondsSinceEpoch - timestamp.expires.secondsSinceEpoch)) ago): the channel is frozen, replays an old bundle, or the publisher stopped renewing; keeping the policies in force")
        }
        guard timestamp.issued.secondsSinceEpoch <= now.secondsSinceEpoch + clockSkewSeconds else {
            throw SyncError(.stale, "\(source.name): the timestamp is issued at \(timestamp.issued), in the future of this host's clock (\(now)); check the clock")
        }
        if let known {
            if timestamp.version < known.timestamp.version {
                throw SyncError(.replay, "\(source.name): timestamp version \(timestamp.version) is older than version \(known.timestamp.version), which this host has seen (a replayed bundle)")
            }
            if timestamp.version == known.timestamp.version && bytes != known.bytes {
                throw SyncError(.replay, "\(source.name): timestamp version \(timestamp.version) differs from the version \(timestamp.version) this host has seen (the timestamp key signed two versions alike)")
            }
        }

        // A verified, fresh timestamp is remembered at once, whatever happens to the files it names (as TUF keeps a
        // timestamp once verified): a captured older bundle replayed afterwards is then refused as a replay.
        try remember(timestamp: bytes, validators: fetchedTimestamp.map { $0.1 })

        // 2. Which files this host takes.
        let bucket = rolloutBucket(machineID: machineID)
        guard let ring = timestamp.ring(forBucket: bucket) else { throw SyncError(.badTimestamp, "no ring covers bucket \(bucket)") }
        let records: LayerRecords
        do { records = try LayerRecords.read(stateDirectory: stateDirectory) } catch { throw SyncError(.io, error.description) }
        var (install, candidates) = timestamp.selection(for: ring)
        // A host served the previous serial that already applied the newer one (the ring shrank, the machine id
        // changed) keeps the newer: selection never goes below what this host applied.
        for (index, file) in install.enumerated() {
            if let newer = candidates.first(where: { $0.layer == file.layer }), let applied = records.byName[file.layer]?.serial, applied > file.serial {
                install[index] = newer
                candidates.removeAll { $0.layer == file.layer }
            }
        }
        // The usual poll: the files installed are the ones listed, as recorded when they were installed (by size,
        // change time and inode, so nothing is hashed or verified again).
        if let recorded = installedManifest(), recorded == manifest(for: install, candidates) {
            return Outcome(change: .nothingNew, timestamp: timestamp, ring: ring, installed: install, candidates: candidates,
                           bytesFetched: fetched, timestampNotModified: notModified)
        }

        // 3. Every file, verified by digest and size (from the installed set, the download cache, or the channel).
        for file in install + candidates { fetched += try obtain(file) }

        // 4. Stage the new directory beside the policy directory (one filesystem: the swap is one rename).
        let staging = stagingPath()
        removeFlatDirectory(staging)
        guard mkdir(staging, 0o755) == 0 else { throw SyncError(.io, "\(staging): cannot create: \(Errno.current)") }
        var swapped = false
        defer { if !swapped { removeFlatDirectory(staging) } }
        for file in install { try place(file, in: staging, as: file.layer + PolicyLayers.enforcedSuffix) }
        for file in candidates { try place(file, in: staging, as: file.layer + PolicyLayers.candidateSuffix) }
        do { try syncDirectory(staging) } catch { throw SyncError(.io, "\(staging): cannot sync: \(error)") }

        // 5. The set exactly as the daemon will load it.
        let composed: LoadedPolicy
        let stagedName = "\(source.name) (staged)"
        do { composed = try PolicyLayers.load(directory: staging, key: baseKey, hostname: hostname, shownAs: stagedName) } catch {
            throw SyncError(.refusedPolicy, error.description)
        }
        for layer in composed.layers {
            let listed = install.first { $0.layer == layer.name }!
            guard layer.header.serial == listed.serial else {
                throw SyncError(.mismatch, "layer '\(layer.name)' has serial \(layer.header.serial!), but the timestamp lists serial \(listed.serial)")
            }
        }
        // The layers installed now, by header: the shrink guard's other yardstick (what the daemon enforces may be them).
        let inForce = PolicyLayers.installedLayers(in: policyDirectory)
        if let refusal = records.refusal(of: composed.layers, hostname: hostname, allowRollback: false, inForce: inForce) {
            throw SyncError(.refusedPolicy, refusal)
        }
        if !candidates.isEmpty {
            do { _ = try PolicyLayers.load(directory: staging, key: baseKey, candidates: true, hostname: hostname, shownAs: stagedName) } catch {
                throw SyncError(.refusedPolicy, "candidate: " + error.description)
            }
        }

        // 6. Nothing new: the same files are installed already (a pass cut short after its swap, before the daemon
        // took the set in, ends here next time: so the daemon is asked again before the set is recorded as installed).
        if sameFiles(staging, policyDirectory) {
            try afterInstall()
            recordManifest(install, candidates)
            return Outcome(change: .nothingNew, timestamp: timestamp, ring: ring, installed: install, candidates: candidates,
                           bytesFetched: fetched, timestampNotModified: notModified)
        }

        // 7. The swap, then the daemon; if it refuses, the previous set goes back.
        let previous = previousSetPath()
        if (try? linkStatus(policyDirectory)) == nil {
            guard rename(staging, policyDirectory) == 0 else { throw SyncError(.io, "\(policyDirectory): cannot install: \(Errno.current)") }
            swapped = true
            syncParent(of: policyDirectory)
            do { try afterInstall() } catch {
                if rename(policyDirectory, staging) == 0 { swapped = false }
                throw SyncError(error.code, error.message + (swapped ? "; AND the new set could not be taken out again (\(Errno.current)): \(policyDirectory) holds it" : ""))
            }
        } else {
            do { try exchangePaths(staging, policyDirectory) } catch { throw SyncError(.io, "\(policyDirectory): cannot swap in the new set: \(error)") }
            syncParent(of: policyDirectory)
            do { try afterInstall() } catch {
                var message = error.message
                do { try exchangePaths(staging, policyDirectory) } catch let back {
                    // The refused set stays in place: keep the previous one beside it rather than delete it.
                    swapped = true
                    _ = rename(staging, previous)
                    message += "; AND the previous set could not be swapped back (\(back)): it is kept in \(previous)"
                }
                syncParent(of: policyDirectory)
                throw SyncError(error.code, message)
            }
            swapped = true
            // The set just replaced, kept beside the policy directory (one filesystem: a rename); the daemon keeps its
            // own last-known-good copies of every set it applied.
            removeFlatDirectory(previous)
            if rename(staging, previous) != 0 { removeFlatDirectory(staging) }
        }
        recordManifest(install, candidates)
        pruneDownloads(keeping: Set((install + candidates).map(\.digest)))
        return Outcome(change: .installed, timestamp: timestamp, ring: ring, installed: install, candidates: candidates,
                       bytesFetched: fetched, timestampNotModified: notModified)
    }

    // MARK: - Pieces

    private func stagingPath() -> String {
        policyDirectory.dropLastPathComponent() + "/." + policyDirectory.lastPathComponent + ".sync-\(getpid())"
    }

    private func previousSetPath() -> String {
        policyDirectory.dropLastPathComponent() + "/." + policyDirectory.lastPathComponent + ".previous"
    }

    /// Sync stages and keeps directories beside the policy directory, as root: only safe where nobody but root can
    /// create, rename or replace entries (a symlink planted there would have root write or delete elsewhere).
    private func checkParentDirectory() throws(SyncError) {
        let parent = policyDirectory.dropLastPathComponent()
        guard let st = try? linkStatus(parent), st.isDirectory else {
            throw SyncError(.io, "\(parent): the policy directory's parent must be an existing directory (not a symlink)")
        }
        guard st.st_uid == 0, st.st_mode & 0o022 == 0 else {
            throw SyncError(.io, "\(parent): owned by uid \(st.st_uid), mode \(String(st.st_mode & 0o7777, radix: 8)): the policy directory's parent must be root's and writable by root only (sync stages the new set there)")
        }
        if let own = try? linkStatus(policyDirectory), !own.isDirectory {
            throw SyncError(.io, "\(policyDirectory): not a directory (a symlink is not followed)")
        }
    }

    /// Staging directories of passes that were cut short (killed, power lost); they hold nothing anyone uses.
    private func removeLeftoverStaging() {
        let parent = policyDirectory.dropLastPathComponent(), prefix = "." + policyDirectory.lastPathComponent + ".sync-"
        for name in (try? listDirectory(parent)) ?? [] where name.hasPrefix(prefix) { removeFlatDirectory(parent + "/" + name) }
    }

    /// The timestamp this host accepted last (verified again: the state directory is not trusted blindly).
    private func knownTimestamp() -> (bytes: [UInt8], timestamp: BundleTimestamp)? {
        guard let bytes = try? readSmallFile(timestampCopy, limit: BundleTimestamp.maximumSize + 1),
              let timestamp = try? BundleTimestamp.verified(bytes, key: timestampKey, source: timestampCopy) else { return nil }
        return (bytes, timestamp)
    }

    private func savedValidators() -> Validators? {
        guard let text = try? readSmallFile(validatorsFile, limit: 4096) else { return nil }
        let lines = String(decoding: text, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard lines.count >= 2 else { return nil }
        return Validators(etag: lines[0].isEmpty ? nil : lines[0], lastModified: lines[1].isEmpty ? nil : lines[1])
    }

    private func remember(timestamp: [UInt8], validators: Validators??) throws(SyncError) {
        do {
            try AtomicFileWriter.write(timestamp, to: timestampCopy, permissions: 0o600)
            if case .some(let v) = validators {
                let text = v.map { "\($0.etag ?? "")\n\($0.lastModified ?? "")\n" } ?? ""
                try AtomicFileWriter.write(Array(text.utf8), to: validatorsFile, permissions: 0o600)
            }
        } catch {
            throw SyncError(.io, "\(syncStateDirectory): cannot record the timestamp: \(error)")
        }
    }

    /// Fetches a small file into memory; nil when the channel says the host's copy is current.
    private func fetchToMemory(_ path: String, maxBytes: Int64, conditional: Validators?) throws(SyncError) -> ([UInt8], Validators?)? {
        let temporary = downloads + "/.fetch-\(getpid())"
        let fd: FileDescriptor
        do { fd = try FileDescriptor.open(temporary, [.readWrite, .create, .truncate], permissions: 0o600) } catch {
            throw SyncError(.io, "\(temporary): cannot create: \(error)")
        }
        defer { fd.close(); unlink(temporary) }
        switch try source.fetch(path, into: fd, maxBytes: maxBytes, conditional: conditional) {
        case .notModified: return nil
        case .fetched(_, let validators):
            do { return (try readSmallFile(temporary, limit: Int(maxBytes)), validators) } catch {
                throw SyncError(.io, "\(temporary): cannot read back: \(error)")
            }
        }
    }

    /// Makes `downloads/<digest>.policy` hold the file; returns the bytes fetched from the channel for it.
    private func obtain(_ file: BundleTimestamp.File) throws(SyncError) -> Int64 {
        let target = downloads + "/\(file.digest.hex).policy"
        if let have = try? digestAndSize(of: target), have.digest == file.digest, have.size == file.size { return 0 }
        for suffix in [PolicyLayers.enforcedSuffix, PolicyLayers.candidateSuffix] {
            let installed = policyDirectory + "/" + file.layer + suffix
            if let have = try? digestAndSize(of: installed), have.digest == file.digest, have.size == file.size {
                do { try copyFile(from: installed, to: target, permissions: 0o600) } catch { throw SyncError(.io, "\(target): cannot write: \(error)") }
                return 0
            }
        }
        guard Int64(file.size) <= maximumPolicyBytes else {
            throw SyncError(.mismatch, "layer '\(file.layer)' serial \(file.serial): the timestamp lists \(file.size) bytes, more than the \(maximumPolicyBytes) this host accepts")
        }
        // Fetched into a file of our own, read back and hashed, then renamed into place: never a partial download
        // under the final name.
        let temporary = downloads + "/.download-\(getpid())"
        unlink(temporary)
        let fd: FileDescriptor
        do { fd = try FileDescriptor.open(temporary, [.readWrite, .create, .exclusive], permissions: 0o600) } catch {
            throw SyncError(.io, "\(temporary): cannot create: \(error)")
        }
        defer { fd.close(); unlink(temporary) }
        // At most the listed size: a longer answer is cut off at once instead of filling the disk.
        guard case .fetched(let bytes, _) = try source.fetch(file.bundlePath, into: fd, maxBytes: Int64(file.size), conditional: nil) else {
            throw SyncError(.fetch, "\(source.name)/\(file.bundlePath): 'not modified' to an unconditional request")
        }
        guard bytes == Int64(file.size) else {
            throw SyncError(.mismatch, "\(source.name)/\(file.bundlePath): \(bytes) bytes, but the timestamp lists \(file.size) (truncated, or from another release)")
        }
        let got: SHA256Digest
        do { got = try FileHasher().hash(fd).sha256 } catch { throw SyncError(.io, "\(temporary): cannot read back: \(error)") }
        guard got == file.digest else {
            throw SyncError(.mismatch, "\(source.name)/\(file.bundlePath): its SHA-256 is \(got.hex.prefix(16))…, not what the timestamp lists (tampered, or a file of another release)")
        }
        do { try fd.sync() } catch { throw SyncError(.io, "\(temporary): cannot sync: \(error)") }
        guard rename(temporary, target) == 0 else { throw SyncError(.io, "\(target): cannot write: \(Errno.current)") }
        return bytes
    }

    private func place(_ file: BundleTimestamp.File, in directory: String, as name: String) throws(SyncError) {
        let from = downloads + "/\(file.digest.hex).policy", to = directory + "/" + name
        // A hard link costs nothing for a 100 MB base; a copy where links are not possible.
        if link(from, to) == 0 { chmod(to, 0o644); return }
        do { try copyFile(from: from, to: to, permissions: 0o644) } catch { throw SyncError(.io, "\(to): cannot write: \(error)") }
    }

    /// Whether two directories hold files of the same names and contents.
    private func sameFiles(_ a: String, _ b: String) -> Bool {
        guard let namesA = try? listDirectory(a).sorted(), let namesB = try? listDirectory(b).filter({ !$0.hasPrefix(".") }).sorted(),
              namesA == namesB else { return false }
        return namesA.allSatisfy { name in
            guard let x = try? digestAndSize(of: a + "/" + name), let y = try? digestAndSize(of: b + "/" + name) else { return false }
            return x.digest == y.digest && x.size == y.size
        }
    }

    /// `<file name> <digest> <size> <ctime> <inode>` per installed file: what was installed, and how it looked then.
    private var manifestFile: String { syncStateDirectory + "/installed" }

    private func manifest(for install: [BundleTimestamp.File], _ candidates: [BundleTimestamp.File]) -> String? {
        var lines: [String] = []
        for (file, suffix) in install.map({ ($0, PolicyLayers.enforcedSuffix) }) + candidates.map({ ($0, PolicyLayers.candidateSuffix) }) {
            let name = file.layer + suffix
            guard let st = try? linkStatus(policyDirectory + "/" + name), st.isRegularFile, st.st_size == off_t(file.size) else { return nil }
            lines.append("\(name) \(file.digest.hex) \(file.size) \(st.st_ctim.tv_sec).\(st.st_ctim.tv_nsec) \(st.st_ino)")
        }
        // Nothing else may be there: a layer file the bundle does not list would be loaded too.
        let present = ((try? listDirectory(policyDirectory)) ?? []).filter { !$0.hasPrefix(".") }.sorted()
        guard present == lines.map({ String($0.prefix { $0 != " " }) }).sorted() else { return nil }
        return lines.sorted().joined(separator: "\n") + "\n"
    }

    private func installedManifest() -> String? {
        (try? readSmallFile(manifestFile, limit: 1 << 20)).map { String(decoding: $0, as: UTF8.self) }
    }

    private func recordManifest(_ install: [BundleTimestamp.File], _ candidates: [BundleTimestamp.File]) {
        guard let text = manifest(for: install, candidates) else { unlink(manifestFile); return }
        try? AtomicFileWriter.write(Array(text.utf8), to: manifestFile, permissions: 0o600)
    }

    private func pruneDownloads(keeping: Set<SHA256Digest>) {
        let names = Set(keeping.map { "\($0.hex).policy" })
        for name in (try? listDirectory(downloads)) ?? [] where !names.contains(name) { unlink(downloads + "/" + name) }
    }

    private func syncParent(of path: String) { try? syncDirectory(path.dropLastPathComponent()) }
}

func age(_ seconds: Int64) -> String {
    if seconds >= 86_400 { return "\(seconds / 86_400)d \(seconds % 86_400 / 3600)h" }
    if seconds >= 3600 { return "\(seconds / 3600)h \(seconds % 3600 / 60)m" }
    if seconds >= 60 { return "\(seconds / 60)m \(seconds % 60)s" }
    return "\(seconds)s"
}

extension String {
    var lastPathComponent: String { split(separator: "/").last.map(String.init) ?? self }
}
