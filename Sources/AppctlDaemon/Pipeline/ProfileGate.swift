import AppctlCore
import AppctlKernel
import Synchronization

/// Execution profiles on the event path (issue 15): after the policy allowed an exec, whether the process's service
/// or user may start that program, and, for an interpreter, whether it may take inline code. Also learns profiles.
///
/// Only execs are judged (a program started; the open that completes an exec repeats its answer). The kernel answers
/// alike for every process, so an exec is answered there only when every profile lists the program and lets it take
/// inline code if it is an interpreter (`execMayStayInKernel`); every other exec comes here, and costs one read of
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

    /// Judges an allowed exec of `digest` by thread `tid` (its file `key`, its descriptor `fd`). `onWorker`: the
    /// command line may be read here. `scriptBefore`: what `takeScriptBefore` returned on the event thread.
    func judge(tid: Int32, key: FileKey?, digest: SHA256Digest, fd: Int32, onWorker: Bool, scriptBefore: FileKey?) -> Judgement {
        let (table, learning) = policy.profileState
        guard !table.isEmpty || learning, let key else { return .unchanged }
        let family = facts.interpreterFamily(ofProgram: digest, key: key)
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
            inline = facts.execTakesInlineCode(tid: tid, key: key, family: family, scriptBefore: scriptBefore)
        }
        if learning {
            learned.recordProfile(services: subjects.services, users: subjects.uids.filter { $0 != 0 }, digest: digest, inline: inline, fd: fd)
            if case .notInProfile(let subject) = outcome { return .refuse(.notInProfile, subject: subject) }
        }
        if inline, let inlineForbiddenBy { return .refuse(.inlineCode, subject: inlineForbiddenBy) }
        return .unchanged
    }

    /// On the event thread, for every exec while profiles are in force or learned: the `#!` script this thread
    /// exec'd just before (the kernel then execs its interpreter in the same call, with the script as its program),
    /// taken so that it counts once; and remembers this exec's file when it is such a script.
    func takeScriptBefore(tid: Int32, key: FileKey?, fd: Int32) -> FileKey? {
        let (table, learning) = policy.profileState
        guard !table.isEmpty || learning else { return nil }
        let before = caches.scriptExecs.withLock { $0.removeValue(forKey: tid) }
        if let key, facts.contentClass(of: fd) == .shebang { caches.scriptExecs.withLock { $0.insert(key, for: tid) } }
        return before
    }

    /// Whether the kernel may answer later execs of this file for every process (its verdict cached there).
    func execMayStayInKernel(_ digest: SHA256Digest, key: FileKey, fd: Int32) -> Bool {
        let (table, learning) = policy.profileState
        if learning { return false }
        if table.isEmpty { return true }
        // A `#!` script's exec must reach the daemon: its interpreter's exec, which follows, is told from inline code by it.
        if facts.contentClass(of: fd) == .shebang { return false }
        return table.sameForEveryProcess(digest, isInterpreter: facts.interpreterFamily(ofProgram: digest, key: key) != nil)
    }
}
