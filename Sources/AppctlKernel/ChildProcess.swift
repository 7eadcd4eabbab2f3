import _AppctlShims
#if canImport(Glibc)
import Glibc
#endif

/// A program run by the command-line tools (never by the daemon, which never execs): Debian's own tools for the
/// formats appctl does not parse itself (`gpgv` for OpenPGP, `apt-helper cat-file` for compressed indexes,
/// `dpkg-deb` for package archives). `posix_spawn` with the standard output on a pipe the caller reads as a
/// stream; standard input from /dev/null or a descriptor the caller passes; standard error into an anonymous
/// memory file, so that a chatty child never blocks on it (a pipe nobody reads while the output is streamed would
/// fill), read once it exited, for the one-line reason when it fails.
public final class ChildProcess {
    public let pid: pid_t
    /// The read end of the child's standard output.
    public let output: FileDescriptor
    private let errorOutput: FileDescriptor
    private let program: String
    private var collected: Int32?

    /// Starts `arguments[0]` (an absolute path; no `PATH` search) with a minimal environment.
    /// - Parameter input: the child's standard input (a duplicate is given; the caller keeps its own); /dev/null if nil.
    public init(_ arguments: [String], input: FileDescriptor? = nil,
                environment: [String] = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"]) throws(Errno) {
        precondition(arguments.first?.hasPrefix("/") == true, "ChildProcess needs an absolute program path")
        program = arguments[0]
        var outPipe: [Int32] = [-1, -1]
        _ = try retryingOnInterrupt { appctl_pipe2(&outPipe, O_CLOEXEC) }
        let errFile = appctl_memfd("appctl-child-stderr")
        guard errFile >= 0 else {
            let error = Errno.current
            Glibc.close(outPipe[0]); Glibc.close(outPipe[1]); throw error
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let input {
            posix_spawn_file_actions_adddup2(&actions, input.rawValue, 0)
        } else {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        }
        posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errFile, 2)
        var childPID: pid_t = 0
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) }; envp.forEach { free($0) } }
        let rc = posix_spawn(&childPID, program, &actions, nil, argv, envp)
        Glibc.close(outPipe[1])
        guard rc == 0 else {
            Glibc.close(outPipe[0]); Glibc.close(errFile)
            throw Errno(rawValue: rc)
        }
        pid = childPID
        output = FileDescriptor(rawValue: outPipe[0])
        errorOutput = FileDescriptor(rawValue: errFile)
    }

    /// A child whose caller gave up on it (an error half-way through its output) is killed, never waited for
    /// while it blocks on a pipe nobody reads.
    deinit {
        output.close()
        if collected == nil {
            kill(pid, SIGKILL)
            _ = try? wait()
        }
        errorOutput.close()
    }

    /// Reads the whole standard output (bounded).
    public func readOutput(limit: Int) throws(Errno) -> [UInt8] { try output.readAll(limit: limit) }

    /// Waits for the child; returns its exit status (128+N for signal N). The standard error is kept for
    /// `errorText` and `failureReason`. The caller has read the output first (a child blocked on a full pipe never exits).
    @discardableResult
    public func wait() throws(Errno) -> Int32 {
        if let collected { return collected }
        var status: Int32 = 0
        _ = try retryingOnInterrupt { waitpid(pid, &status, 0) }
        let code = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        collected = code
        return code
    }

    /// What the child wrote to standard error (the first 4 MiB), read once it has exited.
    public lazy var errorText: String = {
        var text: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        var offset: Int64 = 0
        while text.count < 4 << 20 {
            let n = buffer.withUnsafeMutableBytes { (try? errorOutput.read(into: $0, at: offset)) ?? 0 }
            if n <= 0 { break }
            text += buffer.prefix(n)
            offset += Int64(n)
        }
        return String(decoding: text, as: UTF8.self)
    }()

    /// One line for an error message: the program, its status and the first line it wrote to standard error.
    public var failureReason: String {
        let first = errorText.split(separator: "\n").first(where: { !$0.hasPrefix("[GNUPG:]") }).map(String.init) ?? ""
        return "\(program) exited with status \(collected ?? -1)\(first.isEmpty ? "" : ": " + first)"
    }

    /// Runs a program to the end and returns its whole standard output, or throws its one-line failure.
    public static func run(_ arguments: [String], outputLimit: Int = 64 << 20) throws(ChildFailure) -> [UInt8] {
        let child: ChildProcess
        do { child = try ChildProcess(arguments) } catch { throw ChildFailure("cannot run \(arguments[0]): \(error)") }
        let output: [UInt8]
        do { output = try child.readOutput(limit: outputLimit) } catch {
            _ = try? child.wait()
            throw ChildFailure("\(arguments[0]): cannot read its output: \(error)")
        }
        let status: Int32
        do { status = try child.wait() } catch { throw ChildFailure("\(arguments[0]): cannot wait for it: \(error)") }
        guard status == 0 else { throw ChildFailure(child.failureReason) }
        return output
    }
}

/// A program that could not be run or did not succeed, in one line.
public struct ChildFailure: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
