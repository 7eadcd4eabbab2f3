/// Which arguments of an interpreter's command line can name its program, for the interpreter families whose
/// option grammar is known. Without it every argument counts (fail closed), and then a script's own
/// arguments count too: `sh report.sh data.csv` opening `data.csv` looked like running it as a program, so
/// in enforce mode every script that reads a file named on its command line was refused that file.
/// Pure: no I/O, tested without root.
enum InterpreterFamily: Sendable, Equatable {
    /// dash and bash (and `sh`, `rbash`): `sh [-abCefhimnuvx] [-o opt] [+o opt] [-O shopt] [--rcfile f] [script [args]]`.
    /// (ksh and mksh have options that take values of their own, e.g. mksh `-T`: they count as `other`.)
    case shell
    /// CPython 3: `python3 [-bBdEhiIOPqRsSuvVWx] [-W arg] [-X opt] [-c cmd | -m mod | script | -] [args]`
    /// (getopt string "bBc:dEhiIJm:OPqRsStuvVW:xX:?"). Python 2 takes other values (`-Q arg`): `other`.
    case python
    /// awk (gawk, mawk): its program is its first operand unless `-f` names a file. For arguments, as `other`.
    case awk
    /// The dynamic loader run as a program (`ld.so [options] PROGRAM [args]`). For arguments, as `other`; execution
    /// profiles judge the program it loads, not the loader (`loaderProgramIndex`).
    case loader
    /// Any other interpreter (perl, ruby, node, awk, zsh, the loader, …): every argument counts.
    case other

    /// The family of an interpreter by the name of its real, root-installed file (`/usr/bin/python3.11`,
    /// `/usr/bin/dash`). Never by the name a process runs under: a copy of python named `bash` is python.
    init(executableName name: String) {
        switch name {
        case "dash", "bash", "rbash":   // not "sh": a real file of that name may be mksh, yash or busybox
            self = .shell
        case "awk", "gawk", "mawk", "nawk", "original-awk":
            self = .awk
        case _ where name.hasPrefix("ld-linux") || name.hasPrefix("ld64.so") || name == "ld.so":
            self = .loader
        default:
            let python = name.hasPrefix("python3") && name.dropFirst(7).allSatisfy { $0.isNumber || $0 == "." }
            self = python ? .python : .other
        }
    }

    /// Indices into `arguments` (argv without argv[0]) that may name a file the interpreter runs as code; nil
    /// means every argument may (unknown family, or a command line this parser does not understand).
    func programArgumentIndices(_ arguments: [[UInt8]]) -> [Int]? {
        switch self {
        case .shell: return Self.shellProgramArguments(arguments)
        case .python: return Self.pythonProgramArguments(arguments)
        case .awk, .loader, .other: return nil
        }
    }

    private static func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

    /// Whether this command line hands the interpreter its program as inline code rather than as a file: a `-c`/`-e`
    /// string, a module or program chosen by name at run time, or standard input (no program file at all, or `-`).
    /// `argv0` is the name it is run under (only busybox and awk care: it chooses the applet). Anything this cannot
    /// parse counts as inline (fail closed: a profile that forbids inline code then denies it, and learning records it
    /// as inline, which makes the learned profile more permissive, never less safe than what ran).
    func takesInlineCode(argv0: [UInt8], arguments a: [[UInt8]]) -> Bool {
        switch self {
        case .shell:
            guard let parsed = Self.parseShell(a), let script = parsed.script else { return true }
            // `-i` reads commands from standard input after the script; a login shell (`-l`, `--login`, argv[0]
            // starting with `-`) runs the profile files of a $HOME the caller chose.
            for option in a[..<script] where Self.isOption(option, letters: "il") || Self.text(option) == "--login" { return true }
            if argv0.first == UInt8(ascii: "-") { return true }
            return Self.namesAStream(a[script])
        case .python:
            // `-c`, `-m`, no script, or `-` (standard input): inline. A script path: a file. `-i` runs standard input
            // after the script.
            guard let indices = Self.pythonProgramArguments(a), let i = indices.first else { return true }
            // `-X pycache_prefix=DIR` loads byte code from a directory the caller chose; no `-X` is needed to run a file.
            if a[..<i].contains(where: { Self.isOption($0, letters: "iX") }) { return true }
            return a[i] == Array("-".utf8) || Self.namesAStream(a[i])
        case .awk:
            return Self.awkTakesInlineCode(a)
        case .loader:
            // Judged by the program it loads (`ProfileGate.judgeLoaderRun`); here only as a last resort.
            return true
        case .other:
            let names = [argv0] + a.prefix(1)
            if names.contains(where: { Self.isAwkName($0) }) && Self.awkTakesInlineCode(a) { return true }
            return Self.otherTakesInlineCode(a)
        }
    }

    /// A single-dash option bundle (not `--long`) holding one of `letters`.
    private static func isOption(_ arg: [UInt8], letters: String) -> Bool {
        guard arg.count > 1, arg[0] == UInt8(ascii: "-"), arg[1] != UInt8(ascii: "-") else { return false }
        return arg.dropFirst().contains { letters.utf8.contains($0) }
    }

    /// A "file" that is a stream the caller writes: standard input, an inherited descriptor, anything under /dev or
    /// a process's descriptors (a pipe cannot carry a fanotify mark, so its content is never seen).
    static func namesAStream(_ arg: [UInt8]) -> Bool {
        let t = text(arg)
        return t.hasPrefix("/dev/") || t.hasPrefix("/proc/") || t.hasPrefix("/../") || t.contains("/fd/")
    }

    /// `ld.so [OPTION]... PROGRAM [ARGS]`: the index of PROGRAM in the loader's arguments (argv without argv[0]), or
    /// nil when the options are not understood. glibc 2.36's options: those that take a value, and those that do not.
    static func loaderProgramIndex(_ a: [[UInt8]]) -> Int? {
        let withValue: Set<String> = ["--library-path", "--inhibit-rpath", "--audit", "--preload", "--argv0", "--glibc-hwcaps-prefix", "--glibc-hwcaps-mask"]
        let flags: Set<String> = ["--list", "--verify", "--inhibit-cache", "--list-tunables", "--list-diagnostics", "--help", "--version"]
        var i = 0
        while i < a.count {
            let t = text(a[i])
            if t == "--" { return i + 1 < a.count ? i + 1 : nil }
            if withValue.contains(t) { i += 2; continue }
            if flags.contains(t) { i += 1; continue }
            if t.hasPrefix("-") { return nil }
            return i
        }
        return nil
    }

    /// The script operand of a shell or Python command line that `takesInlineCode` judged a file (nil for other
    /// families): the caller checks that it is a regular file no one but root can swap (a FIFO named as the script is
    /// code the caller writes).
    func scriptOperand(_ a: [[UInt8]]) -> Int? {
        switch self {
        case .shell: return Self.parseShell(a)?.script
        case .python: return Self.pythonProgramArguments(a)?.first
        case .awk, .loader, .other: return nil
        }
    }

    /// Environment variables that hand an interpreter code of the caller's choice however its command line reads:
    /// perl's `PERL5OPT` (`-M5;…`) and `PERL5DB`, Python's `PYTHONINSPECT` and `PYTHONSTARTUP`, node's `NODE_OPTIONS`,
    /// bash's exported functions (`BASH_FUNC_…`), `SHELLOPTS`/`BASHOPTS` (xtrace with `PS4`), `PS4`, and the start-up
    /// files `ENV`/`BASH_ENV` (a stream such as /dev/stdin would never be seen). Only for interpreters a profile keeps
    /// from inline code; learning records them as inline.
    static func environmentCarriesCode(_ environment: [[UInt8]]) -> Bool {
        let names = ["PERL5OPT=", "PERL5DB=", "PYTHONINSPECT=", "PYTHONSTARTUP=", "PYTHONPYCACHEPREFIX=", "NODE_OPTIONS=", "SHELLOPTS=", "BASHOPTS=",
                     "PS4=", "ENV=", "BASH_ENV=", "ZDOTDIR=", "XDG_CONFIG_HOME=", "RUBYOPT=", "PHPRC=", "PHP_INI_SCAN_DIR="]
        return environment.contains { variable in
            variable.starts(with: "BASH_FUNC_".utf8) || names.contains { variable.starts(with: $0.utf8) }
        }
    }

    private static func isAwkName(_ bytes: [UInt8]) -> Bool {
        let name = text(Array(bytes.split(separator: UInt8(ascii: "/")).last ?? []))
        return InterpreterFamily(executableName: name) == .awk
    }

    /// awk's program is its first operand unless `-f progfile` (or `--file`) gives one; gawk's `-e`/`--source` adds
    /// program text.
    private static func awkTakesInlineCode(_ a: [[UInt8]]) -> Bool {
        var fromFile = false
        for arg in a {
            let t = text(arg)
            if t == "-e" || t.hasPrefix("--source") || t.hasPrefix("--exec") { return true }
            if t == "-f" || t.hasPrefix("--file") || (t.hasPrefix("-f") && !t.hasPrefix("--")) { fromFile = true }
            if t == "--" { break }
        }
        return !fromFile
    }

    /// perl, ruby, node, php, lua, tclsh, zsh, ksh, busybox and the loader: no argument at all (standard input or a
    /// prompt), `-` anywhere, or any option but a few harmless ones, anywhere on the line. Every argument is looked
    /// at, the script's own included: options that take a separate value (`perl -I dir -e …`) would otherwise hide
    /// what follows them. A script whose own arguments look like options counts as inline (more permissive when
    /// learned; never a way around a profile).
    private static func otherTakesInlineCode(_ a: [[UInt8]]) -> Bool {
        if a.isEmpty { return true }
        for arg in a {
            let t = text(arg)
            if t == "-" || namesAStream(arg) { return true }
            // Too many interpreters, each with options that take code or read it from somewhere (perl `-e`, `-M5;…`,
            // `-d`; node `--import data:…`, `--inspect`; php `-a`; guile `--listen`): any option but these counts.
            if t.hasPrefix("-") && !Self.plainOptions.contains(t) { return true }
        }
        return false
    }

    /// Options of the other interpreters that change no code: warnings and taint checks.
    /// (Not `-X`: ruby's changes directory before it reads the script, so a relative script could be anything.)
    static let plainOptions: Set<String> = ["--", "-w", "-W", "-T", "-t", "-U"]

    /// bash(1) and dash(1) INVOCATION: long options first (`--rcfile` and `--init-file` take a file the shell
    /// runs, so it counts), then option letters in `-`/`+` bundles where each `o` or `O` takes the next
    /// argument; `-c` means the program is a string, `-s` that it is standard input; `--` or a lone `-` ends
    /// the options (POSIX: "a single hyphen-minus shall be treated as the first operand and then ignored");
    /// the first other argument is the script and the rest are its arguments.
    /// bash's long options, which it also accepts with a single dash (`-norc`, `-rcfile f`: parse_long_options).
    private static let shellLongOptions: Set<String> = [
        "login", "noediting", "noprofile", "norc", "posix", "restricted", "verbose", "version", "help", "debugger",
        "dump-strings", "dump-po-strings", "pretty-print", "wordexp", "rpm-requires", "protected",
    ]

    private static func shellProgramArguments(_ a: [[UInt8]]) -> [Int]? {
        guard let parsed = parseShell(a) else { return nil }
        return parsed.files + (parsed.script.map { [$0] } ?? [])
    }

    /// The shell's command line: the files it reads as code before its program (rc files), and its script operand
    /// (nil: the program is a `-c` string or standard input). Nil when the grammar is not understood.
    private static func parseShell(_ a: [[UInt8]]) -> (files: [Int], script: Int?)? {
        var files: [Int] = []
        var i = 0
        var fromString = false
        while i < a.count {
            let arg = a[i]
            if arg == Array("--".utf8) || arg == Array("-".utf8) { i += 1; break }
            if arg == Array("+".utf8) { i += 1; continue }   // an empty option group: skipped by dash and bash
            guard let first = arg.first, first == UInt8(ascii: "-") || first == UInt8(ascii: "+"), arg.count > 1 else { break }
            // bash takes its long options with one dash as well as two: `-norc` is --norc, not -n -o rc.
            let dashes = first == UInt8(ascii: "-") ? (arg[1] == UInt8(ascii: "-") ? 2 : 1) : 0
            let name = dashes > 0 ? text(Array(arg.dropFirst(dashes))) : ""
            if dashes == 2 || (dashes == 1 && (name == "rcfile" || name == "init-file" || shellLongOptions.contains(name))) {
                switch name {
                case "rcfile", "init-file":
                    guard i + 1 < a.count else { return nil }
                    files.append(i + 1)
                    i += 2
                case _ where shellLongOptions.contains(name):
                    i += 1
                default:
                    return nil   // an option this parser does not know: every argument counts
                }
                continue
            }
            var takesValues = 0
            for letter in arg.dropFirst() {
                switch letter {
                case UInt8(ascii: "o"), UInt8(ascii: "O"): takesValues += 1
                case UInt8(ascii: "c"), UInt8(ascii: "s"):
                    // `-c`/`-s`: the program is a string or standard input. With `+` dash clears the flag and
                    // bash sets it: the two shells disagree, so every argument counts.
                    guard first == UInt8(ascii: "-") else { return nil }
                    fromString = true
                case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"): break
                default: return nil
                }
            }
            // `-o stdin`/`+o stdin` (dash) switches standard-input mode by name: every argument counts.
            for k in 0..<takesValues where i + 1 + k < a.count && a[i + 1 + k] == Array("stdin".utf8) { return nil }
            i += 1 + takesValues
        }
        if i > a.count { return nil }
        return (files, !fromString && i < a.count ? i : nil)
    }

    /// python3(1): option letters may be bundled; `W` and `X` take a value (the rest of the bundle, or the next
    /// argument); `c` and `m` end the options with a command or module (no program file); `--` ends them and
    /// `-` means standard input; the first other argument is the script.
    private static func pythonProgramArguments(_ a: [[UInt8]]) -> [Int]? {
        var i = 0
        while i < a.count {
            let arg = a[i]
            guard arg.first == UInt8(ascii: "-"), arg.count > 1 else { break }
            if arg == Array("--".utf8) { i += 1; break }
            if arg[1] == UInt8(ascii: "-") {
                switch text(arg) {
                case "--check-hash-based-pycs": i += 2
                case "--help", "--version", "--help-env", "--help-xoptions", "--help-all": i += 1
                default: return nil
                }
                continue
            }
            var j = 1
            var consumedNext = false
            letters: while j < arg.count {
                switch arg[j] {
                case UInt8(ascii: "c"), UInt8(ascii: "m"):
                    return []   // the program is a string or a module found on sys.path, not a file named here
                case UInt8(ascii: "W"), UInt8(ascii: "X"):
                    if j == arg.count - 1 { consumedNext = true }
                    break letters
                case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "?"):
                    j += 1
                default:
                    return nil
                }
            }
            i += consumedNext ? 2 : 1
        }
        if i > a.count { return nil }
        return i < a.count ? [i] : []
    }
}
