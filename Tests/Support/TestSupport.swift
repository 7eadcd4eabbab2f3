import AppctlCore
import AppctlKernel
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// True when tests run as root. Root-only tests are enabled when this holds or when `CI=true`
/// (so that CI without privileges fails loudly instead of skipping).
public let isRoot = getuid() == 0
public let isCI = ProcessInfo.processInfo.environment["CI"] == "true"
public let rootTestsEnabled = isRoot || isCI

/// A fresh directory under /tmp, removed by `remove()`.
public final class TemporaryDirectory: @unchecked Sendable {
    public let path: String

    public init(_ label: String = "appctl-test") {
        var template = Array("/tmp/\(label).XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { fatalError("mkdtemp failed: \(Errno.current)") }
        path = String(cString: p)
    }

    public func file(_ name: String) -> String { path + "/" + name }

    public func write(_ name: String, _ text: String, mode: mode_t = 0o644) throws {
        try write(name, Array(text.utf8), mode: mode)
    }

    public func write(_ name: String, _ bytes: [UInt8], mode: mode_t = 0o644) throws {
        let p = file(name)
        try FileManager.default.createDirectory(atPath: (p as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: p, contents: Data(bytes))
        chmod(p, mode)
    }

    public func read(_ name: String) throws -> [UInt8] {
        Array(try Data(contentsOf: URL(fileURLWithPath: file(name))))
    }

    public func remove() {
        // Restore permissions a test may have taken away, then delete.
        _ = try? run("/bin/chmod", ["-R", "u+rwx", path])
        try? FileManager.default.removeItem(atPath: path)
    }
}

public struct ProcessResult: Sendable {
    public var status: Int32
    public var stdout: String
    public var stderr: String
}

/// Runs a program to completion and captures its output.
@discardableResult
public func run(_ executable: String, _ arguments: [String], environment: [String: String]? = nil,
                stdin: String? = nil) throws -> ProcessResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    if let environment { process.environment = environment }
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    if let stdin {
        let input = Pipe()
        process.standardInput = input
        try process.run()
        input.fileHandleForWriting.write(Data(stdin.utf8))
        try input.fileHandleForWriting.close()
    } else {
        process.standardInput = FileHandle.nullDevice
        try process.run()
    }
    // Drain both pipes before waiting, so a chatty child cannot fill a pipe and stall.
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    let errData = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return ProcessResult(status: process.terminationStatus,
                         stdout: String(decoding: outData, as: UTF8.self),
                         stderr: String(decoding: errData, as: UTF8.self))
}

/// The `appctl` binary built next to the test bundle (tools/test builds it first), or `APPCTL_TEST_BINARY`:
/// another build, to show that a test fails on the build before a fix.
public let appctlBinary: String = {
    if let other = ProcessInfo.processInfo.environment["APPCTL_TEST_BINARY"], !other.isEmpty { return other }
    let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    var dir = (exe as NSString).deletingLastPathComponent
    // The test binary lives in .build/<config>/appctlPackageTests.xctest (a file on Linux).
    if dir.hasSuffix(".xctest") { dir = (dir as NSString).deletingLastPathComponent }
    return dir + "/appctl"
}()

/// Runs the built `appctl` with arguments.
@discardableResult
public func appctl(_ arguments: String..., stdin: String? = nil) throws -> ProcessResult {
    try run(appctlBinary, arguments, stdin: stdin)
}

/// A signing key pair kept in memory and on disk for a test.
public struct TestKeys: Sendable {
    public let privateKey: Ed25519PrivateKey
    public let publicKey: Ed25519PublicKey
    public let privatePath: String
    public let publicPath: String

    public init(in dir: TemporaryDirectory, name: String = "signing") throws {
        let pair = try Ed25519PrivateKey.generatePEM()
        try dir.write("\(name).key", pair.privatePEM, mode: 0o600)
        try dir.write("\(name).pub", pair.publicPEM)
        privateKey = try Ed25519PrivateKey(pem: pair.privatePEM)
        publicKey = pair.publicKey
        privatePath = dir.file("\(name).key")
        publicPath = dir.file("\(name).pub")
    }
}

/// SHA-256 by coreutils, the reference the tests compare against.
public func sha256sum(_ path: String) throws -> String {
    let r = try run("/usr/bin/sha256sum", [path])
    return String(r.stdout.prefix(64))
}

/// Peak resident set size of this process so far, in bytes.
public func peakRSS() -> Int {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return usage.ru_maxrss * 1024
}
