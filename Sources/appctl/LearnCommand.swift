import AppctlCore
import AppctlLearn
import AppctlPackages
import AppctlKernel
import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif

/// Options every command that writes a signed policy shares.
struct SigningOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Expiry: a time (2027-06-30, 2027-06-30T12:00:00Z) or a duration from now (12h, 30d); hosts refuse the policy afterwards.", valueName: "time|duration"))
    var expires: ExpiryTime?

    @Option(help: ArgumentHelp("Comma-separated hostname globs the policy is for, e.g. 'web-*,db-0?'.", valueName: "selector"))
    var scope: String?

    @Option(help: ArgumentHelp("Free text stored in the header (who, why, ticket).", valueName: "text"))
    var description: String?

    @Option(name: .customLong("apt-source"), help: ArgumentHelp(
        "An apt source whose packages hosts may verify: signer=<40-hex fingerprint>[,origin=O][,suite=S][,mode=auto|gate]. auto: files of packages verified through the archive's signatures are trusted before dpkg unpacks them; gate: apt stops unless every program is already allowed; no mode: only reported. Repeatable; 'appctl apt-hook sources' prints this machine's.",
        valueName: "spec"))
    var aptSources: [String] = []

    @Option(name: .customLong("apt-unverified"), help: ArgumentHelp(
        "What the apt hook does with a package nothing vouches for (a local .deb, a bad signature, a source not named): refuse (stop apt before dpkg), report (install it, trust nothing of it), or maintenance (only inside a maintenance window, whose writes are trusted as the window's). Default: refuse while enforcing, report otherwise.",
        valueName: "refuse|report|maintenance"))
    var aptUnverified: String?

    @Option(help: ArgumentHelp("Allow maintenance windows: max=<duration>[,paths=<dir>:<dir>...], e.g. max=2h,paths=/opt:/usr/local.",
                               valueName: "spec"))
    var maintenance: String?

    @Option(help: ArgumentHelp("The layer's name (a policy directory holds <name>.policy files): hosts keep one anti-rollback serial per name. 1 to 64 of a-z 0-9 . _ -.", valueName: "name"))
    var name: String?

    @Option(name: .customLong("delegate"), help: ArgumentHelp(
        "On a base: the key that may sign the supplement NAME, and its limits: name=NAME,key=PUBLIC-KEY-FILE[,max-entries=N][,kinds=elf-exec:script][,max-valid=30d]. key= also takes the key as 64 hex digits. The whole public key is signed into the base. Repeatable.",
        valueName: "spec"))
    var delegates: [String] = []

    @Option(help: ArgumentHelp("Make this a supplement of the base layer BASE (needs --name): it may only add allow entries, and hosts verify it with the key BASE delegates for --name.", valueName: "base"))
    var supplementOf: String?

    @Flag(help: "Say in the signed header that this policy may drop most of the previous one's entries (else hosts refuse it: the shrink guard).")
    var allowShrink = false

    /// The layer header lines given on the command line; nil when none was given.
    func layer() throws(CommandFailure) -> (name: String?, supplementOf: String?, delegations: [Delegation], shrink: Bool)? {
        guard name != nil || supplementOf != nil || !delegates.isEmpty || allowShrink else { return nil }
        if let name, !isValidLayerName(name) { throw CommandFailure("--name \(name): 1 to 64 of a-z 0-9 . _ - starting with a letter or digit", exitCode: 2) }
        if let supplementOf {
            guard name != nil else { throw CommandFailure("--supplement-of needs --name (the supplement's own name)", exitCode: 2) }
            guard isValidLayerName(supplementOf) else { throw CommandFailure("--supplement-of \(supplementOf): not a layer name", exitCode: 2) }
            guard delegates.isEmpty else { throw CommandFailure("--delegate is for a base; a supplement cannot delegate", exitCode: 2) }
            guard aptSources.isEmpty, aptUnverified == nil, maintenance == nil else {
                throw CommandFailure("--apt-source, --apt-unverified and --maintenance are for a base; a supplement cannot widen local trust", exitCode: 2)
            }
        }
        var delegations: [Delegation] = []
        for spec in delegates {
            do {
                delegations.append(try Delegation(spec: spec, canonical: false, resolveKey: { path throws(SpecError) in
                    do throws(CommandFailure) { return try loadPublicKey(path) } catch { throw SpecError(error.message) }
                }))
            } catch {
                throw CommandFailure("--delegate \(spec): \(error)", exitCode: 2)
            }
        }
        let names = delegations.map(\.name)
        if Set(names).count != names.count { throw CommandFailure("--delegate: the same supplement name twice", exitCode: 2) }
        return (name, supplementOf, delegations.sorted(), allowShrink)
    }

    /// Puts the layer lines given on the command line into `header` (those not given stay as they were).
    func applyLayer(to header: inout PolicyHeader) throws(CommandFailure) {
        guard let layer = try layer() else { return }
        if let name = layer.name { header.name = name }
        if layer.supplementOf != nil { header.supplementOf = layer.supplementOf }
        if !layer.delegations.isEmpty { header.delegations = layer.delegations }
        if layer.shrink { header.shrinkPermitted = true }
        if header.supplementOf != nil && (!header.delegations.isEmpty || header.declaresLocalTrust) {
            throw CommandFailure("a supplement may not carry delegate, apt-source, apt-unverified or maintenance lines", exitCode: 2)
        }
    }

    /// The trust-source header lines given on the command line, checked and in canonical order; nil when none was given.
    func localTrust() throws(CommandFailure) -> (sources: [AptSourceRule], maintenance: MaintenanceRule?, unverified: UnverifiedPackages?)? {
        guard !aptSources.isEmpty || maintenance != nil || aptUnverified != nil else { return nil }
        var unverified: UnverifiedPackages?
        if let aptUnverified {
            guard let value = UnverifiedPackages(rawValue: aptUnverified) else { throw CommandFailure("--apt-unverified must be refuse, report or maintenance", exitCode: 2) }
            unverified = value
        }
        var rules: [AptSourceRule] = []
        for spec in aptSources {
            do { rules.append(try AptSourceRule(spec: spec, canonical: false)) } catch {
                throw CommandFailure("--apt-source \(spec): \(error)", exitCode: 2)
            }
        }
        rules = Array(Set(rules)).sorted()
        var window: MaintenanceRule?
        if let maintenance {
            do { window = try MaintenanceRule(spec: maintenance, canonical: false) } catch {
                throw CommandFailure("--maintenance \(maintenance): \(error)", exitCode: 2)
            }
        }
        return (rules, window, unverified)
    }

    func scopeGlobs() throws(CommandFailure) -> [String] {
        guard let scope else { return [] }
        let globs = scope.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        guard globs.allSatisfy({ !$0.isEmpty && $0.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7f } }) else {
            throw CommandFailure("--scope must be a comma-separated list of hostname globs without spaces", exitCode: 2)
        }
        return globs
    }
}

extension Appctl {
    struct Learn: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Build an inventory of the executable content on this machine.",
            discussion: """
                Finds executable content by its bytes (ELF programs and shared objects, the loader, '#!'
                scripts) and by execute bits, never by file name; hashes it with SHA-256 on every core.
                Files owned by a Debian package are checked against the MD5 that dpkg recorded: a file
                whose content no longer matches its package is left out and reported (a tampered
                binary must not be learned as trusted), unless --include-modified.

                Default roots: \(LearnOptions.defaultRoots.joined(separator: " "))
                (/bin, /sbin and /lib* only where they are real directories, not usr-merge symlinks).
                /tmp, /var/tmp, /dev/shm and /run are never learned by default: whatever sits there stays unknown.
                Symlinks are never followed, FIFOs, sockets and devices never opened, pseudo filesystems
                (proc, sysfs, ...) never entered.

                The output is an unsigned inventory; review it, then 'appctl policy sign' it, or pass
                --sign-with and --serial to sign at once.
                """
        )

        @Option(name: .customLong("root"), help: ArgumentHelp("A directory to scan (repeatable). Default: the list below.", valueName: "dir"))
        var roots: [String] = []

        @Option(name: .customLong("exclude"), help: ArgumentHelp("A directory to leave out (repeatable).", valueName: "dir"))
        var excludes: [String] = []

        @Option(help: ArgumentHelp("dpkg's admin directory, for package verification.", valueName: "dir"))
        var dpkgAdmindir: String = "/var/lib/dpkg"

        @Flag(help: "Learn files that differ from their package too (origin 'local'); they are still reported.")
        var includeModified = false

        @Option(help: ArgumentHelp("Sign the result with this private key (needs --serial).", valueName: "private-key"))
        var signWith: String?

        @Option(help: ArgumentHelp("Serial of the signed policy (with --sign-with); must exceed the hosts' last one.", valueName: "n"))
        var serial: SerialNumber?

        @OptionGroup var signing: SigningOptions

        @Option(help: ArgumentHelp("apt's package cache: installed packages whose .deb is there are verified through the archive's signed chain instead of dpkg's MD5 lists ('none' to skip).", valueName: "dir"))
        var aptCache: String = "/var/cache/apt/archives"

        @Option(help: ArgumentHelp("apt's lists directory (the chain's InRelease and Packages files).", valueName: "dir"))
        var aptLists: String = "/var/lib/apt/lists"

        @Option(help: ArgumentHelp("Hashing threads. Default: one per core.", valueName: "n"))
        var threads: Int?

        @Option(help: ArgumentHelp("Where to write the inventory (written whole or not at all).", valueName: "file"))
        var out: String

        func validate() throws {
            if (signWith == nil) != (serial == nil) { throw ValidationError("--sign-with and --serial go together") }
            if let threads, threads < 1 { throw ValidationError("--threads must be at least 1") }
        }

        func run() throws {
            let key = try signWith.map { path throws(CommandFailure) in try loadPrivateKey(path) }
            let scope = try signing.scopeGlobs()
            var dpkg: DpkgDatabase? = nil
            var dpkgNote = "no dpkg database at \(dpkgAdmindir): files not verified against packages"
            if (try? linkStatus(dpkgAdmindir + "/info")) != nil {
                do {
                    dpkg = try DpkgDatabase(adminDir: dpkgAdmindir)
                    dpkgNote = "verified against \(dpkg!.packageCount) packages' MD5 records in \(dpkgAdmindir)"
                } catch {
                    throw CommandFailure("\(dpkgAdmindir)/info: cannot read the dpkg database: \(error)")
                }
            }
            var options = LearnOptions(roots: roots.isEmpty ? LearnOptions.defaultRoots : roots, excludes: excludes,
                                       dpkg: dpkg, includeModified: includeModified)
            let archive = archiveDigests()
            options.archiveDigests = archive.digests
            dpkgNote += "\n  archive:   " + archive.note
            if let threads { options.threads = threads }
            for root in roots where (try? linkStatus(root))?.isDirectory != true {
                throw CommandFailure("\(root): not a directory")
            }

            let progress = isatty(2) == 1 ? ProgressLine() : nil
            let report = Scanner(options: options).run(progress: progress.map { p in { p.show($0) } })
            progress?.clear()

            var header = PolicyHeader(issued: .now, description: signing.description ?? "learned on \(hostName()) from \(report.rootsScanned.joined(separator: " "))")
            header.expires = signing.expires?.value
            header.scope = scope
            if let trust = try signing.localTrust() {
                header.aptSources = trust.sources
                header.maintenance = trust.maintenance
                header.aptUnverified = trust.unverified
            }
            try signing.applyLayer(to: &header)
            if let key, let serial {
                header.serial = serial.value
                header.keyID = key.publicKey.keyID
            }
            do {
                try PolicyWriter.write(path: out, header: header, allows: report.entries, denies: [], signingKey: key)
            } catch {
                throw CommandFailure(error)
            }
            printSummary(report, dpkgNote: dpkgNote, signed: key != nil)
        }

        /// Installed packages whose `.deb` is in apt's cache, verified through the archive's signed chain by the
        /// hook program (it links the archive library; this binary does not): their files' SHA-256 as the archive
        /// signed them. The note says how many and where it fell back to dpkg's MD5 lists.
        private func archiveDigests() -> (digests: [String: ArchiveDigest], note: String) {
            guard aptCache != "none", dpkg(adminDir: dpkgAdmindir) else { return ([:], "not used (--apt-cache none, or no dpkg database): dpkg's MD5 lists only") }
            let status = try? DpkgStatus(path: dpkgAdmindir + "/status")
            let names = ((try? listDirectory(aptCache)) ?? []).filter { $0.hasSuffix(".deb") }.sorted()
            let installed = names.filter { name in
                guard let status, let deb = AptArchive.parseDebFileName(name) else { return false }
                return status.has(name: deb.key.name, version: deb.key.version, architecture: deb.architecture)
            }
            guard !installed.isEmpty else { return ([:], "no installed package's .deb in \(aptCache): dpkg's MD5 lists for every package") }
            guard let exe = realPath("/proc/self/exe") else { return ([:], "cannot find the hook program: dpkg's MD5 lists for every package") }
            let hook = String(exe[..<exe.lastIndex(of: "/")!]) + "/appctl-apt-hook"
            let output: [UInt8]
            do { output = try ChildProcess.run([hook, "verify-debs", "--lists", aptLists] + installed.map { aptCache + "/" + $0 }, outputLimit: 256 << 20) } catch {
                return ([:], "\(error): dpkg's MD5 lists for every package")
            }
            let canonical = DpkgDatabase.canonicalizer()
            var digests: [String: ArchiveDigest] = [:]
            var verified = 0, unverified: [String] = [], package = ""
            for line in output.split(separator: UInt8(ascii: "\n")).map({ String(decoding: $0, as: UTF8.self) }) {
                let f = line.split(separator: " ").map(String.init)
                switch f.first {
                case "verified" where f.count == 4: verified += 1; package = f[1]
                case "file" where f.count == 3:
                    if let digest = SHA256Digest(hex: f[1]) { digests[canonical(PathEscaping.unescapedString(f[2]))] = ArchiveDigest(digest: digest, package: package) }
                case "unverified" where f.count == 3: unverified.append("\(PathEscaping.unescapedString(f[1])): \(PathEscaping.unescapedString(f[2]))")
                default: break
                }
            }
            return (digests, "\(verified) packages verified against their signed .debs in \(aptCache) (\(digests.count) executable files by SHA-256); "
                + "dpkg's MD5 lists for the rest" + (unverified.isEmpty ? "" : "; \(unverified.count) .debs not verifiable: " + unverified.prefix(3).joined(separator: "; ")))
        }

        private func dpkg(adminDir: String) -> Bool { (try? linkStatus(adminDir + "/status")) != nil }

        private func printSummary(_ r: LearnReport, dpkgNote: String, signed: Bool) {
            let gb = Double(r.bytesHashed) / 1e9
            print("learned \(r.entries.count) executable files from \(r.rootsScanned.joined(separator: " "))")
            print("  examined \(r.filesExamined) regular files; hashed \(formatBytes(r.bytesHashed)) in \(format(r.seconds, 2)) s (\(format(r.seconds > 0 ? gb / r.seconds : 0, 2)) GB/s)")
            let kinds = FileKind.allCases.map { k in "\(k.rawValue) \(r.entries.count { $0.kind == k })" }
            print("  by kind:   \(kinds.joined(separator: ", "))")
            var origins: [String: Int] = [:]
            for e in r.entries { origins[e.origin.category, default: 0] += 1 }
            print("  by origin: \(["dpkg", "local", "manual"].map { "\($0) \(origins[$0] ?? 0)" }.joined(separator: ", "))")
            print("  packages:  \(dpkgNote)")
            let declared = r.entries.filter { $0.interpreter != nil }
            if !declared.isEmpty {
                print("  interpreters: \(declared.count) found by what they are (format version 3): "
                      + declared.prefix(8).map { "\($0.interpreter!.rawValue) \(PathEscaping.unescapedString($0.escapedPath))" }.joined(separator: ", ")
                      + (declared.count > 8 ? ", …" : ""))
            }
            let verityCount = r.entries.filter { $0.verity != nil }.count
            if verityCount > 0 {
                print("  fs-verity: \(verityCount) files have it enabled; their digests are recorded (format version 2), so hosts decide them without reading them")
            }
            if r.specialFilesSkipped + r.vanished > 0 {
                print("  skipped:   \(r.specialFilesSkipped) symlinks/FIFOs/sockets/devices (not opened), \(r.vanished) files vanished during the scan")
            }
            if !r.pseudoMountsSkipped.isEmpty {
                print("  not entered (pseudo filesystems): \(r.pseudoMountsSkipped.joined(separator: " "))")
            }
            var byCategory: [String: [Exclusion]] = [:]
            for e in r.exclusions { byCategory[e.reason.category, default: []].append(e) }
            print("  excluded:  \(r.exclusions.count)" + (byCategory.isEmpty ? "" : " (" + byCategory.keys.sorted().map { "\($0) \(byCategory[$0]!.count)" }.joined(separator: ", ") + ")"))
            for category in byCategory.keys.sorted() {
                let list = byCategory[category]!
                let shown = category == "modified-from-package" ? 200 : 20
                for e in list.prefix(shown) { print("    \(e.path): \(e.reason)\(includeModified && category == "modified-from-package" ? " (included: --include-modified)" : "")") }
                if list.count > shown { print("    ... and \(list.count - shown) more \(category)") }
            }
            print(signed ? "wrote signed policy \(out)" : "wrote unsigned inventory \(out); review it, then: appctl policy sign --key KEY --serial N --out POLICY \(out)")
        }
    }
}

/// A one-line progress display on stderr, only when stderr is a terminal.
final class ProgressLine {
    func show(_ p: ScanProgress) {
        let text = p.walking
            ? "\rappctl learn: listing… \(p.filesFound) files"
            : "\rappctl learn: \(p.filesExamined)/\(p.filesFound) files examined, \(formatBytes(p.bytesHashed)) hashed"
        try? FileDescriptor(rawValue: 2).writeAll(Array((text + "\u{1B}[K").utf8))
    }

    func clear() {
        try? FileDescriptor(rawValue: 2).writeAll(Array("\r\u{1B}[K".utf8))
    }
}

func hostName() -> String {
    var buf = [CChar](repeating: 0, count: 256)
    gethostname(&buf, 255)
    return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

func format(_ value: Double, _ decimals: Int) -> String {
    var p = 1.0
    for _ in 0..<decimals { p *= 10 }
    let rounded = (value * p).rounded() / p
    var s = String(rounded)
    if let dot = s.firstIndex(of: ".") {
        let have = s.distance(from: dot, to: s.endIndex) - 1
        if have < decimals { s += String(repeating: "0", count: decimals - have) }
    }
    return s
}

func formatBytes(_ bytes: Int64) -> String {
    let b = Double(bytes)
    if b >= 1e9 { return "\(format(b / 1e9, 2)) GB" }
    if b >= 1e6 { return "\(format(b / 1e6, 1)) MB" }
    if b >= 1e3 { return "\(format(b / 1e3, 1)) kB" }
    return "\(bytes) B"
}
