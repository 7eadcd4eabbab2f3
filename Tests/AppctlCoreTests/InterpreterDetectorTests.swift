// Over 400 lines for a reason: the detector parses untrusted ELF files, and its tests build synthetic ELF
// files in four encodings plus the hostile variants that must come back nil; splitting them would split the builder.
@testable import AppctlCore
import Foundation
import Glibc
import Testing

// MARK: - Reading real files

/// A regular file's size and a `readAt` over it (open/pread), as learn reads the inventory.
private final class OpenedFile {
    let fd: Int32
    let size: UInt64

    init?(_ path: String) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & 0o170000 == 0o100000 else { close(fd); return nil }
        self.fd = fd
        self.size = UInt64(st.st_size)
    }

    deinit { close(fd) }

    func readAt(_ offset: Int64, _ count: Int) -> [UInt8] {
        guard offset >= 0, count > 0 else { return [] }
        var buffer = [UInt8](repeating: 0, count: count)
        var filled = 0
        while filled < count {
            let n = buffer.withUnsafeMutableBytes { raw in
                pread(fd, raw.baseAddress! + filled, count - filled, off_t(offset) + off_t(filled))
            }
            if n <= 0 { break }
            filled += n
        }
        return Array(buffer.prefix(filled))
    }
}

/// What `detect` says about a file on this machine; `.some(nil)` is "not an interpreter", nil is "no such file".
private func detectFile(_ path: String) -> InterpreterKind?? {
    guard let file = OpenedFile(path) else { return nil }
    return .some(InterpreterDetector.detect(fileSize: file.size, readAt: file.readAt))
}

private func exists(_ path: String) -> Bool { OpenedFile(path) != nil }

/// The pyenv interpreters installed on this machine: every versions/*/bin/pythonX.Y that is a regular ELF file.
private func pyenvPythons() -> [String] {
    let root = "/root/.pyenv/versions"
    let versions = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
    return versions.sorted().flatMap { version -> [String] in
        let bin = "\(root)/\(version)/bin"
        let names = (try? FileManager.default.contentsOfDirectory(atPath: bin)) ?? []
        return names.filter { name in
            name.hasPrefix("python") && !name.contains("-") && name.contains(".")
                && name.last.map { $0.isNumber || $0 == "m" } == true
        }.map { "\(bin)/\($0)" }.filter { path in
            guard let file = OpenedFile(path) else { return false }
            return file.readAt(0, 4) == [0x7f, 0x45, 0x4c, 0x46]
        }
    }.sorted()
}

// MARK: - Synthetic ELF files

/// A minimal ELF program or library with a dynamic symbol table, a string table and a dynamic section, in any
/// of the four encodings: enough to exercise every rule without the real binaries.
private struct SyntheticELF {
    var is64 = true
    var little = true
    var type: UInt16 = 3            // ET_DYN
    var interpreter = true          // a PT_INTERP program header
    var symbols: [(name: String, defined: Bool)] = []
    var needed: [String] = []

    static let encodings: [(is64: Bool, little: Bool)] = [(true, true), (true, false), (false, true), (false, false)]

    struct Offsets { var dynsym = 0, dynstr = 0, dynamic = 0, sectionHeaders = 0 }

    func build() -> [UInt8] { layout().bytes }

    func layout() -> (bytes: [UInt8], offsets: Offsets) {
        var strings: [UInt8] = [0]
        func add(_ s: String) -> Int { let o = strings.count; strings += Array(s.utf8) + [0]; return o }
        let symbolNames = symbols.map { add($0.name) }
        let neededNames = needed.map { add($0) }

        let ehsize = is64 ? 64 : 52, phentsize = is64 ? 56 : 32, shentsize = is64 ? 64 : 40
        let symentsize = is64 ? 24 : 16, dynentsize = is64 ? 16 : 8
        func align(_ x: Int) -> Int { (x + 7) & ~7 }
        var o = Offsets()
        let phoff = ehsize
        o.dynstr = phoff + (interpreter ? phentsize : 0)
        o.dynsym = align(o.dynstr + strings.count)
        let dynsymSize = (symbols.count + 1) * symentsize
        o.dynamic = align(o.dynsym + dynsymSize)
        let dynamicSize = (needed.count + 1) * dynentsize
        o.sectionHeaders = align(o.dynamic + dynamicSize)

        var b = Bytes(little: little)
        // ELF header
        b.raw([0x7f, 0x45, 0x4c, 0x46, is64 ? 2 : 1, little ? 1 : 2, 1, 0] + [UInt8](repeating: 0, count: 8))
        b.u16(type); b.u16(is64 ? 62 : 3); b.u32(1)
        b.word(is64, 0)                                                      // e_entry
        b.word(is64, interpreter ? UInt64(phoff) : 0); b.word(is64, UInt64(o.sectionHeaders))
        b.u32(0); b.u16(UInt16(ehsize)); b.u16(UInt16(phentsize)); b.u16(interpreter ? 1 : 0)
        b.u16(UInt16(shentsize)); b.u16(4); b.u16(0)
        // PT_INTERP
        if interpreter { b.u32(3); b.zeros(phentsize - 4) }
        b.raw(strings); b.pad(to: o.dynsym)
        // The null symbol, then the symbols
        b.zeros(symentsize)
        for (s, nameOffset) in zip(symbols, symbolNames) {
            let shndx: UInt16 = s.defined ? 12 : 0
            if is64 {
                b.u32(UInt32(nameOffset)); b.raw([0x12, 0]); b.u16(shndx); b.u64(s.defined ? 0x1000 : 0); b.u64(0)
            } else {
                b.u32(UInt32(nameOffset)); b.u32(s.defined ? 0x1000 : 0); b.u32(0); b.raw([0x12, 0]); b.u16(shndx)
            }
        }
        b.pad(to: o.dynamic)
        for nameOffset in neededNames { b.word(is64, 1); b.word(is64, UInt64(nameOffset)) }
        b.word(is64, 0); b.word(is64, 0)                                     // DT_NULL
        b.pad(to: o.sectionHeaders)
        // Section headers: null, .dynsym (link 2), .dynstr, .dynamic (link 2)
        func section(type: UInt32, offset: Int, size: Int, link: UInt32, entsize: Int) {
            b.u32(0); b.u32(type); b.word(is64, 2); b.word(is64, 0)
            b.word(is64, UInt64(offset)); b.word(is64, UInt64(size)); b.u32(link); b.u32(type == 11 ? 1 : 0)
            b.word(is64, 8); b.word(is64, UInt64(entsize))
        }
        b.zeros(shentsize)
        section(type: 11, offset: o.dynsym, size: dynsymSize, link: 2, entsize: symentsize)
        section(type: 3, offset: o.dynstr, size: strings.count, link: 0, entsize: 0)
        section(type: 6, offset: o.dynamic, size: dynamicSize, link: 2, entsize: dynentsize)
        return (b.bytes, o)
    }

    struct Bytes {
        let little: Bool
        var bytes: [UInt8] = []
        mutating func raw(_ b: [UInt8]) { bytes += b }
        mutating func zeros(_ n: Int) { bytes += [UInt8](repeating: 0, count: n) }
        mutating func pad(to n: Int) { zeros(n - bytes.count) }
        mutating func u16(_ v: UInt16) { let b = [UInt8(v & 0xff), UInt8(v >> 8)]; raw(little ? b : b.reversed()) }
        mutating func u32(_ v: UInt32) { let b = (0..<4).map { UInt8((v >> ($0 * 8)) & 0xff) }; raw(little ? b : b.reversed()) }
        mutating func u64(_ v: UInt64) { let b = (0..<8).map { UInt8((v >> ($0 * 8)) & 0xff) }; raw(little ? b : b.reversed()) }
        mutating func word(_ is64: Bool, _ v: UInt64) { if is64 { u64(v) } else { u32(UInt32(truncatingIfNeeded: v)) } }
    }
}

/// `detect` over bytes in memory; reads past the end return fewer bytes, as at EOF.
private func detect(_ bytes: [UInt8], fileSize: UInt64? = nil) -> InterpreterKind? {
    InterpreterDetector.detect(fileSize: fileSize ?? UInt64(bytes.count)) { offset, count in
        guard offset >= 0, offset < Int64(bytes.count), count > 0 else { return [] }
        let start = Int(offset)
        return Array(bytes[start..<min(bytes.count, start + min(count, bytes.count))])
    }
}

/// Overwrites `count` bytes at `offset` with a little- or big-endian integer.
private func patch(_ bytes: inout [UInt8], at offset: Int, _ value: UInt64, count: Int, little: Bool) {
    for i in 0..<count {
        let byte = UInt8((value >> (UInt64(i) * 8)) & 0xff)
        bytes[little ? offset + i : offset + count - 1 - i] = byte
    }
}

/// SplitMix64: a fixed-seed generator, so the random inputs are the same on every run.
private struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}

private func program(_ symbols: [(String, Bool)], needed: [String] = [], is64: Bool = true, little: Bool = true) -> [UInt8] {
    SyntheticELF(is64: is64, little: little, symbols: symbols.map { (name: $0.0, defined: $0.1) }, needed: needed).build()
}

// MARK: - Tests

@Suite struct InterpreterDetectorTests {
    // Real binaries of this machine.

    @Test(.enabled(if: exists("/usr/bin/python3.11")))
    func systemPythonDefinesPyBytesMain() {
        #expect(detectFile("/usr/bin/python3.11") == .some(.python))
    }

    /// pyenv's python3.11 imports Py_BytesMain from libpython3.11.so. Skipped where pyenv 3.11.7 is not installed.
    @Test(.enabled(if: exists("/root/.pyenv/versions/3.11.7/bin/python3.11")))
    func pyenvPythonImportsPyBytesMain() {
        #expect(detectFile("/root/.pyenv/versions/3.11.7/bin/python3.11") == .some(.python))
    }

    /// Every pyenv version installed here, 3.6 (Py_Main) and 3.7 (_Py_UnixMain) included.
    @Test func everyPyenvPythonIsPython() {
        for path in pyenvPythons() {
            #expect(detectFile(path) == .some(.python), "\(path)")
        }
    }

    /// /usr/bin/perl (open follows the symlink) defines perl_parse and perl_run (libperl linked in).
    @Test(.enabled(if: exists("/usr/bin/perl")))
    func systemPerl() {
        #expect(detectFile("/usr/bin/perl") == .some(.perl))
    }

    /// tclsh8.6 imports Tcl_MainEx from libtcl8.6.so.
    @Test(.enabled(if: exists("/usr/bin/tclsh8.6") || exists("/usr/bin/tclsh")))
    func systemTclsh() {
        let path = exists("/usr/bin/tclsh8.6") ? "/usr/bin/tclsh8.6" : "/usr/bin/tclsh"
        #expect(detectFile(path) == .some(.tcl))
    }

    /// node (about 100 MB) defines node::Start; it is read in chunks, never whole, and only a small part of it.
    @Test(.enabled(if: exists("/usr/bin/node")))
    func systemNodeReadInChunks() throws {
        let file = try #require(OpenedFile("/usr/bin/node"))
        var calls = 0, largest = 0, total = 0
        let kind = InterpreterDetector.detect(fileSize: file.size) { offset, count in
            calls += 1; largest = max(largest, count); total += count
            return file.readAt(offset, count)
        }
        #expect(kind == .node)
        #expect(largest <= InterpreterDetector.chunkSize)
        #expect(UInt64(total) < file.size / 4)
    }

    /// Programs that are not interpreters: shells are configured ones, never detected; vim embeds languages
    /// without being their launcher; libraries define the markers (libperl, libpython, libtcl) but are not programs.
    @Test(arguments: [
        "/usr/bin/true", "/usr/bin/dash", "/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libperl.so.5.36", "/usr/lib/x86_64-linux-gnu/libtcl8.6.so",
        "/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0",
    ])
    func notInterpreters(path: String) {
        if let kind = detectFile(path) {   // skipped when the file is absent on this machine
            #expect(kind == nil, "\(path)")
        }
    }

    @Test func vimIsNoInterpreter() {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/usr/bin")) ?? []
        for name in names where name.hasPrefix("vim") {
            if let kind = detectFile("/usr/bin/\(name)") {
                #expect(kind == nil, "/usr/bin/\(name)")
            }
        }
    }

    // Every rule, in the four encodings (64/32-bit, little/big-endian).

    @Test(arguments: 0..<4)
    func rules(encoding: Int) {
        let (is64, little) = SyntheticELF.encodings[encoding]
        func kind(_ symbols: [(String, Bool)], needed: [String] = []) -> InterpreterKind? {
            detect(program(symbols, needed: needed, is64: is64, little: little))
        }
        let libc = [("malloc", false), ("printf", false)]
        #expect(kind(libc) == nil)
        #expect(kind(libc + [("Py_BytesMain", false)]) == .python)
        #expect(kind(libc + [("Py_BytesMain", true)]) == .python)
        #expect(kind(libc + [("_Py_UnixMain", false)]) == .python)
        #expect(kind(libc + [("Py_Main", false)]) == .python)
        #expect(kind(libc + [("Py_Initialize", false), ("PyRun_SimpleString", false)]) == nil, "an embedder")

        #expect(kind([("perl_parse", true), ("perl_run", true)]) == .perl)
        #expect(kind([("perl_parse", false), ("perl_run", false)], needed: ["libperl.so.5.36"]) == nil,
                "an embedder of a shared libperl (vim-nox)")
        #expect(kind([("perl_parse", false), ("perl_run", false), ("PL_do_undump", false)],
                     needed: ["libc.so.6", "libperl.so.5.36"]) == .perl, "perl with a shared libperl")
        #expect(kind([("perl_parse", false), ("perl_run", false), ("PL_do_undump", false)],
                     needed: ["libc.so.6"]) == nil, "no libperl")
        #expect(kind([("perl_parse", true)]) == nil, "perl_parse without perl_run")

        #expect(kind(libc + [("ruby_run_node", false)]) == .ruby)
        #expect(kind(libc + [("ruby_run_node", true)]) == .ruby)
        #expect(kind(libc + [("ruby_init", false), ("rb_eval_string", false)]) == nil)

        #expect(kind(libc + [("_ZN4node5StartEiPPc", true)]) == .node)
        #expect(kind(libc + [("_ZN4node5StartEP9uv_loop_siPKPKc", true)]) == .node)
        #expect(kind(libc + [("_ZN4node5StartEiPPc", false)]) == .node, "Debian's node over libnode.so")
        #expect(kind(libc + [("_ZN4node5StartEP9uv_loop_siPKPKc", false)]) == nil)
        #expect(kind(libc + [("_ZN4node11Environment5StartEv", true)]) == nil)

        #expect(kind(libc + [("Tcl_Main", false)]) == .tcl)
        #expect(kind(libc + [("Tcl_MainEx", false)]) == .tcl)
        #expect(kind(libc + [("Tcl_MainEx", true)]) == .tcl)
        #expect(kind(libc + [("Tk_MainEx", false)]) == .tcl)
        #expect(kind(libc + [("Tcl_CreateInterp", false), ("Tcl_Eval", false)]) == nil, "an embedder")

        #expect(kind([("Py_BytesMain", false), ("ruby_run_node", false)]) == nil, "two languages: neither")
        #expect(kind([("Py_BytesMainX", false), ("XPy_BytesMain", false), ("Py_Bytes", false)]) == nil, "names match exactly")
        #expect(kind([("bash_main", true)], needed: ["libperl.so"]) == nil, "never by what it links alone")
    }

    @Test(arguments: 0..<4)
    func librariesAndOtherObjectsAreNotInterpreters(encoding: Int) {
        let (is64, little) = SyntheticELF.encodings[encoding]
        var elf = SyntheticELF(is64: is64, little: little, symbols: [(name: "Py_BytesMain", defined: true)])
        #expect(detect(elf.build()) == .python)
        elf.interpreter = false
        #expect(detect(elf.build()) == nil, "ET_DYN without PT_INTERP: libpython")
        elf.type = 2
        #expect(detect(elf.build()) == .python, "ET_EXEC")
        elf.type = 1
        #expect(detect(elf.build()) == nil, "ET_REL: an object file")
    }

    /// A name stored as the tail of a longer string (linkers merge string tails) is still found.
    @Test func tailMergedNames() {
        var bytes = program([("_Py_BytesMain", false), ("Py_BytesMai", false)])
        let layout = SyntheticELF(symbols: [(name: "_Py_BytesMain", defined: false), (name: "Py_BytesMai", defined: false)]).layout()
        #expect(detect(bytes) == nil)
        // Point the second symbol's st_name one byte into "_Py_BytesMain".
        patch(&bytes, at: layout.offsets.dynsym + 2 * 24, 2, count: 4, little: true)
        #expect(detect(bytes) == .python)
    }

    // Hostile input: nil, never a trap.

    @Test func truncatedHeader() throws {
        let file = try #require(OpenedFile("/usr/bin/true"))
        let header = file.readAt(0, 64)
        for n in [0, 1, 4, 5, 6, 20, 51, 52, 63] where n <= header.count {
            #expect(detect(Array(header.prefix(n))) == nil)
        }
        let elf = program([("Py_BytesMain", false)])
        for n in [16, 40, 52, 63, 64, 100, elf.count / 2, elf.count - 1] {
            #expect(detect(Array(elf.prefix(n))) == nil, "\(n) bytes")
            #expect(detect(Array(elf.prefix(n)), fileSize: UInt64(elf.count)) == nil, "a reader that comes up short at \(n)")
        }
    }

    @Test(arguments: 0..<4)
    func sectionHeadersPastTheEnd(encoding: Int) {
        let (is64, little) = SyntheticELF.encodings[encoding]
        let elf = program([("Py_BytesMain", false)], is64: is64, little: little)
        #expect(detect(elf) == .python)
        for shoff: UInt64 in [UInt64(elf.count), UInt64(elf.count) - 1, 1 << 32, 1 << 62, UInt64.max, UInt64(UInt32.max)] {
            var bytes = elf
            patch(&bytes, at: is64 ? 40 : 32, shoff, count: is64 ? 8 : 4, little: little)
            #expect(detect(bytes) == nil)
        }
        var bytes = elf
        patch(&bytes, at: is64 ? 60 : 48, 0xffff, count: 2, little: little)   // e_shnum
        #expect(detect(bytes) == nil)
        bytes = elf
        patch(&bytes, at: is64 ? 56 : 44, 0xfffe, count: 2, little: little)   // e_phnum
        #expect(detect(bytes) == nil)
    }

    @Test(arguments: 0..<4)
    func hugeSizesAndOffsets(encoding: Int) {
        let (is64, little) = SyntheticELF.encodings[encoding]
        let (elf, o) = SyntheticELF(is64: is64, little: little, symbols: [(name: "Py_BytesMain", defined: false)],
                                    needed: ["libc.so.6"]).layout()
        #expect(detect(elf) == .python)
        let shentsize = is64 ? 64 : 40
        let word = is64 ? 8 : 4
        let offsetField = is64 ? 24 : 16, sizeField = is64 ? 32 : 20, linkField = is64 ? 40 : 24
        let huge: [UInt64] = is64 ? [1 << 63, UInt64.max, 1 << 32, UInt64(elf.count)] : [UInt64(UInt32.max), 1 << 31, UInt64(elf.count)]
        for section in 1...3 {
            for value in huge {
                for field in [offsetField, sizeField] {
                    var bytes = elf
                    patch(&bytes, at: o.sectionHeaders + section * shentsize + field, value, count: word, little: little)
                    #expect(detect(bytes) == nil, "section \(section) field \(field) = \(value)")
                }
            }
            var bytes = elf
            patch(&bytes, at: o.sectionHeaders + section * shentsize + linkField, 0xffff_ffff, count: 4, little: little)
            _ = detect(bytes)   // a dangling sh_link: whatever the answer, no trap
        }
        // A symbol whose name lies past the string table.
        var bytes = elf
        patch(&bytes, at: o.dynsym + (is64 ? 24 : 16), 0xffff_fff0, count: 4, little: little)
        #expect(detect(bytes) == nil)
    }

    @Test func randomBytes() {
        var rng = SplitMix64(state: 0x00C0_FFEE)
        for round in 0..<2_000 {
            let count = Int.random(in: 0..<600, using: &rng)
            var bytes = (0..<count).map { _ in UInt8.random(in: 0...255, using: &rng) }
            if round % 2 == 0 && count >= 6 {   // half of them look like ELF, to get past the magic
                bytes.replaceSubrange(0..<6, with: [0x7f, 0x45, 0x4c, 0x46, UInt8.random(in: 1...2, using: &rng), UInt8.random(in: 1...2, using: &rng)])
            }
            #expect(detect(bytes) == nil)
        }
    }

    /// Valid files with random bytes overwritten: any answer is allowed, a trap is not.
    @Test func mutatedFilesNeverTrap() {
        var rng = SplitMix64(state: 42)
        let seeds = SyntheticELF.encodings.map { encoding in
            program([("perl_parse", false), ("perl_run", false), ("PL_do_undump", false), ("Tcl_MainEx", true)],
                    needed: ["libperl.so.5.36"], is64: encoding.is64, little: encoding.little)
        }
        for round in 0..<4_000 {
            var bytes = seeds[round % seeds.count]
            for _ in 0..<Int.random(in: 1...8, using: &rng) {
                let at = Int.random(in: 16..<bytes.count, using: &rng)
                bytes[at] = round % 3 == 0 ? 0xff : UInt8.random(in: 0...255, using: &rng)
            }
            _ = detect(bytes)
        }
    }

    /// A reader that returns more than asked or nothing at all does not confuse it.
    @Test func misbehavingReaders() {
        let elf = program([("Py_BytesMain", false)])
        #expect(InterpreterDetector.detect(fileSize: UInt64(elf.count)) { _, _ in [] } == nil)
        #expect(InterpreterDetector.detect(fileSize: UInt64(elf.count)) { offset, _ in
            Array(elf[Int(offset)...])   // everything to EOF, whatever was asked
        } == .python)
    }
}
