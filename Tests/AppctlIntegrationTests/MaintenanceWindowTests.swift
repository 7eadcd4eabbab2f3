import AppctlCore
import AppctlKernel
import AppctlTestSupport
import Foundation
import Testing

/// Issue 11: maintenance windows trust what their own processes write, and nothing else.
@Suite(.serialized, .enabled(if: rootTestsEnabled, "needs root: fanotify, mounts and mount namespaces"))
struct MaintenanceWindowTests {
    init() {
        #expect(isRoot, "root-only tests running without root (CI=true): run tools/test as root")
    }

    @Test func aWindowTrustsItsOwnWritesOnlyAndClosesWithItsCommand() throws {
        let h = try DaemonHarness(); defer { h.stop() }
        let opt = h.mount + "/opt"
        try FileManager.default.createDirectory(atPath: opt, withIntermediateDirectories: true)
        var header = PolicyHeader(serial: 10, issued: .now, keyID: h.keys.publicKey.keyID)
        header.maintenance = MaintenanceRule(maximumSeconds: 600, paths: [opt])
        let known = AllowEntry(digest: try h.digest(h.mount + "/known"), size: UInt64(try linkStatus(h.mount + "/known").st_size), kind: .elfExec,
                               origin: .manual, path: Array((h.mount + "/known").utf8))
        try PolicyWriter.write(path: h.policyPath, header: header, allows: [known], denies: [], signingKey: h.keys.privateKey)
        try h.start(mode: "enforce")

        // Refusals first: longer than the policy allows, a path outside it.
        let tooLong = try appctl("maintenance", "start", "--for", "2h", "--reason", "too long", "--path", opt, "--socket", h.socket, "--", "/bin/true")
        #expect(tooLong.status != 0 && tooLong.stderr.contains("longer than the policy's maximum"), "\(tooLong.stderr)")
        let outside = try appctl("maintenance", "start", "--for", "5m", "--reason", "outside", "--path", h.mount, "--socket", h.socket, "--", "/bin/true")
        #expect(outside.status != 0 && outside.stderr.contains("not under the policy's maintenance paths"), "\(outside.stderr)")

        // The window's command writes a program and runs it at once; it waits for the test's flag before it ends,
        // so that another process can write into the same directory while the window is open.
        let flag = h.dir.file("flag")
        let script = """
            cp /usr/bin/true \(opt)/tool && printf 'window-\(UUID().uuidString)' >> \(opt)/tool && \(opt)/tool && echo ran-in-window
            cp /usr/bin/true \(opt)/loose && printf 'loose' >> \(opt)/loose && chmod 0777 \(opt)/loose
            while [ ! -e \(flag) ]; do sleep 0.02; done
            """
        let window = Process()
        window.executableURL = URL(fileURLWithPath: appctlBinary)
        window.arguments = ["maintenance", "start", "--for", "5m", "--reason", "install tool (ticket 42)", "--path", opt, "--socket", h.socket,
                            "--", "/bin/sh", "-c", script]
        let out = Pipe()
        window.standardOutput = out
        window.standardError = out
        try window.run()
        #expect(try h.waitUntil(30) { try appctl("maintenance", "status", "--socket", h.socket).stdout.contains("files trusted so far") })
        #expect(try h.waitUntil(30) { FileManager.default.fileExists(atPath: opt + "/loose") })
        // Another process (outside the window's mounts) drops a program into the same directory meanwhile.
        let dropped = try h.copyExecutable("/usr/bin/true", to: "opt/dropped", appending: Array("dropped-\(UUID().uuidString)".utf8))
        FileManager.default.createFile(atPath: flag, contents: nil)
        let output = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        window.waitUntilExit()
        #expect(window.terminationStatus == 0, "\(output)")
        #expect(output.contains("ran-in-window"), "a program the window wrote runs at once: \(output)")
        // The report names what was trusted and what was not (`loose` may also be listed with its first content:
        // a notice is examined when it is read, and the chmod may or may not have come first).
        #expect(output.contains("closed (ended by appctl maintenance end)") && output.contains("elf-exec \(opt)/tool"), "\(output)")
        #expect(output.contains("loose: not only root can change it (group 0, everyone; mode 777)"), "\(output)")

        #expect(try h.exec(opt + "/tool") == 0, "the window's program stays allowed after it closed (overlay:maintenance)")
        #expect(try h.exec(dropped) == 126, "written during the window by another process: not trusted")
        #expect(try h.exec(opt + "/loose") == 126, "writable by others: not trusted")
        #expect(try appctl("maintenance", "status", "--socket", h.socket).stdout.contains("no maintenance window is open"))
        let reports = try FileManager.default.contentsOfDirectory(atPath: h.stateDir + "/maintenance")
        #expect(reports.count == 1)

        // A policy without a maintenance line allows no window, and drops the trust of those already written.
        try h.writePolicy(serial: 11)
        #expect(try appctl("reload", "--socket", h.socket).status == 0)
        #expect(try h.exec(opt + "/tool") == 126, "the policy no longer allows maintenance entries")
        let refused = try appctl("maintenance", "start", "--for", "5m", "--reason", "x", "--path", opt, "--socket", h.socket, "--", "/bin/true")
        #expect(refused.status != 0 && refused.stderr.contains("allows no maintenance window"), "\(refused.stderr)")
    }
}
