import AppctlCore
import AppctlKernel

/// What the first bytes of an opened file say about it.
public enum ContentClass: Sendable {
    /// An ELF object: whoever opens it may be about to map it as code (the loader, dlopen,
    /// LD_PRELOAD, LD_AUDIT, `ld.so ./x`). Decided like an exec.
    case elf
    /// Starts with `#!`.
    case shebang
    /// Anything else: decided only when an interpreter opens it as its program.
    case other
}

/// Decides what kind of executable content a file holds, by its bytes and mode, never by its name.
public enum ContentClassifier {
    /// The one sniffer of "ELF or `#!`" (learn, the daemon, `check`): the first bytes of a file.
    public static func sniff(_ head: some Collection<UInt8>) -> ContentClass {
        var it = head.makeIterator()
        let b0 = it.next(), b1 = it.next(), b2 = it.next(), b3 = it.next()
        if b0 == 0x7f, b1 == UInt8(ascii: "E"), b2 == UInt8(ascii: "L"), b3 == UInt8(ascii: "F") { return .elf }
        if b0 == UInt8(ascii: "#"), b1 == UInt8(ascii: "!") { return .shebang }
        return .other
    }

    /// How many bytes `sniff` looks at.
    public static let sniffLength = 4

    /// How many leading bytes `classify` needs: an ELF64 header is 64 bytes.
    public static let headerLength = 64

    /// - Parameters:
    ///   - head: the first bytes of the file (up to `headerLength`).
    ///   - readAt: reads more of the file when the ELF program headers must be inspected.
    /// - Returns: nil for content that is not executable (data, object files, kernel modules).
    public static func classify(head: [UInt8], executableBit: Bool,
                                readAt: (_ offset: Int64, _ count: Int) -> [UInt8]) -> FileKind? {
        switch sniff(head) {
        case .elf: return classifyELF(head, readAt: readAt) ?? (executableBit ? .otherExec : nil)
        case .shebang: return .script
        case .other: return executableBit ? .otherExec : nil
        }
    }

    /// Whether an ELF object is a program as its linker made it: `ET_EXEC`, or `ET_DYN` marked `DF_1_PIE` in its
    /// dynamic section, or `ET_DYN` with a PT_INTERP and no `DT_SONAME` (a PIE linked without the flag). Unlike `classify`'s PT_INTERP rule this keeps out libraries that carry an interpreter so
    /// that they can print their version (glibc's libc.so.6): measured on Debian 12, every ELF file in /usr/bin and
    /// /usr/sbin is one or the other, and no shared library is. Execution profiles decide where a program's verdict
    /// may stay in the kernel by it (`ld.so PROGRAM` opens the program; it is never exec'd).
    public static func isELFProgram(head h: [UInt8], readAt: (_ offset: Int64, _ count: Int) -> [UInt8]) -> Bool {
        guard sniff(h) == .elf, h.count >= 64, h[4] == 2, h[5] == 1 else {
            // 32-bit or big-endian: counted as a program (no open verdict in the kernel; the daemon answers).
            return sniff(h) == .elf
        }
        func u16(_ b: [UInt8], _ o: Int) -> UInt64 { o + 2 <= b.count ? UInt64(b[o]) | UInt64(b[o + 1]) << 8 : 0 }
        func u32(_ b: [UInt8], _ o: Int) -> UInt64 { u16(b, o) | u16(b, o + 2) << 16 }
        func u64(_ b: [UInt8], _ o: Int) -> UInt64 { u32(b, o) | u32(b, o + 4) << 32 }
        switch u16(h, 16) {
        case 2: return true
        case 3: break
        default: return false
        }
        let phoff = u64(h, 32), phentsize = Int(u16(h, 54)), phnum = Int(u16(h, 56))
        guard phentsize >= 56, phnum > 0, phnum < 4096, phoff < 1 << 32 else { return true }
        let table = readAt(Int64(phoff), phentsize * phnum)
        var hasInterpreter = false, soname = false
        for i in 0..<phnum where (i + 1) * phentsize <= table.count {
            let type = u32(table, i * phentsize)
            if type == 3 { hasInterpreter = true }                               // PT_INTERP
            guard type == 2 else { continue }                                    // PT_DYNAMIC
            let offset = u64(table, i * phentsize + 8), size = min(u64(table, i * phentsize + 32), 1 << 16)
            guard offset < 1 << 40 else { return true }
            let dynamic = readAt(Int64(offset), Int(size))
            var at = 0
            while at + 16 <= dynamic.count {
                let tag = u64(dynamic, at), value = u64(dynamic, at + 8)
                if tag == 0 { break }                                            // DT_NULL
                if tag == 0x6fff_fffb && value & 0x0800_0000 != 0 { return true } // DT_FLAGS_1 & DF_1_PIE
                if tag == 14 { soname = true }                                   // DT_SONAME
                at += 16
            }
        }
        // A position-independent program linked without the PIE flag: an interpreter and no library name.
        return hasInterpreter && !soname
    }

    /// Whether an ELF object is a shared object with no program interpreter of its own and a library name: what a
    /// dynamic loader (glibc's ld-linux, musl's) is, and what no program, static or not, is. A process the kernel ran
    /// such a file as (`ld.so PROGRAM`) loads its program itself.
    public static func isLoaderLike(head h: [UInt8], readAt: (_ offset: Int64, _ count: Int) -> [UInt8]) -> Bool {
        guard sniff(h) == .elf, h.count >= 64, h[4] == 2, h[5] == 1 else { return sniff(h) == .elf }   // 32-bit: judged
        func u16(_ b: [UInt8], _ o: Int) -> UInt64 { o + 2 <= b.count ? UInt64(b[o]) | UInt64(b[o + 1]) << 8 : 0 }
        func u32(_ b: [UInt8], _ o: Int) -> UInt64 { u16(b, o) | u16(b, o + 2) << 16 }
        func u64(_ b: [UInt8], _ o: Int) -> UInt64 { u32(b, o) | u32(b, o + 4) << 32 }
        guard u16(h, 16) == 3 else { return false }                              // ET_DYN
        let phoff = u64(h, 32), phentsize = Int(u16(h, 54)), phnum = Int(u16(h, 56))
        guard phentsize >= 56, phnum > 0, phnum < 4096, phoff < 1 << 32 else { return true }
        let table = readAt(Int64(phoff), phentsize * phnum)
        var soname = false
        for i in 0..<phnum where (i + 1) * phentsize <= table.count {
            let type = u32(table, i * phentsize)
            if type == 3 { return false }                                        // PT_INTERP: a program
            guard type == 2 else { continue }
            let offset = u64(table, i * phentsize + 8), size = min(u64(table, i * phentsize + 32), 1 << 16)
            guard offset < 1 << 40 else { return true }
            let dynamic = readAt(Int64(offset), Int(size))
            var at = 0
            while at + 16 <= dynamic.count && u64(dynamic, at) != 0 {
                if u64(dynamic, at) == 14 { soname = true }                      // DT_SONAME
                at += 16
            }
        }
        return soname
    }

    /// ET_EXEC and ET_DYN with PT_INTERP (PIE programs) are programs; ET_DYN without an
    /// interpreter is a shared object (libraries and the loader). Relocatable objects (.o, .ko)
    /// and core files are not run by execve or the loader.
    static func classifyELF(_ h: [UInt8], readAt: (Int64, Int) -> [UInt8]) -> FileKind? {
        guard h.count >= 52 else { return nil }
        let is64 = h[4] == 2
        let little = h[5] == 1
        func u16(_ b: [UInt8], _ o: Int) -> UInt64 {
            guard o + 2 <= b.count else { return 0 }
            return little ? UInt64(b[o]) | UInt64(b[o + 1]) << 8 : UInt64(b[o]) << 8 | UInt64(b[o + 1])
        }
        func u32(_ b: [UInt8], _ o: Int) -> UInt64 {
            u16(b, little ? o : o + 2) | u16(b, little ? o + 2 : o) << 16
        }
        func u64(_ b: [UInt8], _ o: Int) -> UInt64 {
            u32(b, little ? o : o + 4) | u32(b, little ? o + 4 : o) << 32
        }
        let type = u16(h, 16)
        switch type {
        case 2: return .elfExec             // ET_EXEC
        case 3: break                       // ET_DYN: look for PT_INTERP
        default: return nil                 // ET_REL, ET_CORE, unknown
        }
        guard !is64 || h.count >= 64 else { return nil }
        let phoff = is64 ? u64(h, 32) : u32(h, 28)
        let phentsize = Int(is64 ? u16(h, 54) : u16(h, 42))
        let phnum = Int(is64 ? u16(h, 56) : u16(h, 44))
        guard phentsize >= (is64 ? 56 : 32), phnum > 0, phnum < 4096, phoff < 1 << 32 else { return .elfLib }
        let table = readAt(Int64(phoff), phentsize * phnum)
        for i in 0..<phnum where (i + 1) * phentsize <= table.count {
            if u32(table, i * phentsize) == 3 { return .elfExec }   // PT_INTERP
        }
        return .elfLib
    }
}
