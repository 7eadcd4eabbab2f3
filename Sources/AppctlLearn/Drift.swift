import AppctlCore
import AppctlKernel

/// What has changed on a host since its policy was signed (`appctl drift`): the seed's change monitoring.
/// Computed from what the caller gathered (the verified policy's entries, the overlays the policy trusts, a scan
/// of the disk, the daemon's recent events), so it needs no root to test.
public struct DriftReport: Sendable {
    public struct File: Sendable, Hashable {
        public var path: String
        public var digest: SHA256Digest?
        public var note: String
        public init(path: String, digest: SHA256Digest?, note: String) { self.path = path; self.digest = digest; self.note = note }
    }

    /// Executable content on disk that no layer allows.
    public var unknown: [File] = []
    /// Files a package owns whose content differs from what dpkg recorded.
    public var modifiedPackaged: [File] = []
    /// Digests an overlay allows that no signed policy carries yet (adopt them with a signed policy).
    public var overlayOnly: [File] = []
    /// Signed entries whose path now holds other content: the old digest is still allowed (an old, maybe
    /// vulnerable version runs from any copy).
    public var superseded: [File] = []
    /// Signed entries whose content exists nowhere in the scanned roots.
    public var absent: [File] = []
    /// The last denies and would-denies from the event log.
    public var recentDenies: [String] = []

    public init() {}

    /// - Parameters:
    ///   - signed: (digest, path) of every allow entry of the verified policy.
    ///   - overlays: the overlays with the table the policy's rules make of them.
    ///   - scan: what `Scanner` found (run with `includeModified`, so modified packaged files carry a digest).
    ///   - recentEvents: JSON lines of the event log, newest last.
    ///   - denied: the policy's blocklist (a blocklisted digest is never allowed, whatever else lists it).
    public static func compute(signed: [(digest: SHA256Digest, path: String)], denied: Set<SHA256Digest> = [], overlays: [Overlay],
                               table: OverlayTable, scan: LearnReport, recentEvents: [String], recentLimit: Int = 20) -> DriftReport {
        var report = DriftReport()
        let signedDigests = Set(signed.map(\.digest)).subtracting(denied)
        var onDisk: [String: SHA256Digest] = [:]
        for entry in scan.entries { onDisk[PathEscaping.unescapedString(entry.escapedPath)] = entry.digest }
        let diskDigests = Set(onDisk.values)
        for entry in scan.entries where !signedDigests.contains(entry.digest) && (table.layer(of: entry.digest) == nil || denied.contains(entry.digest)) {
            report.unknown.append(File(path: PathEscaping.unescapedString(entry.escapedPath), digest: entry.digest,
                                       note: denied.contains(entry.digest) ? "\(entry.kind.rawValue), blocklisted" : entry.kind.rawValue))
        }
        for exclusion in scan.exclusions {
            if case .modifiedFromPackage(let package) = exclusion.reason {
                report.modifiedPackaged.append(File(path: exclusion.path, digest: onDisk[exclusion.path], note: "differs from package \(package)"))
            }
        }
        for overlay in overlays {
            for package in overlay.packages {
                for file in package.files where table.layer(of: file.digest) != nil && !signedDigests.contains(file.digest) {
                    report.overlayOnly.append(File(path: PathEscaping.unescapedString(file.escapedPath), digest: file.digest,
                                                   note: "overlay:\(overlay.layer) \(package.label)"))
                }
            }
            for window in overlay.windows {
                for file in window.files where table.layer(of: file.digest) != nil && !signedDigests.contains(file.digest) {
                    report.overlayOnly.append(File(path: PathEscaping.unescapedString(file.escapedPath), digest: file.digest,
                                                   note: "overlay:\(overlay.layer) window \(window.id): \(window.reason)"))
                }
            }
        }
        for entry in signed {
            if let now = onDisk[entry.path], now != entry.digest {
                report.superseded.append(File(path: entry.path, digest: entry.digest, note: "now \(now.hex.prefix(16))…"))
            }
            if !diskDigests.contains(entry.digest) {
                report.absent.append(File(path: entry.path, digest: entry.digest, note: "content found nowhere in the scanned roots"))
            }
        }
        report.recentDenies = Array(recentEvents.filter { $0.contains("\"decision\":\"deny\"") || $0.contains("\"decision\":\"would-deny\"") }.suffix(recentLimit))
        for list in [\DriftReport.unknown, \.modifiedPackaged, \.overlayOnly, \.superseded, \.absent] {
            report[keyPath: list].sort { $0.path < $1.path }
        }
        return report
    }

    /// The gauges, one per finding (Prometheus text exposition, node_exporter textfile collector).
    public var prometheusText: String {
        let gauges: [(String, String, Int)] = [
            ("unknown_files", "Executable files on disk that no layer allows.", unknown.count),
            ("modified_packaged_files", "Packaged files whose content differs from dpkg's record.", modifiedPackaged.count),
            ("overlay_only_entries", "Overlay digests no signed policy carries yet.", overlayOnly.count),
            ("superseded_entries", "Signed entries whose path holds other content now (old digest still allowed).", superseded.count),
            ("absent_entries", "Signed entries whose content exists nowhere in the scanned roots.", absent.count),
            ("recent_denies", "Denies and would-denies among the last events read.", recentDenies.count),
        ]
        return gauges.map { "# HELP appctl_drift_\($0.0) \($0.1)\n# TYPE appctl_drift_\($0.0) gauge\nappctl_drift_\($0.0) \($0.2)\n" }.joined()
    }
}
