import Foundation

/// Why a file holding secrets (an identity, a session) could not be used.
/// Each message says what to do about it.
public enum SecretFileError: Error, Equatable, Sendable, CustomStringConvertible {
    /// No file; `hint` says how to create one.
    case missing(path: String, hint: String)
    /// The file exists but is not a valid document of its kind. It is left untouched.
    case corrupt(path: String, reason: String)
    /// The path names something other than a regular file (a directory, a
    /// link, a device): a wrong path, not a damaged file.
    case notAFile(path: String, reason: String)
    /// Larger than any file of its kind: most likely the wrong file.
    case tooLarge(path: String, maximum: Int)
    /// Group or others may access the file.
    case insecurePermissions(path: String, mode: UInt16)
    /// A create-only write found a file in place.
    case alreadyExists(path: String)
    case io(path: String, reason: String)

    public var description: String {
        switch self {
        case .missing(let path, let hint):
            return "no file at \(path)" + (hint.isEmpty ? "" : "; \(hint)")
        case .notAFile(let path, let reason):
            return "\(path) \(reason)"
        case .corrupt(let path, let reason):
            return "\(path) is corrupt (\(reason)); it was left untouched. Restore it from a backup, or move it aside and create a new one"
        case .tooLarge(let path, let maximum):
            return "\(path) is larger than \(maximum) bytes, more than any file of its kind: check that the path names the right file"
        case .insecurePermissions(let path, let mode):
            return "\(path) holds secrets but is accessible to others (mode \(String(mode, radix: 8))); run `chmod 600 \(path)`"
        case .alreadyExists(let path):
            return "\(path) already exists; refusing to overwrite it"
        case .io(let path, let reason):
            return "cannot access \(path): \(reason)"
        }
    }
}

/// Reading and writing small files that hold secrets: mode 0600, atomic
/// replacement, create-only without races, and a size cap on reading.
public enum SecretFile {
    /// Reads a regular file of at most `maximumSize` bytes that only its owner
    /// may access. The file is opened without following a symbolic link
    /// (another user's link cannot point a node at a file of its choosing),
    /// and every check is made on the opened file, not on the path again.
    public static func read(_ path: String, maximumSize: Int, missingHint: String) throws(SecretFileError) -> [UInt8] {
        try readFile(path, maximumSize: maximumSize, missingHint: missingHint, secret: true)
    }

    /// The one reader behind `SecretFile.read` and `RegularFile.read`. The
    /// open never blocks (O_NONBLOCK): a FIFO or device at the path is
    /// refused by the checks on the opened file, not waited on forever.
    static func readFile(_ path: String, maximumSize: Int, missingHint: String, secret: Bool) throws(SecretFileError) -> [UInt8] {
        // O_NOCTTY: a terminal named by mistake must not become the
        // controlling terminal of a node running as a session leader.
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY | (secret ? O_NOFOLLOW : 0))
        guard fd >= 0 else {
            switch errno {
            case ENOENT: throw .missing(path: path, hint: missingHint)
            case ELOOP where secret: throw .notAFile(path: path, reason: "is a symbolic link; give the real file's path (links are not followed for secret files)")
            default: throw .io(path: path, reason: String(cString: strerror(errno)))
            }
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw .io(path: path, reason: String(cString: strerror(errno))) }
        switch info.st_mode & S_IFMT {
        case S_IFREG: break
        case S_IFDIR: throw .notAFile(path: path, reason: "is a directory; give the path of the file itself")
        default: throw .notAFile(path: path, reason: "is not a regular file")
        }
        let mode = UInt16(info.st_mode & 0o777)
        guard !secret || mode & 0o077 == 0 else { throw .insecurePermissions(path: path, mode: mode) }
        guard info.st_size <= maximumSize else { throw .tooLarge(path: path, maximum: maximumSize) }
        var bytes = [UInt8](repeating: 0, count: maximumSize + 1)
        var count = 0
        while count <= maximumSize {
            let n = bytes.withUnsafeMutableBytes { Foundation.read(fd, $0.baseAddress! + count, maximumSize + 1 - count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw .io(path: path, reason: String(cString: strerror(errno)))
            }
            if n == 0 { break }
            count += n
        }
        guard count <= maximumSize else { throw .tooLarge(path: path, maximum: maximumSize) }
        return Array(bytes[..<count])
    }

    /// Writes `bytes` with mode 0600 through a temporary file in the same
    /// directory, fsynced. With `overwrite` false an existing file is never
    /// replaced (`alreadyExists`); with true the replacement is atomic.
    public static func write(_ bytes: [UInt8], to path: String, overwrite: Bool) throws(SecretFileError) {
        // Split by hand: NSString.deletingLastPathComponent traps on some
        // short relative paths (seen with a one-letter name).
        let slash = path.lastIndex(of: "/")
        let directory = slash.map { String(path[..<$0]) } ?? ""
        let name = slash.map { String(path[path.index(after: $0)...]) } ?? path
        let temporary = (directory.isEmpty ? "." : directory) + "/.\(name).\(getpid()).\(UInt32.random(in: 0...UInt32.max)).tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .io(path: path, reason: String(cString: strerror(errno))) }
        defer { unlink(temporary) }
        let wrote = bytes.withUnsafeBytes { raw -> Bool in
            var offset = 0
            while offset < raw.count {
                let n = Foundation.write(fd, raw.baseAddress! + offset, raw.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    return false
                }
                offset += n
            }
            return fsync(fd) == 0
        }
        let writeErrno = errno
        close(fd)
        guard wrote else { throw .io(path: path, reason: String(cString: strerror(writeErrno))) }
        if overwrite {
            guard rename(temporary, path) == 0 else { throw .io(path: path, reason: String(cString: strerror(errno))) }
        } else {
            // link() fails if the target exists: create-if-absent without a race.
            guard link(temporary, path) == 0 else {
                if errno == EEXIST { throw .alreadyExists(path: path) }
                throw .io(path: path, reason: String(cString: strerror(errno)))
            }
        }
    }
}

/// Reading configuration files that are not secret, or whose permissions
/// are the operator's choice (TLS certificates and keys, CA bundles,
/// allowlists): symbolic links are followed (certificate managers keep
/// `live/` links), but the path must end in a regular file of bounded size.
/// A FIFO, socket or device there is refused at once, where a plain read
/// would wait on it forever (and hang a reload).
public enum RegularFile {
    /// TLS certificates, keys and CA bundles are far smaller than this.
    public static let pemMaximumSize = 1 << 20

    /// The bytes of the regular file at `path` (at most `maximumSize`).
    public static func read(_ path: String, maximumSize: Int = pemMaximumSize) throws(SecretFileError) -> [UInt8] {
        try SecretFile.readFile(path, maximumSize: maximumSize, missingHint: "", secret: false)
    }
}
