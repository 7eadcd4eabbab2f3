import AppctlTestSupport
import Foundation
import Testing

/// fs-verity against a kernel that has it. This host's kernel is built without CONFIG_FS_VERITY, so
/// `tools/verity-vm` boots Debian 12's cloud kernel under qemu (software emulation, about 30 s) with the
/// appctl binary under test, and runs tools/vm/verity-guest.sh there: learn records verity digests, the
/// daemon decides verity files by FS_IOC_MEASURE_VERITY without hashing them (even a 48 MiB one),
/// caches the verdict in the kernel for a file root does not own, denies unknown verity files with
/// EPERM and blocklisted content whose verity digest is listed.
@Suite(.serialized, .enabled(if: rootTestsEnabled, "needs root: installs qemu and the kernel package"))
struct VerityTests {
    static let expectedChecks = [
        "kernel-measures-verity", "learn-writes-format-2", "learn-records-verity-digest", "learn-no-digest-without-verity",
        "learn-summary-mentions-verity", "policy-verifies", "check-decides-by-verity", "daemon-ready",
        "exec-verity-file-allowed", "decided-by-verity", "verity-file-not-hashed", "verdict-cached-in-kernel",
        "exec-plain-file-allowed-by-hash", "plain-file-hashed", "exec-unknown-verity-file-denied-with-eperm",
        "big-verity-files-not-hashed", "big-verity-files-decided-by-verity", "reload-accepted", "blocklist-beats-verity", "daemon-stops-cleanly",
    ]

    @Test func verityFilesAreDecidedByTheKernelsMeasurement() throws {
        #expect(isRoot, "root-only tests running without root (CI=true): run tools/test as root")
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().path   // Tests/AppctlDaemonTests/ → the project
        let r = try run(root + "/tools/verity-vm", [appctlBinary])
        #expect(r.status == 0, "tools/verity-vm exit \(r.status):\n\(r.stdout)\n\(r.stderr)")
        let results = Dictionary(r.stdout.split(separator: "\n").compactMap { line -> (String, String)? in
            let f = line.split(separator: " ")
            return f.count >= 3 && f[0] == "APPCTL-VM-RESULT" ? (String(f[1]), String(f[2])) : nil
        }, uniquingKeysWith: { a, _ in a })
        for name in Self.expectedChecks {
            #expect(results[name] == "pass", "\(name): \(results[name] ?? "missing")\n\(r.stdout)")
        }
        #expect(r.stdout.contains("APPCTL-VM-DONE"))
    }
}
