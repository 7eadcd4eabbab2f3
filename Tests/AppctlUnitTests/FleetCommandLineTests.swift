import AppctlCore
import AppctlFleet
import AppctlKernel
import AppctlTestSupport
import Foundation
import Testing

/// Issue 12's command line without root: signing layers, publishing a bundle, syncing from a directory into a
/// policy directory with no daemon running, and the systemd units that run sync, checked by systemd's own verifier.
@Suite struct FleetCommandLineTests {
    @Test func signLayersPublishAndSyncFromADirectory() throws {
        let dir = TemporaryDirectory("appctl-fleet-cli"); defer { dir.remove() }
        for name in ["base", "web", "stamp"] {
            #expect(try appctl("key", "generate", "--private", dir.file("\(name).key"), "--public", dir.file("\(name).pub")).status == 0)
        }
        try dir.write("tree/a", [0x7f, 0x45, 0x4c, 0x46] + Array("one".utf8), mode: 0o755)
        try dir.write("tree2/b", Array("#!/bin/sh\necho b\n".utf8), mode: 0o755)
        #expect(try appctl("learn", "--root", dir.file("tree"), "--dpkg-admindir", dir.file("none"), "--apt-cache", "none", "--out", dir.file("inv1")).status == 0)
        #expect(try appctl("learn", "--root", dir.file("tree2"), "--dpkg-admindir", dir.file("none"), "--apt-cache", "none", "--out", dir.file("inv2")).status == 0)

        let base = try appctl("policy", "sign", "--key", dir.file("base.key"), "--serial", "3", "--name", "base",
                              "--delegate", "name=web,key=\(dir.file("web.pub")),kinds=script,max-valid=7d", "--out", dir.file("base.policy"), dir.file("inv1"))
        #expect(base.status == 0 && base.stdout.contains("layer base"), "\(base.stderr)")
        let show = try appctl("policy", "show", dir.file("base.policy"))
        #expect(show.stdout.contains("format:      appctl-policy 5") && show.stdout.contains("delegates: web to key"), "\(show.stdout)")
        // A supplement needs an expiry within its delegation's max-valid; one without is signed (the signer cannot
        // know the base's limits) but refused when the set is composed.
        let web = try appctl("policy", "sign", "--key", dir.file("web.key"), "--serial", "1", "--name", "web", "--supplement-of", "base",
                             "--expires", "2099-01-01", "--out", dir.file("web-long.policy"), dir.file("inv2"))
        #expect(web.status == 0, "\(web.stderr)")
        // Durations read the same everywhere: --expires 5d is five days from now.
        #expect(try appctl("policy", "sign", "--key", dir.file("web.key"), "--serial", "1", "--name", "web", "--supplement-of", "base",
                           "--expires", "5d", "--out", dir.file("web.policy"), dir.file("inv2")).status == 0)
        let expires = try PolicyLayers.readHeader(path: dir.file("web.policy"), shown: "web.policy").expires!.secondsSinceEpoch - Timestamp.now.secondsSinceEpoch
        #expect((5 * 86_400 - 60)...(5 * 86_400) ~= expires)
        // Usage errors: a supplement without a name, a supplement that delegates or widens local trust.
        for bad in [["--supplement-of", "base"], ["--name", "web", "--supplement-of", "base", "--delegate", "name=x,key=\(dir.file("web.pub"))"],
                    ["--name", "web", "--supplement-of", "base", "--maintenance", "max=1h"], ["--name", "Web"],
                    ["--name", "base", "--delegate", "name=web,key=\(dir.file("missing.pub"))"]] {
            let r = try run(appctlBinary, ["policy", "sign", "--key", dir.file("web.key"), "--serial", "1"] + bad + ["--out", dir.file("bad.policy"), dir.file("inv2")])
            #expect(r.status == 2, "\(bad): \(r.status) \(r.stderr)")
            #expect((try? linkStatus(dir.file("bad.policy"))) == nil)
        }

        // Publishing the long-lived supplement: sync refuses the set (max-valid), installs nothing.
        let stamp = ["--timestamp-key", dir.file("stamp.key"), "--out", dir.file("bundle")]
        #expect(try run(appctlBinary, ["bundle", "publish"] + stamp + [dir.file("base.policy"), dir.file("web-long.policy")]).status == 0)
        try dir.write("machine-id", "cli-test\n")
        let sync = ["sync", "--once", "--from", dir.file("bundle"), "--key", dir.file("base.pub"), "--timestamp-key", dir.file("stamp.pub"),
                    "--policy-dir", dir.file("policy.d"), "--state-dir", dir.file("state"), "--socket", dir.file("no.sock"),
                    "--machine-id-file", dir.file("machine-id"), "--report", dir.file("report.jsonl"), "--config", "/dev/null"]
        let refused = try run(appctlBinary, sync)
        #expect(refused.status == 1 && refused.stderr.contains("more than the 7d its delegation allows"), "\(refused.stderr)")
        #expect((try? linkStatus(dir.file("policy.d"))) == nil, "nothing installed")

        // The right one: installed, then nothing new.
        let published = try run(appctlBinary, ["bundle", "publish"] + stamp + [dir.file("base.policy"), dir.file("web.policy")])
        #expect(published.status == 0 && published.stdout.contains("timestamp version 2"), "\(published.stdout) \(published.stderr)")
        let installed = try run(appctlBinary, sync)
        #expect(installed.status == 0 && installed.stdout.hasPrefix("installed: base 3, web 1"), "\(installed.stdout) \(installed.stderr)")
        #expect(installed.stdout.contains("the daemon is not running"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.file("policy.d")).sorted() == ["base.policy", "web.policy"])
        #expect(try run(appctlBinary, sync).stdout.hasPrefix("nothing new"))
        // The installed directory, verified offline as the daemon would load it.
        let verified = try appctl("policy", "verify", "--key", dir.file("base.pub"), dir.file("policy.d"))
        #expect(verified.status == 0 && verified.stdout.contains("layer base serial 3") && verified.stdout.contains("layer web serial 1"), "\(verified.stdout) \(verified.stderr)")
        #expect(try appctl("policy", "verify", "--key", dir.file("web.pub"), dir.file("policy.d")).status == 1, "the base is checked with the key given")
        let report = try String(contentsOfFile: dir.file("report.jsonl"), encoding: .utf8).split(separator: "\n")
        #expect(report.count == 3)
        let last = try JSONSerialization.jsonObject(with: Data(report.last!.utf8)) as? [String: Any]
        #expect(last?["result"] as? String == "nothing-new" && last?["layers"] as? [String] == ["base 3", "web 1"])

        // Re-publishing only renews the timestamp; a second layer version without --ring is refused.
        let renewed = try run(appctlBinary, ["bundle", "publish"] + stamp + [dir.file("base.policy"), dir.file("web.policy")])
        #expect(renewed.stdout.contains("0 policy files written, 2 already there"), "\(renewed.stdout)")
        #expect(try run(appctlBinary, ["bundle", "publish"] + stamp + [dir.file("base.policy"), dir.file("web.policy"), dir.file("web-long.policy")]).status == 1)
        #expect(try run(appctlBinary, ["bundle", "publish", "--ring", "canary=120"] + stamp + [dir.file("base.policy")]).status == 2)
    }

    /// The units that run sync (and the daemon), as systemd itself reads them: `systemd-analyze verify` reports any
    /// unknown key, bad value or missing program.
    @Test func theSystemdUnitsVerify() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze") else {
            #expect(!isCI, "systemd-analyze is missing (tools/test installs systemd)")
            return
        }
        let dir = TemporaryDirectory("appctl-units"); defer { dir.remove() }
        let units = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("tools/systemd")
        var paths: [String] = []
        for name in ["appctl.service", "appctl-sync.service", "appctl-sync.timer"] {
            let text = try String(contentsOf: units.appendingPathComponent(name), encoding: .utf8)
            try dir.write(name, text.replacingOccurrences(of: "/usr/local/sbin/appctl", with: appctlBinary))
            paths.append(dir.file(name))
        }
        let verify = try run("/usr/bin/systemd-analyze", ["verify"] + paths)
        #expect(verify.status == 0 && verify.stderr.isEmpty, "\(verify.stderr)")
    }
}
