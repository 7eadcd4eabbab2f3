@testable import AppctlDaemon
import Testing

/// Which argument of an interpreter's command line is its program. Every case where the parser is unsure
/// must say nil (every argument counts); a wrong index would let an unknown script run as data.
@Suite struct InterpreterCommandLineTests {
    func program(_ family: InterpreterFamily, _ line: String) -> [String]? {
        let arguments = line.split(separator: " ", omittingEmptySubsequences: false).map { Array($0.utf8) }
        return family.programArgumentIndices(arguments).map { $0.map { String(decoding: arguments[$0], as: UTF8.self) } }
    }

    @Test func familiesComeFromTheRealFilesName() {
        #expect(InterpreterFamily(executableName: "dash") == .shell)
        #expect(InterpreterFamily(executableName: "bash") == .shell)
        #expect(InterpreterFamily(executableName: "python3.11") == .python)
        #expect(InterpreterFamily(executableName: "python3") == .python)
        #expect(InterpreterFamily(executableName: "python2.7") == .other, "python 2 takes -Q arg")
        #expect(InterpreterFamily(executableName: "mksh") == .other, "mksh takes -T arg")
        #expect(InterpreterFamily(executableName: "perl") == .other)
        #expect(InterpreterFamily(executableName: "python3-evil") == .other)
        #expect(InterpreterFamily(executableName: "sh") == .other, "a real file named sh may be mksh or busybox")
    }

    @Test func shellScriptArgumentsAreNotItsProgram() {
        #expect(program(.shell, "report.sh data.csv") == ["report.sh"])
        #expect(program(.shell, "-x report.sh data.csv") == ["report.sh"])
        #expect(program(.shell, "-euo pipefail report.sh data.csv") == ["report.sh"])
        #expect(program(.shell, "-o posix +o emacs report.sh x") == ["report.sh"])
        #expect(program(.shell, "-O extglob +O nullglob report.sh x") == ["report.sh"])
        #expect(program(.shell, "-- -x.sh data") == ["-x.sh"])
        #expect(program(.shell, "- evil.sh data") == ["evil.sh"], "a lone - ends the options")
        #expect(program(.shell, "--norc --noprofile report.sh x") == ["report.sh"])
        #expect(program(.shell, "--rcfile rc.sh -i") == ["rc.sh"], "an rc file is code too")
        #expect(program(.shell, "--rcfile rc.sh -i script.sh") == ["rc.sh", "script.sh"])
        #expect(program(.shell, "-c cmd evil.sh") == [], "-c: the program is a string")
        #expect(program(.shell, "-s evil.sh") == [], "-s: the program is standard input")
        #expect(program(.shell, "-ec cmd") == [])
        #expect(program(.shell, "") == [""])
    }

    /// From the second review: each of these ran evil.sh while an earlier parser named another argument.
    @Test func shellOptionFormsThatOnceHidTheScript() {
        #expect(program(.shell, "+ evil.sh x") == ["evil.sh"], "a lone + is an empty option group")
        #expect(program(.shell, "-norc evil.sh x") == ["evil.sh"], "bash takes -norc as --norc")
        #expect(program(.shell, "-login evil.sh x") == ["evil.sh"])
        #expect(program(.shell, "-restricted evil.sh") == ["evil.sh"])
        #expect(program(.shell, "-rcfile ./evil.sh -i") == ["./evil.sh"])
        #expect(program(.shell, "+s evil.sh") == nil, "dash clears -s with +s, bash sets it")
        #expect(program(.shell, "-s +o stdin evil.sh") == nil)
        #expect(program(.shell, "-o stdin evil.sh") == nil)
        #expect(program(.shell, "+c cmd evil.sh") == nil)
    }

    @Test func shellCommandLinesItDoesNotUnderstandCountWhole() {
        #expect(program(.shell, "--unknown-long x.sh") == nil)
        #expect(program(.shell, "-o x.sh") == [], "-o takes x.sh as its value")
        #expect(program(.shell, "-o") == nil, "a value missing")
        #expect(program(.shell, "--rcfile") == nil)
        #expect(program(.shell, "-é x.sh") == nil)
        #expect(program(.shell, "-1 x.sh") == nil)
    }

    @Test func pythonScriptArgumentsAreNotItsProgram() {
        #expect(program(.python, "tool.py input.txt") == ["tool.py"])
        #expect(program(.python, "-u tool.py input.txt") == ["tool.py"])
        #expect(program(.python, "-W ignore tool.py input.txt") == ["tool.py"])
        #expect(program(.python, "-Wignore tool.py x") == ["tool.py"])
        #expect(program(.python, "-uW ignore tool.py x") == ["tool.py"])
        #expect(program(.python, "-X dev -E -s tool.py") == ["tool.py"])
        #expect(program(.python, "-Es tool.py") == ["tool.py"])
        #expect(program(.python, "--check-hash-based-pycs always tool.py") == ["tool.py"])
        #expect(program(.python, "-- -tool.py") == ["-tool.py"])
        #expect(program(.python, "-c code evil.py") == [], "-c: the program is a string")
        #expect(program(.python, "-m module evil.py") == [], "-m: a module from sys.path (imports are a documented gap)")
        #expect(program(.python, "-uc code") == [])
        #expect(program(.python, "- evil.py") == ["-"], "-: standard input; evil.py is only sys.argv[1]")
        #expect(program(.python, "--unknown tool.py") == nil)
        #expect(program(.python, "-W") == nil, "a value missing")
    }

    @Test func otherInterpretersCountEveryArgument() {
        #expect(program(.other, "-e code x.pl") == nil)
    }
}
