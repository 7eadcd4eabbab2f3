import AppctlCore
import AppctlDaemon
import AppctlKernel
import AppctlTestSupport
import Foundation
import Testing

/// Issue 10: restarts that never drop enforcement (last-known-good policies, rollbacks) and a permission group that
/// cannot fail open when its queue fills.
@Suite(.serialized, .enabled(if: rootTestsEnabled, "needs root: fanotify and mounts"))
struct PolicyLifecycleTests {
    init() {
        #expect(isRoot, "root-only tests running without root (CI=true): run tools/test as root")
    }

    /// Issue 10, case 10: a restart after the policy in force expired (or with a corrupt policy file) keeps
    /// enforcing the policy last applied, and says so; it does not leave the host open.
    @Test func restartWithAnExpiredOrCorruptPolicyEnforcesTheLastKnownGood() throws {
        let h = try DaemonHarness(); defer { h.stop() }
        let unknown = try h.makeUnknown("unknown")
        try h.writePolicy(serial: 10, expires: Timestamp(secondsSinceEpoch: Timestamp.now.secondsSinceEpoch + 5))
        try h.start(mode: "enforce")
        #expect(try h.waitUntil(30) { try h.status()["policy_expired"] as? Bool == true }, "the policy expires while in force")
        #expect(try h.exec(unknown) == 126, "an expired policy in force is still enforced")
        #expect(h.signalDaemon(SIGTERM) == 0)
        // Restart: the configured policy is now expired.
        try h.start(mode: "enforce")
        var status = try h.status()
        #expect(status["policy_source"] as? String == "last-known-good")
        #expect(status["policy_serial"] as? Int == 10)
        #expect((status["last_policy_error"] as? String ?? "").contains("expired"))
        #expect(try h.exec(unknown) == 126)
        #expect(try h.exec(h.mount + "/known") == 0)
        #expect(h.daemonLog.contains("last-known-good"))
        #expect(h.signalDaemon(SIGTERM) == 0)
        // And a corrupt file in its place.
        try "not a policy\n".write(toFile: h.policyPath, atomically: false, encoding: .utf8)
        try h.start(mode: "enforce")
        status = try h.status()
        #expect(status["policy_source"] as? String == "last-known-good")
        #expect(try h.exec(unknown) == 126)
        // A valid new policy still replaces it at once.
        try h.writePolicy(serial: 11)
        #expect(try appctl("reload", "--socket", h.socket).status == 0)
        #expect(try h.status()["policy_source"] as? String == "configured")
    }

    /// Review finding: after an explicit rollback the fallback must enforce what was rolled back *to*, and must not
    /// raise the recorded serial; an unreadable serial record refuses rather than switching rollback protection off.
    @Test func lastKnownGoodFollowsAnExplicitRollback() throws {
        let h = try DaemonHarness(); defer { h.stop() }
        try h.writePolicy(serial: 20)
        try h.start(mode: "enforce", extra: ["--allow-rollback"])
        try h.writePolicy(serial: 5)
        #expect(try appctl("reload", "--socket", h.socket).status == 0)
        #expect(h.signalDaemon(SIGTERM) == 0)
        try "garbage\n".write(toFile: h.policyPath, atomically: false, encoding: .utf8)
        try h.start(mode: "enforce")
        let status = try h.status()
        #expect(status["policy_source"] as? String == "last-known-good")
        #expect(status["policy_serial"] as? Int == 5, "the fallback enforced the policy rolled back from")
        #expect((try? String(contentsOfFile: h.stateDir + "/last-serial", encoding: .utf8)) == "5\n")
        #expect(h.signalDaemon(SIGTERM) == 0)
        try "not a number\n".write(toFile: h.stateDir + "/last-serial", atomically: false, encoding: .utf8)
        #expect(throws: (any Error).self) { try h.start(mode: "enforce") }
        #expect(h.daemonLog.contains("rollback protection needs it"))
    }

    /// Issue 10, case 6: a bounded queue drops new permission events when full and the kernel allows them.
    /// The group must be created unlimited (queue and marks): the kernel shows its flags in fdinfo.
    @Test func permissionGroupHasAnUnlimitedQueueAndMarks() throws {
        let h = try DaemonHarness(); defer { h.stop() }
        try h.start(mode: "monitor")
        let fdDirectory = "/proc/\(h.daemonPID)/fdinfo"
        var flags: [UInt32] = []
        for entry in try FileManager.default.contentsOfDirectory(atPath: fdDirectory) {
            guard let text = try? String(contentsOfFile: fdDirectory + "/" + entry, encoding: .utf8),
                  let line = text.split(separator: "\n").first(where: { $0.hasPrefix("fanotify flags:") }) else { continue }
            let value = line.split(separator: " ").dropFirst(1).first.map { String($0.dropFirst("flags:".count)) } ?? ""
            if let v = UInt32(value, radix: 16) { flags.append(v) }
        }
        let contentGroups = flags.filter { $0 & 0x0c == 0x04 }   // FAN_CLASS_CONTENT
        #expect(contentGroups.count == 1, "fanotify groups: \(flags.map { String($0, radix: 16) })")
        for f in contentGroups {
            #expect(f & 0x10 != 0, "FAN_UNLIMITED_QUEUE missing: a full queue would allow")
            #expect(f & 0x20 != 0, "FAN_UNLIMITED_MARKS missing: the mark limit could stop new filesystems being marked")
        }
        #expect(try h.status()["queue_overflows"] as? Int == 0)
    }
}
