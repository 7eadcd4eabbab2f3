@testable import AppctlDaemon
import Testing

/// Whether a command line hands an interpreter inline code (issue 15). A wrong "no" lets a profile that forbids
/// inline code be walked around; a wrong "yes" only makes learned profiles more permissive. So every doubt is "yes".
@Suite struct InlineCodeTests {
    func inline(_ family: InterpreterFamily, _ line: String, argv0: String = "x") -> Bool {
        let arguments = line.isEmpty ? [] : line.split(separator: " ", omittingEmptySubsequences: false).map { Array($0.utf8) }
        return family.takesInlineCode(argv0: Array(argv0.utf8), arguments: arguments)
    }

    @Test func shells() {
        #expect(inline(.shell, "-c true"))
        #expect(inline(.shell, "-ec true"), "bundled")
        #expect(inline(.shell, "-s"), "script on standard input")
        #expect(inline(.shell, ""), "no script: standard input")
        #expect(inline(.shell, "-x"), "options but no script")
        #expect(inline(.shell, "-"), "a lone dash ends the options; no script follows")
        #expect(inline(.shell, "-o stdin x.sh"), "dash's -o stdin: not understood, so inline")
        #expect(inline(.shell, "--weird x.sh"), "an unknown long option: not understood")
        #expect(!inline(.shell, "/srv/app/run.sh -c arg"), "the script's own -c is its argument")
        #expect(!inline(.shell, "-e -- run.sh"))
        #expect(!inline(.shell, "--norc run.sh"))
        #expect(inline(.shell, "-i run.sh"), "standard input after the script")
        #expect(inline(.shell, "-l run.sh"), "a login shell runs the profile of a $HOME the caller chose")
        #expect(inline(.shell, "run.sh", argv0: "-sh"), "a login shell by its name")
        #expect(inline(.shell, "/dev/stdin"))
        #expect(inline(.shell, "/dev/fd/63"), "a process substitution")
    }

    @Test func python() {
        #expect(inline(.python, "-c print(1)"))
        #expect(inline(.python, "-Ic print(1)"), "bundled")
        #expect(inline(.python, "-m http.server"), "a module chosen at run time")
        #expect(inline(.python, ""), "standard input or a prompt")
        #expect(inline(.python, "-"), "standard input")
        #expect(inline(.python, "--unknown-long x.py"))
        #expect(!inline(.python, "-u /srv/app/manage.py -c x"))
        #expect(!inline(.python, "-W ignore app.py"))
        #expect(inline(.python, "-i app.py"), "standard input after the script")
        #expect(inline(.python, "-X pycache_prefix=/tmp/x app.py"), "byte code from a directory the caller chose")
        #expect(inline(.python, "/dev/stdin"))
    }

    @Test func awkProgramsAreInlineUnlessReadFromAFile() {
        #expect(inline(.awk, "BEGIN{system(\"id\")}"))
        #expect(!inline(.awk, "-f prog.awk data"))
        #expect(inline(.awk, "-f prog.awk -e BEGIN{}"), "gawk -e adds program text")
        // busybox (family other): the applet is argv[0], or the first argument.
        #expect(inline(.other, "awk BEGIN{}", argv0: "busybox"))
        #expect(inline(.other, "BEGIN{}", argv0: "/usr/bin/awk"))
    }

    @Test func otherInterpretersLookAtEveryArgument() {
        #expect(inline(.other, "-e print"))
        #expect(inline(.other, "-lne print"), "perl bundles")
        #expect(inline(.other, "-I lib -e 1"), "an option's own value must not hide what follows")
        #expect(inline(.other, "-r phpinfo();"), "php -r")
        #expect(inline(.other, "--eval 1"), "node --eval")
        #expect(inline(.other, ""), "a prompt or standard input")
        #expect(inline(.other, "-"), "standard input")
        #expect(inline(.other, "-d script.pl"), "perl's debugger reads commands from standard input")
        #expect(inline(.other, "--import data:text/javascript,1 app.js"), "node")
        #expect(inline(.other, "/srv/app/tool.pl --verbose"), "any option but a few harmless ones counts, the script's own too")
        #expect(!inline(.other, "/srv/app/tool.pl data.csv"))
        #expect(!inline(.other, "-w script.pl"))
        #expect(inline(.other, "-X /dev fd/0"), "ruby -X changes directory before it reads the script")
    }

    @Test func codeInTheEnvironmentCounts() {
        for variable in ["PERL5OPT=-M5;print", "RUBYOPT=-rx", "PHPRC=/tmp/x", "PHP_INI_SCAN_DIR=/tmp", "PS4=$(id)", "BASH_FUNC_ls%%=() { id; }",
                         "ENV=/dev/stdin", "NODE_OPTIONS=--import=x", "PYTHONINSPECT=1", "ZDOTDIR=/tmp"] {
            #expect(InterpreterFamily.environmentCarriesCode([Array("PATH=/usr/bin".utf8), Array(variable.utf8)]), "\(variable)")
        }
        #expect(!InterpreterFamily.environmentCarriesCode([Array("PATH=/usr/bin".utf8), Array("LANG=C.UTF-8".utf8), Array("HOME=/var/www".utf8)]))
    }
}
