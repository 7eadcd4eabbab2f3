import AppctlCore
import AppctlKernel
import Synchronization

/// Execution profiles on the event path (issue 15): after the policy allowed an exec, whether the process's service
/// or user may start that program, and, for an interpreter, whether it may take inline code. Also learns profiles.
///
/// Only execs are judged (a program started; the open that completes an exec repeats its answer). The kernel answers
/// alike for every process, so an exec is answered there only when every profile lists the program and lets it take
/// inline code if it is an interpreter (`kernelEvents`); every other exec comes here, and costs one read of
/// /proc/TID/cgroup (and /proc/TID/status when a profile is for a user). An interpreter's command line is read from
/// the waiting thread's memory (`pendingExec`), on a hash worker, never on the event thread.
final class ProfileGate: Sendable {
    enum Judgement {
        /// The verdict stands.
        case unchanged
        /// A profile refuses it: `reason` and the subject whose profile did.
        case refuse(Reason, subject: String)
        /// The command line must be read first: hand the request to a hash worker, then judge again there.
        case needsWorker
    }

    let policy: PolicyState
    let facts: any FileFacts
    let caches: DecisionCaches
    let learned: LearnRecorder
    let statistics: Statistics

    init(policy: PolicyState, facts: any FileFacts, caches: DecisionCaches, learned: LearnRecorder, statistics: Statistics) {
        self.policy = policy; self.facts = facts; self.caches = caches; self.learned = learned; self.statistics = statistics
    }

    /// Whether profiles are in force or being learned (else no event needs the gate).
    var inPlay: Bool {
        let (table, learning) = policy.profileState
        return !table.isEmpty || learning
    }

    /// Judges an allowed exec of `digest` by thread `tid` (its file `key`, its descriptor `fd`). `onWorker`: the
    /// command line may be read here. `scriptBefore`: what `takeScriptBefore` returned on the event thread.
    func judge(tid: Int32, key: FileKey?, digest: SHA256Digest, fd: Int32, onWorker: Bool, scriptBefore: FileKey?) -> Judgement {
        let (table, learning) = policy.profileState
        guard !table.isEmpty || learning, let key else { return .unchanged }
        let family = facts.interpreterFamily(ofProgram: digest, key: key)
        // The loader is exec'd for every dynamically linked program (its PT_INTERP), in the same call: that is not a
        // program the subject chose. Run directly (`ld.so PROGRAM`, a copy of it included), the program it loads is
        // judged when the loader opens it (`judgeLoaderRun`, told by the process itself, not by the loader's name or
        // inode: an upgraded loader is a new inode), from the command line the kernel copied.
        if family == .loader { return .unchanged }
        return judgeStart(of: digest, family: family, by: tid, fd: fd, table: table, learning: learning, onWorker: onWorker) {
            facts.execTakesInlineCode(tid: tid, key: key, family: $0, scriptBefore: scriptBefore)
        }
    }

    /// The rule for one program start by thread `tid`, once the caller knows it is one: the subjects' profiles, the
    /// command line (`takesInlineCode`, only when it matters and only on a worker) and learning.
    private func judgeStart(of digest: SHA256Digest, family: InterpreterFamily?, by tid: Int32, fd: Int32, table: ProfileTable, learning: Bool,
                            onWorker: Bool, takesInlineCode: (InterpreterFamily) -> Bool) -> Judgement {
        if !learning && table.sameForEveryProcess(digest, isInterpreter: family != nil) { return .unchanged }
        guard let subjects = facts.subjects(of: tid, services: learning || table.hasServiceProfiles, users: learning || table.hasUserProfiles) else {
            // The process is gone or /proc cannot say who it is: fail closed where profiles exist.
            return table.isEmpty ? .unchanged : .refuse(.notInProfile, subject: "unknown")
        }
        let outcome = table.check(digest, subjects: subjects)
        var inlineForbiddenBy: String?
        switch outcome {
        case .unprofiled:
            if !learning { return .unchanged }
        case .notInProfile(let subject):
            if !learning { return .refuse(.notInProfile, subject: subject) }
        case .admitted(let forbidden):
            inlineForbiddenBy = forbidden
        }
        // The command line matters for an interpreter a profile forbids inline code, and for learning.
        var inline = false
        if let family, inlineForbiddenBy != nil || learning {
            guard onWorker else { return .needsWorker }
            statistics.add(.profileCommandLineChecks)
            inline = takesInlineCode(family)
        }
        if learning {
            learned.recordProfile(services: subjects.services, users: subjects.uids.filter { $0 != 0 }, digest: digest, inline: inline, fd: fd)
            if case .notInProfile(let subject) = outcome { return .refuse(.notInProfile, subject: subject) }
        }
        if inline, let inlineForbiddenBy { return .refuse(.inlineCode, subject: inlineForbiddenBy) }
        return .unchanged
    }

    /// On the event thread, for every exec while profiles are in force or learned: the `#!` script this thread
    /// exec'd (and was allowed) just before (the kernel then execs its interpreter in the same call, with the script as
    /// its program). Taken by the next exec event of the thread, whatever it is, so that it counts once.
    func takeScriptBefore(tid: Int32) -> FileKey? {
        let (table, learning) = policy.profileState
        guard !table.isEmpty || learning else { return nil }
        return caches.scriptExecs.withLock { $0.removeValue(forKey: tid) }
    }

    /// After an exec was allowed: remembers it for the thread when it is a `#!` script (`takeScriptBefore`).
    func rememberAllowedExec(tid: Int32, key: FileKey?, fd: Int32) {
        let (table, learning) = policy.profileState
        guard !table.isEmpty || learning, let key, contentClass(key: key, fd: fd) == .shebang else { return }
        caches.scriptExecs.withLock { $0.insert(key, for: tid) }
    }

    /// An open of the program a process that runs the loader itself loads (`ld.so [options] PROGRAM [args]`): the
    /// subject starts PROGRAM, so it is judged as an exec of it. Told by the process's auxiliary vector (AT_BASE 0),
    /// not by recognising the loader's content (a cache an attacker can flood). Its arguments come from
    /// /proc/PID/cmdline, the copy the kernel made at the exec (the loader's fresh image shares its memory with no
    /// one); read on a worker.
    func judgeLoaderRun(pid: Int32, key: FileKey?, digest: SHA256Digest, fd: Int32, onWorker: Bool) -> Judgement {
        let (table, learning) = policy.profileState
        guard !table.isEmpty || learning, let key else { return .unchanged }
        // A process the kernel ran without a program interpreter (AT_BASE 0) whose executable is a loader, not a static
        // program (a backup agent reading binaries starts none of them), that opens an ELF file: the program its
        // command line names is a start (whatever its ELF flags say); any other file it opens is a library it loads,
        // unless the command line cannot tell, and then an ELF program counts. All but AT_BASE on a worker: the
        // executable is opened and the command line's path walked (either could be on a filesystem that never answers).
        // The loader loads ELF files only: anything else (a script an interpreter opens) needs no /proc read.
        guard contentClass(key: key, fd: fd) == .elf, facts.runsWithoutInterpreter(pid: pid) else { return .unchanged }
        guard onWorker else { return .needsWorker }
        guard facts.runsLoaderItself(pid: pid) else { return .unchanged }
        switch facts.isLoaderProgram(pid: pid, key: key) {
        case true?: break
        case false?: return .unchanged
        case nil: guard isELFProgram(key: key, fd: fd) else { return .unchanged }
        }
        return judgeStart(of: digest, family: facts.interpreterFamily(ofProgram: digest, key: key), by: pid, fd: fd, table: table, learning: learning,
                          onWorker: onWorker) { facts.loaderRunTakesInlineCode(pid: pid, family: $0) }
    }

    /// Whether the file is an ELF program (`ContentClassifier.isELFProgram`), cached for files only root can write.
    func isELFProgram(key: FileKey, fd: Int32) -> Bool {
        caches.classified(caches.elfPrograms, key) { facts.isELFProgram(of: fd) }
    }

    /// ELF, `#!` or other, cached for files only root can write (the cache the decision ladder fills).
    private func contentClass(key: FileKey, fd: Int32) -> ContentClass {
        caches.classified(caches.contentClasses, key) { facts.contentClass(of: fd) }
    }

    /// Which events of this file the kernel may answer for every process from now on (its verdict cached there).
    /// Without profiles, exec and open. With profiles: exec only for what every profile lists (and lets take inline
    /// code, if it is an interpreter) and for the loader (never judged as an exec); never for a `#!` script (its
    /// interpreter's exec, which follows, is told from inline code by it). An ELF program some profile excludes gets
    /// no open verdict either: `ld.so PROGRAM` opens it, and that open must reach `judgeLoaderRun`. While profiles are
    /// learned, no exec verdict, and no open verdict for ELF programs.
    func kernelEvents(_ digest: SHA256Digest, key: FileKey, fd: Int32) -> FanotifyGroup.Events {
        let (table, learning) = policy.profileState
        if table.isEmpty && !learning { return [.openExecPermission, .openPermission] }
        let family = facts.interpreterFamily(ofProgram: digest, key: key)
        if family == .loader && !learning { return [.openExecPermission, .openPermission] }
        if contentClass(key: key, fd: fd) == .shebang { return [.openPermission] }
        if !learning && table.sameForEveryProcess(digest, isInterpreter: family != nil) { return [.openExecPermission, .openPermission] }
        if isELFProgram(key: key, fd: fd) { return [] }
        return [.openPermission]
    }
}
