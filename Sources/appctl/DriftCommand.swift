import AppctlCore
import AppctlDaemon
import AppctlKernel
import AppctlLearn
import AppctlPackages
import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif

extension Appctl {
    struct Drift: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Report what changed since the policy was signed: unknown programs, modified packaged files, overlay-only, superseded and absent entries, recent denies.",
            discussion: """
                Reads the daemon's configuration (policy, key, state directory, event log), verifies the policy as
                the daemon would, reads the local overlays the policy trusts, and scans the disk as 'learn' does
                (files owned by packages are checked against dpkg's MD5 records). Nothing is changed.
                - unknown: executable content no layer allows (enforce mode would deny it);
                - modified: packaged files whose content differs from their package;
                - overlay-only: digests an overlay allows that no signed policy carries yet (sign them in);
                - superseded: signed entries whose path now holds other content; the old digest is still allowed;
                - absent: signed entries whose content is found nowhere in the scanned roots;
                - recent denies: the last denies and would-denies in the event log.
                --metrics-file writes one Prometheus gauge per finding (node_exporter's textfile collector).
                """
        )

        @Option(help: ArgumentHelp("The daemon's configuration file.", valueName: "file"))
        var config: String = DaemonConfiguration.defaultPath

        @Option(name: .customLong("root"), help: ArgumentHelp("A directory to scan (repeatable). Default: those 'learn' scans.", valueName: "dir"))
        var roots: [String] = []

        @Option(help: ArgumentHelp("dpkg's database.", valueName: "dir"))
        var dpkgAdmindir: String = "/var/lib/dpkg"

        @Option(help: ArgumentHelp("Write the findings as Prometheus gauges to this file (atomically).", valueName: "file"))
        var metricsFile: String?

        @Option(help: ArgumentHelp("How many recent denies to show.", valueName: "n"))
        var recent: Int = 20

        @Flag(help: "One JSON object instead of text.")
        var json = false

        func run() throws {
            var configuration = DaemonConfiguration()
            if let bytes = try? readSmallFile(config, limit: 1 << 20) {
                do { try configuration.apply(file: config, text: String(decoding: bytes, as: UTF8.self)) } catch { throw CommandFailure("\(error)") }
            }
            guard let policyPath = configuration.policyDirectory ?? configuration.policyPath, let keyPath = configuration.publicKeyPath else {
                throw CommandFailure("\(config): no policy and key configured")
            }
            let key = try loadPublicKey(keyPath)
            var signed: [(digest: SHA256Digest, path: String)] = []
            var denied = Set<SHA256Digest>()
            var header: PolicyHeader
            do {
                // A policy directory: the layers are verified together first (as the daemon composes them), then each
                // one's entries are read for their paths. One file: one pass, the entries read are the ones the
                // signature is checked over.
                var files = [policyPath]
                header = PolicyHeader(issued: .now)
                if configuration.policyDirectory != nil {
                    header = try PolicyLayers.load(directory: policyPath, key: key, acceptExpired: true).header
                    files = try PolicyLayers.files(in: policyPath, suffix: PolicyLayers.enforcedSuffix).map { policyPath + "/" + $0 }
                }
                var first: PolicyHeader?
                for file in files {
                    let result = try PolicyReader(path: file).read(onAllow: { line in
                        signed.append((line.digest, PathEscaping.unescapedString(String(decoding: line.pathBytes, as: UTF8.self))))
                    }, onDeny: { entry, _ in denied.insert(entry.digest) })
                    if configuration.policyDirectory == nil { try LoadedPolicy.verify(result, path: file, key: key, now: .now, acceptExpired: true) }
                    first = first ?? result.header
                }
                if configuration.policyDirectory == nil { header = first! }
            } catch { throw CommandFailure(error) }
            let overlays: [Overlay]
            do { overlays = try OverlayStore(stateDirectory: configuration.stateDirectory).readAll() } catch { throw CommandFailure("\(error)") }
            let table = OverlayTable(overlays, header: header)
            var dpkg: DpkgDatabase?
            if (try? linkStatus(dpkgAdmindir + "/info")) != nil { dpkg = try? DpkgDatabase(adminDir: dpkgAdmindir) }
            for root in roots where (try? linkStatus(root))?.isDirectory != true { throw CommandFailure("\(root): not a directory") }
            // Progress on a terminal only (as learn): a timer's or a pipe's output stays the report alone.
            let progress = isatty(2) == 1 ? ProgressLine() : nil
            let scan = Scanner(options: LearnOptions(roots: roots.isEmpty ? LearnOptions.defaultRoots : roots, dpkg: dpkg, includeModified: true))
                .run(progress: progress.map { p in { p.show($0) } })
            progress?.clear()
            let events = (try? readTail(configuration.eventsPath, bytes: 4 << 20)) ?? []
            let report = DriftReport.compute(signed: signed, denied: denied, overlays: overlays, table: table, scan: scan, recentEvents: events, recentLimit: recent)
            if let metricsFile {
                do { try AtomicFileWriter.write(Array(report.prometheusText.utf8), to: metricsFile, permissions: 0o644) } catch {
                    throw CommandFailure("\(metricsFile): cannot write: \(error)")
                }
            }
            // The counts, for `appctl status` and the host report (the daemon reads this file; it never scans).
            let summary = "time \(Timestamp.now.secondsSinceEpoch)\nunknown \(report.unknown.count)\nmodified_packaged \(report.modifiedPackaged.count)\n"
                + "overlay_only \(report.overlayOnly.count)\nsuperseded \(report.superseded.count)\nabsent \(report.absent.count)\n"
            mkdir(configuration.stateDirectory, 0o700)
            try? AtomicFileWriter.write(Array(summary.utf8), to: configuration.stateDirectory + "/drift-summary", permissions: 0o600)
            if json { print(Self.json(report)) } else { Self.printText(report, policy: policyPath, serial: header.serial) }
        }

        static func printText(_ r: DriftReport, policy: String, serial: UInt64?) {
            print("drift against \(policy) (serial \(serial.map(String.init) ?? "-")):")
            let sections: [(String, [DriftReport.File])] = [
                ("unknown (no layer allows them)", r.unknown), ("modified packaged files", r.modifiedPackaged),
                ("overlay-only (not in a signed policy yet)", r.overlayOnly), ("superseded (old digest still allowed)", r.superseded),
                ("absent (content found nowhere here)", r.absent),
            ]
            for (title, files) in sections {
                print("  \(title): \(files.count)")
                for f in files.prefix(20) { print("    \(PathEscaping.escapeText(Array(f.path.utf8)))  \(f.digest.map { String($0.hex.prefix(16)) } ?? "-")  \(f.note)") }
                if files.count > 20 { print("    … and \(files.count - 20) more (--json lists all)") }
            }
            print("  recent denies: \(r.recentDenies.count)")
            for line in r.recentDenies { print("    \(line)") }
        }

        static func json(_ r: DriftReport) -> String {
            func files(_ list: [DriftReport.File]) -> String {
                "[" + list.map { "{\"path\":\(jsonString($0.path)),\"sha256\":\($0.digest.map { "\"\($0.hex)\"" } ?? "null"),\"note\":\(jsonString($0.note))}" }.joined(separator: ",") + "]"
            }
            return "{\"unknown\":\(files(r.unknown)),\"modified_packaged\":\(files(r.modifiedPackaged)),\"overlay_only\":\(files(r.overlayOnly)),"
                + "\"superseded\":\(files(r.superseded)),\"absent\":\(files(r.absent)),"
                // Event lines as strings: a line cut or garbled in the log cannot break this JSON.
                + "\"recent_denies\":[\(r.recentDenies.map(jsonString).joined(separator: ","))]}"
        }
    }
}

/// The last lines of a file, reading at most `bytes` from its end.
func readTail(_ path: String, bytes: Int) throws(Errno) -> [String] {
    let fd = try FileDescriptor.open(path, [.readOnly, .nonBlocking])
    defer { fd.close() }
    let size = Int64(try fd.status().st_size)
    let start = max(0, size - Int64(bytes))
    let data = fd.readBytes(at: start, count: Int(size - start))
    var lines = data.split(separator: UInt8(ascii: "\n")).map { String(decoding: $0, as: UTF8.self) }
    if start > 0, !lines.isEmpty { lines.removeFirst() }   // a partial first line
    return lines
}
